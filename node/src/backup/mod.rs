//! Online backups: the archive format, taking one from a running node
//! ([`take`]), checking one ([`verify_file`]) and restoring one ([`restore`]).
//!
//! Owns: the archive format (docs/operations.md, "Backups", describes it for
//! readers without code). A backup is a tar stream (`tar tf` lists it):
//!
//! 1. `manifest.json`: [`Manifest`] (backup format, node, natterd version,
//!    store format, when, with media or not, the keyspaces' names);
//! 2. `secrets/<file>`: the data folder's secrets (`node.key`,
//!    `node.key.previous` if present, `media.key`, `admin.token`);
//! 3. `config/natter.toml`: the configuration file, if the node was started
//!    with one;
//! 4. `store/000001`, `store/000002`, ...: the store's records from one
//!    snapshot, in chunks of at most [`CHUNK_BYTES`] (one record may make a
//!    chunk larger), each a run of frames
//!    `keyspace (u8) | key length (u32 BE) | key | value length (u32 BE) | value`;
//!    the keyspace is an index in the manifest's `keyspaces`;
//! 5. `media/<path>`: with media, the embedded media files the snapshot's
//!    attachment records refer to, at their path under the media folder;
//! 6. `checksums.json` (last): [`Trailer`]: the SHA-256 and size of every
//!    entry before it, records per keyspace, media files, media missing.
//!
//! Does not own: the store's records (`store::dump`), the HTTP route
//! (`gateway::admin`) or the CLI (`natter backup`).
//!
//! Invariant: an archive is accepted only when every entry is in order and
//! matches the trailer, and the trailer is the last entry: a truncated or
//! altered file fails.

mod restore;
mod take;

pub use restore::{RESTORED_CONFIG, RestoreReport, describe_restore, restore};
pub use take::{Source, Started, start};

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::KEYSPACES;

/// The archive format this natterd writes and reads.
pub const BACKUP_FORMAT: u32 = 1;

/// Target size of one `store/` entry.
pub const CHUNK_BYTES: usize = 1 << 20;

/// The data folder's secrets a backup holds, by file name.
pub(crate) const SECRETS: [&str; 4] = [
    crate::identity::NODE_KEY_FILE,
    crate::identity::PREVIOUS_KEYS_FILE,
    crate::identity::MEDIA_KEY_FILE,
    crate::identity::ADMIN_TOKEN_FILE,
];

const MANIFEST: &str = "manifest.json";
const CONFIG: &str = "config/natter.toml";
const TRAILER: &str = "checksums.json";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the backup is damaged or incomplete: {0}")]
    Corrupt(String),
    #[error(
        "the backup has {what} {found}, newer than this natterd ({version}) reads ({supported}): \
         use a natterd at least as new as the one that took it",
        version = env!("CARGO_PKG_VERSION")
    )]
    TooNew {
        what: &'static str,
        found: u32,
        supported: u32,
    },
    #[error("{0}")]
    Refused(String),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
}

fn corrupt(detail: impl Into<String>) -> BackupError {
    BackupError::Corrupt(detail.into())
}

/// The first entry of an archive.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub backup_format: u32,
    pub node: String,
    pub natterd_version: String,
    pub store_format: u32,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub with_media: bool,
    /// The store's keyspaces; a record names one by its index here.
    pub keyspaces: Vec<String>,
}

/// One entry's size and checksum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntrySum {
    pub name: String,
    pub bytes: u64,
    /// Lowercase hex.
    pub sha256: String,
}

/// The last entry of an archive.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Trailer {
    pub entries: Vec<EntrySum>,
    /// Records per keyspace.
    pub records: BTreeMap<String, u64>,
    pub media_files: u64,
    /// Attachments whose file was gone when the backup read it (swept
    /// meanwhile): noted, not an error.
    pub media_missing: Vec<String>,
    /// Federation outbox records read from the JetStream outbox stream
    /// (`--nats`), not from the store's snapshot.
    pub outbox_from_stream: u64,
}

fn hex(bytes: &[u8]) -> String {
    crate::store::encode_hex(bytes)
}

/// Writes an archive entry by entry, keeping the trailer's checksums.
pub(crate) struct ArchiveWriter<W: Write> {
    tar: tar::Builder<W>,
    trailer: Trailer,
    chunk: Vec<u8>,
    chunks: u32,
    mtime: u64,
}

