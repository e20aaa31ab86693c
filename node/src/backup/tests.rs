//! The archive format on its own: what is written reads back, and any cut
//! or flipped byte of an entry is refused.

use std::io::Read;

use super::*;

fn manifest() -> Manifest {
    Manifest {
        backup_format: BACKUP_FORMAT,
        node: "n.test".to_owned(),
        natterd_version: "0".to_owned(),
        store_format: crate::store::format::CURRENT,
        created_at: "2026-01-01T00:00:00.000Z".to_owned(),
        with_media: true,
        keyspaces: KEYSPACES.iter().map(|k| (*k).to_owned()).collect(),
    }
}

/// An archive with a secret, a config, `records` records of `value_len`
/// bytes and a media file.
fn archive(records: u32, value_len: usize) -> Vec<u8> {
    let mut writer = ArchiveWriter::new(Vec::new(), &manifest(), 0).unwrap();
    writer.append("secrets/node.key", b"00ff").unwrap();
    writer.append(CONFIG, b"name = \"n.test\"\n").unwrap();
    let value = vec![7u8; value_len];
    for i in 0..records {
        writer
            .record((i % 8) as usize, &i.to_be_bytes(), &value)
            .unwrap();
    }
    writer.flush_chunk().unwrap();
    writer
        .append_reader("media/sent/x", 5, &b"bytes"[..])
        .unwrap();
    writer.trailer().media_files = 1;
    writer.finish().unwrap()
}

#[derive(Default)]
struct Collect {
    records: u64,
    media: Vec<u8>,
    secrets: Vec<String>,
}

impl Visit for Collect {
    fn secret(&mut self, name: &str, _: &[u8]) -> Result<(), BackupError> {
        self.secrets.push(name.to_owned());
        Ok(())
    }
    fn record(&mut self, _: usize, _: &[u8], _: &[u8]) -> Result<(), BackupError> {
        self.records += 1;
        Ok(())
    }
    fn media(&mut self, _: &str, data: &mut dyn Read) -> Result<(), BackupError> {
        data.read_to_end(&mut self.media)?;
        Ok(())
    }
}

#[test]
fn what_is_written_reads_back() {
    let bytes = archive(600, 4096);
    let mut seen = Collect::default();
    let summary = read_archive(&bytes[..], &mut seen).unwrap();
    assert_eq!(seen.records, 600);
    assert_eq!(seen.media, b"bytes");
    assert_eq!(seen.secrets, ["node.key"]);
    assert!(summary.config);
    assert_eq!(summary.trailer.records["meta"], 75);
    // More than one chunk: 600 records of 4 KiB.
    assert!(
        summary
            .trailer
            .entries
            .iter()
            .any(|e| e.name == "store/000003")
    );
}

/// Anywhere but in the two zero blocks that end a tar stream (after the
/// checksums, which hold everything).
#[test]
fn a_cut_anywhere_is_refused() {
    let bytes = archive(40, 100);
    for cut in 0..bytes.len() - 1024 {
        let read = read_archive(&bytes[..cut], &mut Collect::default());
        assert!(read.is_err(), "cut at {cut} of {}", bytes.len());
    }
}

#[test]
fn a_flipped_byte_in_any_entry_is_refused() {
    let bytes = archive(40, 100);
    let mut archive = tar::Archive::new(&bytes[..]);
    let spans: Vec<(u64, u64)> = archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.raw_header_position(), e.raw_file_position() + e.size())
        })
        .collect();
    for (header, end) in spans {
        // The header's name and size fields, and the data (in strides).
        for at in (header..header + 140).chain((header + 512..end).step_by(3)) {
            let mut flipped = bytes.clone();
            flipped[at as usize] ^= 0x04;
            let read = read_archive(&flipped[..], &mut Collect::default());
            assert!(read.is_err(), "byte {at} flipped");
        }
    }
}

#[test]
fn a_newer_store_format_is_refused() {
    let mut newer = manifest();
    newer.store_format = crate::store::format::CURRENT + 1;
    let writer = ArchiveWriter::new(Vec::new(), &newer, 0).unwrap();
    let bytes = writer.finish().unwrap();
    let err = read_archive(&bytes[..], &mut Collect::default()).unwrap_err();
    assert!(matches!(err, BackupError::TooNew { .. }), "{err}");
}
