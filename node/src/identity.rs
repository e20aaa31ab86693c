//! The data folder's secrets: the node's ed25519 identity and the admin token.
//!
//! Both are made on first start, written with mode 0600 (readable only by the
//! node's user). The signing key's public half is what peers are told
//! (federation); the admin token is what the `natter` CLI presents.
//!
//! `natter key rotate` is the one thing that rewrites a secret: `node.key`
//! becomes a new key and the old one moves to `node.key.previous` with the
//! time it stops verifying ([`NodeKeys::rotate`]); both files are replaced
//! atomically (written aside, synced, renamed).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

use crate::auth;

pub(crate) const NODE_KEY_FILE: &str = "node.key";
pub(crate) const ADMIN_TOKEN_FILE: &str = "admin.token";
pub(crate) const MEDIA_KEY_FILE: &str = "media.key";
/// The node's previous keys, each with the time it stops verifying (JSON).
pub(crate) const PREVIOUS_KEYS_FILE: &str = "node.key.previous";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not a node key (expected 64 hex characters)")]
    BadKey { path: PathBuf },
    #[error("{path}: not a list of previous keys: {reason}")]
    BadPrevious { path: PathBuf, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Creates the data folder (mode 0700) if needed. Returns whether it was new.
pub(crate) fn prepare_data_dir(dir: &Path) -> Result<bool, IdentityError> {
    if dir.is_dir() {
        return Ok(false);
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))?;
    Ok(true)
}

/// Writes `contents` to a new file readable only by its owner; `false` if it exists.
fn create_private(path: &Path, contents: &str) -> Result<bool, IdentityError> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut file) => {
            file.write_all(contents.as_bytes()).map_err(io_err(path))?;
            file.sync_all().map_err(io_err(path))?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io_err(path)(e)),
    }
}

pub(crate) struct Identity {
    pub key: SigningKey,
    pub key_path: PathBuf,
    pub created: bool,
}

impl Identity {
    /// The public key as peers see it: base64 (standard, no padding).
    pub(crate) fn public_key(&self) -> String {
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(self.key.verifying_key().as_bytes())
    }
}

/// Loads a 32-byte secret kept as hex in `dir/file`, making one on first start.
fn load_or_create_secret(
    dir: &Path,
    file: &str,
) -> Result<([u8; 32], PathBuf, bool), IdentityError> {
    let path = dir.join(file);
    let seed = auth::random_bytes::<32>();
    let created = create_private(&path, &crate::store::encode_hex(&seed))?;
    let text = fs::read_to_string(&path).map_err(io_err(&path))?;
    let bytes = crate::store::decode_hex32(text.trim())
        .ok_or_else(|| IdentityError::BadKey { path: path.clone() })?;
    Ok((bytes, path, created))
}

/// Loads the node key, making one on first start.
pub(crate) fn load_or_create_key(dir: &Path) -> Result<Identity, IdentityError> {
    let (bytes, key_path, created) = load_or_create_secret(dir, NODE_KEY_FILE)?;
    Ok(Identity {
        key: SigningKey::from_bytes(&bytes),
        key_path,
        created,
    })
}

/// A key the node signed with before its last rotation(s): peers still
/// accept it until `not_after` (ms).
#[derive(Clone)]
pub struct PreviousKey {
    pub key: SigningKey,
    pub not_after: i64,
}

/// One line of `node.key.previous`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PreviousKeyFile {
    /// hex of the 32-byte seed.
    seed: String,
    /// Unix ms.
    not_after: i64,
}

/// The node's current key and its previous ones (newest first).
#[derive(Clone)]
pub struct NodeKeys {
    pub current: SigningKey,
    pub previous: Vec<PreviousKey>,
    /// The data folder the keys are kept in.
    pub dir: PathBuf,
}

impl NodeKeys {
    /// Loads the current key (made on first start) and the previous ones.
    pub(crate) fn load(dir: &Path) -> Result<(Self, Identity), IdentityError> {
        let identity = load_or_create_key(dir)?;
        let current = identity.key.clone();
        let previous = load_previous(dir)?
            .into_iter()
            .filter(|p| p.key.verifying_key() != current.verifying_key())
            .collect();
        let dir = dir.to_owned();
        Ok((
            Self {
                current,
                previous,
                dir,
            },
            identity,
        ))
    }

    /// The previous keys still valid at `now_ms`.
    pub(crate) fn valid_previous(&self, now_ms: i64) -> impl Iterator<Item = &PreviousKey> {
        self.previous.iter().filter(move |p| p.not_after > now_ms)
    }