impl<W: Write> ArchiveWriter<W> {
    pub(crate) fn new(out: W, manifest: &Manifest, mtime: u64) -> io::Result<Self> {
        let mut writer = Self {
            tar: tar::Builder::new(out),
            trailer: Trailer::default(),
            chunk: Vec::new(),
            chunks: 0,
            mtime,
        };
        for name in KEYSPACES {
            writer.trailer.records.insert(name.to_owned(), 0);
        }
        let json = serde_json::to_vec_pretty(manifest).map_err(io::Error::other)?;
        writer.append(MANIFEST, &json)?;
        Ok(writer)
    }

    fn header(&self, len: u64) -> tar::Header {
        let mut header = tar::Header::new_ustar();
        header.set_size(len);
        header.set_mode(0o600);
        header.set_mtime(self.mtime);
        header.set_entry_type(tar::EntryType::Regular);
        header
    }

    pub(crate) fn append(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        let mut header = self.header(data.len() as u64);
        self.tar.append_data(&mut header, name, data)?;
        self.trailer.entries.push(EntrySum {
            name: name.to_owned(),
            bytes: data.len() as u64,
            sha256: hex(&Sha256::digest(data)),
        });
        Ok(())
    }

    /// Appends `len` bytes read from `data`; fails if it holds fewer.
    pub(crate) fn append_reader(
        &mut self,
        name: &str,
        len: u64,
        data: impl Read,
    ) -> io::Result<()> {
        let mut header = self.header(len);
        let mut hashing = Hashing::new(data.take(len));
        self.tar.append_data(&mut header, name, &mut hashing)?;
        if hashing.bytes != len {
            return Err(io::Error::other(format!(
                "{name} shrank while it was read ({} of {len} bytes)",
                hashing.bytes
            )));
        }
        self.trailer.entries.push(EntrySum {
            name: name.to_owned(),
            bytes: len,
            sha256: hex(&hashing.hash.finalize()),
        });
        Ok(())
    }

    /// Adds one store record to the current chunk.
    pub(crate) fn record(&mut self, keyspace: usize, key: &[u8], value: &[u8]) -> io::Result<()> {
        let (Ok(klen), Ok(vlen), Some(name)) = (
            u32::try_from(key.len()),
            u32::try_from(value.len()),
            KEYSPACES.get(keyspace),
        ) else {
            return Err(io::Error::other("a record too large for the backup format"));
        };
        self.chunk.push(keyspace as u8);
        self.chunk.extend_from_slice(&klen.to_be_bytes());
        self.chunk.extend_from_slice(key);
        self.chunk.extend_from_slice(&vlen.to_be_bytes());
        self.chunk.extend_from_slice(value);
        *self.trailer.records.entry((*name).to_owned()).or_default() += 1;
        if self.chunk.len() >= CHUNK_BYTES {
            self.flush_chunk()?;
        }
        Ok(())
    }

    /// Writes the records gathered so far as one `store/` entry.
    pub(crate) fn flush_chunk(&mut self) -> io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        self.chunks += 1;
        let chunk = std::mem::take(&mut self.chunk);
        self.append(&format!("store/{:06}", self.chunks), &chunk)
    }

    pub(crate) fn trailer(&mut self) -> &mut Trailer {
        &mut self.trailer
    }

    /// Writes the trailer and the end of the tar stream.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.flush_chunk()?;
        let json = serde_json::to_vec_pretty(&self.trailer).map_err(io::Error::other)?;
        let mut header = self.header(json.len() as u64);
        self.tar
            .append_data(&mut header, TRAILER, json.as_slice())?;
        self.tar.into_inner()
    }
}

/// A reader that hashes and counts what passes through.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
    bytes: u64,
}

