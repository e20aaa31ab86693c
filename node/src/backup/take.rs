//! Taking a backup from the running node: one snapshot of the store, the
//! data folder's secrets, the config file, media, written as an archive
//! ([`super`]) into a bounded channel that the admin API streams out.
//!
//! The archive is written on the blocking pool while the node keeps serving:
//! the snapshot is a fjall read transaction, so writes go on beside it. At
//! most [`PIECES`] pieces of [`PIECE_BYTES`] wait in the channel (plus one
//! store chunk being filled): memory stays bounded whatever the store's size.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{ArchiveWriter, BackupError, CONFIG, Manifest, SECRETS};
use crate::core::Core;
use crate::ids::{AttachmentId, NodeName};
use crate::store::{FED, KEYSPACES, Snapshot, outbox_key};

/// Bytes of one piece of the HTTP body.
const PIECE_BYTES: usize = 256 << 10;
/// Pieces that may wait for the client.
const PIECES: usize = 8;
/// Attachment records read per page of the snapshot.
const MEDIA_PAGE: usize = 256;

/// What a backup reads besides the store: the data folder, the config
/// file, the embedded media folder (`None` with S3).
#[derive(Clone, Debug)]
pub struct Source {
    pub data: PathBuf,
    pub config_file: Option<PathBuf>,
    pub media_root: Option<PathBuf>,
}

/// A backup under way: an estimate of its size, and its bytes as they come
/// (an `Err` ends a failed one; the archive is then incomplete).
pub struct Started {
    pub estimate: u64,
    pub body: mpsc::Receiver<io::Result<Bytes>>,
}

/// Takes the snapshot now and starts writing the archive.
pub fn start(core: &Core, source: &Source, with_media: bool) -> Result<Started, BackupError> {
    if with_media && source.media_root.is_none() {
        return Err(BackupError::Refused(
            "media is in S3: back the bucket up with its own tools; take the backup without --with-media"
                .to_owned(),
        ));
    }
    let snapshot = core.snapshot();
    let store_format = snapshot.format()?;
    let mut estimate = core.store_stats().disk_bytes;
    if with_media && let Some(root) = &source.media_root {
        estimate += folder_bytes(root);
    }
    let now = core.clock().now_ms();
    let manifest = Manifest {
        backup_format: super::BACKUP_FORMAT,
        node: core.node().as_str().to_owned(),
        natterd_version: env!("CARGO_PKG_VERSION").to_owned(),
        store_format,
        created_at: crate::clock::rfc3339(now),
        with_media,
        keyspaces: KEYSPACES.iter().map(|k| (*k).to_owned()).collect(),
    };
    let (tx, body) = mpsc::channel(PIECES);
    let job = Job {
        core: core.clone(),
        source: source.clone(),
        snapshot,
        manifest,
        mtime: u64::try_from(now / 1000).unwrap_or(0),
        runtime: tokio::runtime::Handle::current(),
    };
    tokio::task::spawn_blocking(move || {
        let out = Pieces {
            tx: tx.clone(),
            buf: Vec::with_capacity(PIECE_BYTES),
        };
        match job.write(out) {
            Ok(()) => tracing::info!("backup written"),
            Err(e) => {
                tracing::warn!(error = %e, "backup failed");
                let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
            }
        }
    });
    Ok(Started { estimate, body })
}

/// Bytes of the files under `root` (an estimate: a missing folder is 0).
fn folder_bytes(root: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(root) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => folder_bytes(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

struct Job {
    core: Core,
    source: Source,
    snapshot: Snapshot,
    manifest: Manifest,
    mtime: u64,
    runtime: tokio::runtime::Handle,
}

impl Job {
    fn write(self, out: Pieces) -> Result<(), BackupError> {
        let mut archive = ArchiveWriter::new(out, &self.manifest, self.mtime)?;
        for name in SECRETS {
            match std::fs::read(self.source.data.join(name)) {
                Ok(bytes) => archive.append(&format!("secrets/{name}"), &bytes)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(path) = &self.source.config_file {
            let text = std::fs::read(path).map_err(|e| {
                io::Error::new(e.kind(), format!("the config file {}: {e}", path.display()))
            })?;
            archive.append(CONFIG, &text)?;
        }
        self.snapshot
            .dump(|keyspace, key, value| Ok::<_, DumpError>(archive.record(keyspace, key, value)?))
            .map_err(|e| match e {
                DumpError::Io(e) => BackupError::Io(e),
                DumpError::Store(e) => BackupError::Store(e),
            })?;
        self.relayed_outboxes(&mut archive)?;
        archive.flush_chunk()?;
        if self.manifest.with_media
            && let Some(root) = &self.source.media_root
        {
            self.media(&mut archive, root)?;
        }
        let mut out = archive.finish()?;
        out.flush()?;
        Ok(())
    }

    /// With NATS: the outbox entries already relayed to JetStream are no
    /// longer in the store; they go into the dump as the store's outbox
    /// records, so a restored node sends them again (peers apply each event
    /// once). Entries the snapshot still has are not repeated.
    fn relayed_outboxes(&self, archive: &mut ArchiveWriter<Pieces>) -> Result<(), BackupError> {
        if !self.core.outbox_on_stream() {
            return Ok(());
        }
        let peers: Vec<NodeName> = self.snapshot.peers()?.into_iter().map(|(n, _)| n).collect();
        let mut added = 0;
        for peer in peers {
            let mut from = 1;
            loop {
                let next = self
                    .runtime
                    .block_on(self.core.relayed_outbox(&peer, from))
                    .map_err(|e| io::Error::other(e.to_string()))?;
                let Some((seq, entries)) = next else { break };
                for (outbox_seq, entry) in entries {
                    if self.snapshot.has_outbox(&peer, outbox_seq)? {
                        continue;
                    }
                    let value = serde_json::to_vec(&entry).map_err(io::Error::other)?;
                    archive.record(FED, &outbox_key(&peer, outbox_seq), &value)?;
                    added += 1;
                }
                from = seq + 1;
            }
        }
        archive.trailer().outbox_from_stream = added;
        Ok(())
    }

    /// The embedded media files of the snapshot's attachments.
    fn media(&self, archive: &mut ArchiveWriter<Pieces>, root: &Path) -> Result<(), BackupError> {
        let mut after: Option<AttachmentId> = None;
        loop {
            let page = self.snapshot.attachments_after(after, MEDIA_PAGE)?;
            let Some((last, _)) = page.last() else {
                return Ok(());
            };
            after = Some(*last);
            for (id, record) in page {
                let path = match record.sealed {
                    true => format!("sent/{id}"),
                    false => id.to_string(),
                };
                match std::fs::File::open(root.join(&path)) {
                    Ok(file) => {
                        let len = file.metadata()?.len();
                        archive.append_reader(&format!("media/{path}"), len, file)?;
                        archive.trailer().media_files += 1;
                    }
                    // Swept (or never uploaded) since: noted, not an error.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        archive.trailer().media_missing.push(id.to_string());
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
}

/// Why dumping the store stopped.
enum DumpError {
    Io(io::Error),
    Store(crate::store::StoreError),
}

impl From<io::Error> for DumpError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<crate::store::StoreError> for DumpError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Store(e)
    }
}

/// Cuts what is written into pieces for the HTTP body; blocks while the
/// channel is full (the client reads slower than the store is read).
struct Pieces {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl Pieces {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE_BYTES));
        self.tx
            .blocking_send(Ok(piece.into()))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl Write for Pieces {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = PIECE_BYTES - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= PIECE_BYTES {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}
