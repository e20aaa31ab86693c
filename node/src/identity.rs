//! The data folder's secrets: the node's ed25519 identity and the admin token.
//!
//! Both are made on first start, written with mode 0600 (readable only by the
//! node's user), and never rewritten. The signing key's public half is what peers
//! are told (federation); the admin token is what the `natter` CLI presents.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use ed25519_dalek::SigningKey;

use crate::auth;

pub(crate) const NODE_KEY_FILE: &str = "node.key";
pub(crate) const ADMIN_TOKEN_FILE: &str = "admin.token";
pub(crate) const MEDIA_KEY_FILE: &str = "media.key";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not a node key (expected 64 hex characters)")]
    BadKey { path: PathBuf },
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
}