impl<R: Read> Hashing<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hash: Sha256::new(),
            bytes: 0,
        }
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// What reading an archive hands on (restoring writes it; verifying only
/// reads). Every method is called in archive order.
pub(crate) trait Visit {
    fn manifest(&mut self, _manifest: &Manifest) -> Result<(), BackupError> {
        Ok(())
    }
    fn secret(&mut self, _name: &str, _data: &[u8]) -> Result<(), BackupError> {
        Ok(())
    }
    fn config(&mut self, _text: &[u8]) -> Result<(), BackupError> {
        Ok(())
    }
    fn record(&mut self, _keyspace: usize, _key: &[u8], _value: &[u8]) -> Result<(), BackupError> {
        Ok(())
    }
    /// A media file at `path` under the media folder; `data` must be read to
    /// its end (what is left is read after).
    fn media(&mut self, _path: &str, _data: &mut dyn Read) -> Result<(), BackupError> {
        Ok(())
    }
}

/// What a whole, valid archive holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub manifest: Manifest,
    pub trailer: Trailer,
    pub secrets: Vec<String>,
    pub config: bool,
}

/// Where an entry goes, by its name.
enum Kind {
    Manifest,
    Secret(String),
    Config,
    Store,
    Media(String),
    Trailer,
}

fn kind_of(name: &str) -> Result<Kind, BackupError> {
    if name == MANIFEST {
        return Ok(Kind::Manifest);
    }
    if name == CONFIG {
        return Ok(Kind::Config);
    }
    if name == TRAILER {
        return Ok(Kind::Trailer);
    }
    if let Some(secret) = name.strip_prefix("secrets/")
        && SECRETS.contains(&secret)
    {
        return Ok(Kind::Secret(secret.to_owned()));
    }
    if let Some(n) = name.strip_prefix("store/")
        && n.len() == 6
        && n.bytes().all(|b| b.is_ascii_digit())
    {
        return Ok(Kind::Store);
    }
    if let Some(path) = name.strip_prefix("media/")
        && safe_relative(path)
    {
        return Ok(Kind::Media(path.to_owned()));
    }
    Err(corrupt(format!("unexpected entry {name:?}")))
}