    /// Makes a new current key; the current one keeps verifying until
    /// `now_ms + overlap_ms`. Writes `node.key.previous` first, then
    /// `node.key`: a crash between the two keeps the old key as the current one.
    pub(crate) fn rotate(&self, now_ms: i64, overlap_ms: i64) -> Result<Self, IdentityError> {
        let dir = &self.dir;
        let retired = PreviousKey {
            key: self.current.clone(),
            not_after: now_ms.saturating_add(overlap_ms),
        };
        let previous: Vec<PreviousKey> = std::iter::once(retired)
            .chain(self.valid_previous(now_ms).cloned())
            .collect();
        write_previous(dir, &previous)?;
        let current = SigningKey::from_bytes(&auth::random_bytes::<32>());
        let hex = crate::store::encode_hex(current.as_bytes());
        replace_private(&dir.join(NODE_KEY_FILE), &hex)?;
        Ok(Self {
            current,
            previous,
            dir: dir.clone(),
        })
    }
}

fn load_previous(dir: &Path) -> Result<Vec<PreviousKey>, IdentityError> {
    let path = dir.join(PREVIOUS_KEYS_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(&path)(e)),
    };
    let bad = |reason: String| IdentityError::BadPrevious {
        path: path.clone(),
        reason,
    };
    let lines: Vec<PreviousKeyFile> =
        serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    lines
        .into_iter()
        .map(|line| {
            let seed = crate::store::decode_hex32(&line.seed)
                .ok_or_else(|| bad("a seed is not 64 hex characters".into()))?;
            Ok(PreviousKey {
                key: SigningKey::from_bytes(&seed),
                not_after: line.not_after,
            })
        })
        .collect()
}

fn write_previous(dir: &Path, keys: &[PreviousKey]) -> Result<(), IdentityError> {
    let lines: Vec<PreviousKeyFile> = keys
        .iter()
        .map(|k| PreviousKeyFile {
            seed: crate::store::encode_hex(k.key.as_bytes()),
            not_after: k.not_after,
        })
        .collect();
    let text = serde_json::to_string_pretty(&lines).unwrap_or_default();
    replace_private(&dir.join(PREVIOUS_KEYS_FILE), &format!("{text}\n"))
}

/// Replaces `path` atomically with a file readable only by its owner: written
/// next to it, synced, renamed over it, and the folder synced.
fn replace_private(path: &Path, contents: &str) -> Result<(), IdentityError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    if !create_private(&tmp, contents)? {
        return Err(io_err(&tmp)(io::ErrorKind::AlreadyExists.into()));
    }
    fs::rename(&tmp, path).map_err(io_err(path))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// The key that signs embedded-mode media URLs.
pub(crate) fn load_or_create_media_key(dir: &Path) -> Result<[u8; 32], IdentityError> {
    Ok(load_or_create_secret(dir, MEDIA_KEY_FILE)?.0)
}

pub(crate) struct AdminToken {
    pub token: String,
    pub path: PathBuf,
    pub created: bool,
}

/// Loads the admin token, making one on first start.
pub(crate) fn load_or_create_admin_token(dir: &Path) -> Result<AdminToken, IdentityError> {
    let path = dir.join(ADMIN_TOKEN_FILE);
    let created = create_private(&path, &format!("{}\n", auth::new_token()))?;
    let token = fs::read_to_string(&path)
        .map_err(io_err(&path))?
        .trim()
        .to_owned();
    Ok(AdminToken {
        token,
        path,
        created,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secrets_are_made_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        assert!(prepare_data_dir(&data).unwrap());
        let first = load_or_create_key(&data).unwrap();
        assert!(first.created);
        let again = load_or_create_key(&data).unwrap();
        assert!(!again.created);
        assert_eq!(first.public_key(), again.public_key());
        let token = load_or_create_admin_token(&data).unwrap();
        assert_eq!(
            load_or_create_admin_token(&data).unwrap().token,
            token.token
        );
        for file in [NODE_KEY_FILE, ADMIN_TOKEN_FILE] {
            let mode = fs::metadata(data.join(file)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
        let mode = fs::metadata(&data).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_rotation_keeps_the_old_key_until_the_overlap_ends() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        let (keys, _) = NodeKeys::load(data).unwrap();
        assert!(keys.previous.is_empty());
        let rotated = keys.rotate(1_000, 500).unwrap();
        assert_ne!(rotated.current.as_bytes(), keys.current.as_bytes());
        let (loaded, _) = NodeKeys::load(data).unwrap();
        assert_eq!(loaded.current.as_bytes(), rotated.current.as_bytes());
        assert_eq!(loaded.previous.len(), 1);
        assert_eq!(loaded.previous[0].key.as_bytes(), keys.current.as_bytes());
        assert_eq!(loaded.previous[0].not_after, 1_500);
        assert_eq!(loaded.valid_previous(1_499).count(), 1);
        assert_eq!(loaded.valid_previous(1_500).count(), 0);
        for file in [NODE_KEY_FILE, PREVIOUS_KEYS_FILE] {
            let mode = fs::metadata(data.join(file)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
        // A second rotation after the first overlap drops the expired key.
        let again = loaded.rotate(2_000, 500).unwrap();
        assert_eq!(again.previous.len(), 1);
        assert_eq!(again.previous[0].key.as_bytes(), rotated.current.as_bytes());
    }
}
