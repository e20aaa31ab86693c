//! A peer's public keys as the verifier sees them: each with an id and a
//! validity window (for rotation, DESIGN §5), and the [`PeerKeys`] lookup the
//! [`super::verify::Verifier`] asks. Also [`key_id`], the id natter gives a key.
//!
//! Where the keys come from (the admin's `natter peer add`, the store) is not
//! this module's concern; [`PeerDirectory`] is a plain in-memory table.

use std::collections::HashMap;

use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha256};

/// One public key of a peer, valid from `not_before_ms` (inclusive) until
/// `not_after_ms` (exclusive); `None` leaves that side open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerKey {
    pub key_id: String,
    pub key: VerifyingKey,
    pub not_before_ms: Option<i64>,
    pub not_after_ms: Option<i64>,
}

impl PeerKey {
    /// A key valid from `not_before_ms` on, without an end yet.
    pub fn new(key: VerifyingKey, not_before_ms: Option<i64>) -> Self {
        Self {
            key_id: key_id(&key),
            key,
            not_before_ms,
            not_after_ms: None,
        }
    }

    pub fn is_valid_at(&self, now_ms: i64) -> bool {
        self.not_before_ms.is_none_or(|t| now_ms >= t)
            && self.not_after_ms.is_none_or(|t| now_ms < t)
    }
}

/// What a lookup of (origin, key id) found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyLookup {
    /// The origin is not a configured peer.
    UnknownPeer,
    /// The origin is a peer but has no key with this id.
    UnknownKey,
    /// The key (its validity is checked by the verifier); boxed because a
    /// `VerifyingKey` keeps its decompressed point (~200 bytes).
    Found(Box<PeerKey>),
}

/// How the verifier finds a peer's key. Implemented by [`PeerDirectory`] and
/// by any `Fn(&str, &str) -> KeyLookup` (origin, key id).
pub trait PeerKeys {
    fn lookup(&self, origin: &str, key_id: &str) -> KeyLookup;
}

impl<F: Fn(&str, &str) -> KeyLookup> PeerKeys for F {
    fn lookup(&self, origin: &str, key_id: &str) -> KeyLookup {
        self(origin, key_id)
    }
}

/// Peers by node name, each with its keys (several during a rotation).
#[derive(Clone, Debug, Default)]
pub struct PeerDirectory {
    peers: HashMap<String, Vec<PeerKey>>,
}

impl PeerDirectory {
    /// Adds a key to `node` (making it a peer); replaces a key with the same id.
    pub fn add_key(&mut self, node: &str, key: PeerKey) {
        let keys = self.peers.entry(node.to_ascii_lowercase()).or_default();
        keys.retain(|k| k.key_id != key.key_id);
        keys.push(key);
    }
}

impl PeerKeys for PeerDirectory {
    fn lookup(&self, origin: &str, key_id: &str) -> KeyLookup {
        let Some(keys) = self.peers.get(&origin.to_ascii_lowercase()) else {
            return KeyLookup::UnknownPeer;
        };
        match keys.iter().find(|k| k.key_id == key_id) {
            Some(key) => KeyLookup::Found(Box::new(key.clone())),
            None => KeyLookup::UnknownKey,
        }
    }
}

/// The `keyid` natter signs with: `ed25519-` and the first 16 hex digits of
/// the sha-256 of the 32-byte public key. Derived from the key, so a rotated
/// key gets a new id and peers can hold old and new side by side.
pub fn key_id(key: &VerifyingKey) -> String {
    let hash = Sha256::digest(key.as_bytes());
    let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("ed25519-{hex}")
}