/// A relative path of plain components (no `..`, no root).
fn safe_relative(path: &str) -> bool {
    !path.is_empty()
        && Path::new(path)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

/// Checks the whole file at `path` (nothing is written).
pub fn verify_file(path: &Path) -> Result<Summary, BackupError> {
    let file = std::fs::File::open(path)?;
    read_archive(io::BufReader::new(file), &mut NoVisit)
}

struct NoVisit;
impl Visit for NoVisit {}

/// Reads a whole archive, checking it as it goes, and hands what it holds to
/// `visit`. Fails on the first thing wrong; the archive is valid only if this
/// returns `Ok`.
pub(crate) fn read_archive(
    input: impl Read,
    visit: &mut dyn Visit,
) -> Result<Summary, BackupError> {
    let mut archive = tar::Archive::new(input);
    let mut seen: Vec<EntrySum> = Vec::new();
    let mut records: BTreeMap<String, u64> =
        KEYSPACES.iter().map(|k| ((*k).to_owned(), 0)).collect();
    let mut manifest: Option<Manifest> = None;
    let mut secrets = Vec::new();
    let mut config = false;
    let mut trailer: Option<Trailer> = None;
    let tar_error = |e: io::Error| corrupt(format!("unreadable tar stream: {e}"));
    for entry in archive.entries().map_err(tar_error)? {
        let entry = entry.map_err(tar_error)?;
        if trailer.is_some() {
            return Err(corrupt("entries after checksums.json"));
        }
        let name = entry
            .path()
            .map_err(tar_error)?
            .to_string_lossy()
            .into_owned();
        let kind = kind_of(&name)?;
        if manifest.is_none() != matches!(kind, Kind::Manifest) {
            return Err(corrupt(format!(
                "{MANIFEST} must come first, once (found {name:?})"
            )));
        }
        let declared = entry.header().size().map_err(tar_error)?;
        let mut data = Hashing::new(entry);
        match kind {
            Kind::Trailer => {
                let mut text = Vec::new();
                data.read_to_end(&mut text).map_err(tar_error)?;
                let t: Trailer = serde_json::from_slice(&text)
                    .map_err(|e| corrupt(format!("{TRAILER}: {e}")))?;
                trailer = Some(t);
                continue;
            }
            Kind::Manifest => manifest = Some(read_manifest(&mut data, visit)?),
            Kind::Secret(secret) => {
                let bytes = read_small(&mut data)?;
                visit.secret(&secret, &bytes)?;
                secrets.push(secret);
            }
            Kind::Config => {
                visit.config(&read_small(&mut data)?)?;
                config = true;
            }
            Kind::Store => {
                let chunk = read_small(&mut data)?;
                read_chunk(&chunk, &mut records, visit)?;
            }
            Kind::Media(path) => {
                visit.media(&path, &mut data)?;
                io::copy(&mut data, &mut io::sink()).map_err(tar_error)?;
            }
        }
        if data.bytes != declared {
            return Err(corrupt(format!(
                "{name}: {} of {declared} bytes",
                data.bytes
            )));
        }
        seen.push(EntrySum {
            name,
            bytes: data.bytes,
            sha256: hex(&data.hash.finalize()),
        });
    }
    let (Some(manifest), Some(trailer)) = (manifest, trailer) else {
        return Err(corrupt(format!(
            "the archive ends before {TRAILER}: truncated"
        )));
    };
    check_trailer(&trailer, &seen, &records)?;
    Ok(Summary {
        manifest,
        trailer,
        secrets,
        config,
    })
}

fn read_small(data: &mut impl Read) -> Result<Vec<u8>, BackupError> {
    let mut bytes = Vec::new();
    data.read_to_end(&mut bytes)
        .map_err(|e| corrupt(format!("unreadable tar stream: {e}")))?;
    Ok(bytes)
}

fn read_manifest(data: &mut impl Read, visit: &mut dyn Visit) -> Result<Manifest, BackupError> {
    let manifest: Manifest = serde_json::from_slice(&read_small(data)?)
        .map_err(|e| corrupt(format!("{MANIFEST}: {e}")))?;
    if manifest.backup_format > BACKUP_FORMAT {
        return Err(BackupError::TooNew {
            what: "backup format",
            found: manifest.backup_format,
            supported: BACKUP_FORMAT,
        });
    }
    if manifest.store_format > crate::store::format::CURRENT {
        return Err(BackupError::TooNew {
            what: "store format",
            found: manifest.store_format,
            supported: crate::store::format::CURRENT,
        });
    }
    if manifest.keyspaces != KEYSPACES {
        return Err(corrupt(format!(
            "unknown keyspaces {:?} (this natterd has {KEYSPACES:?})",
            manifest.keyspaces
        )));
    }
    visit.manifest(&manifest)?;
    Ok(manifest)
}

/// Reads the frames of one `store/` chunk.
fn read_chunk(
    chunk: &[u8],
    records: &mut BTreeMap<String, u64>,
    visit: &mut dyn Visit,
) -> Result<(), BackupError> {
    let mut rest = chunk;
    let mut take = |n: usize| -> Result<&[u8], BackupError> {
        if rest.len() < n {
            return Err(corrupt("a store record runs past its chunk"));
        }
        let (part, tail) = rest.split_at(n);
        rest = tail;
        Ok(part)
    };
    let len = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let mut left = chunk.len();
    while left > 0 {
        let keyspace = take(1)?[0] as usize;
        let name = KEYSPACES
            .get(keyspace)
            .ok_or_else(|| corrupt(format!("a record of unknown keyspace {keyspace}")))?;
        let klen = len(take(4)?);
        let key = take(klen)?;
        let vlen = len(take(4)?);
        let value = take(vlen)?;
        left -= 9 + klen + vlen;
        visit.record(keyspace, key, value)?;
        *records.entry((*name).to_owned()).or_default() += 1;
    }
    Ok(())
}

fn check_trailer(
    trailer: &Trailer,
    seen: &[EntrySum],
    records: &BTreeMap<String, u64>,
) -> Result<(), BackupError> {
    if trailer.entries.len() != seen.len() {
        return Err(corrupt(format!(
            "{TRAILER} lists {} entries, the archive has {}",
            trailer.entries.len(),
            seen.len()
        )));
    }
    for (listed, found) in trailer.entries.iter().zip(seen) {
        if listed != found {
            return Err(corrupt(format!(
                "{}: checksum or size differs from {TRAILER} (listed {} bytes {}, found {} bytes {})",
                found.name, listed.bytes, listed.sha256, found.bytes, found.sha256
            )));
        }
    }
    if &trailer.records != records {
        return Err(corrupt(format!(
            "record counts differ from {TRAILER}: listed {:?}, found {records:?}",
            trailer.records
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
