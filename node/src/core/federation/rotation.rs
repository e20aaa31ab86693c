//! Key rotation (docs/federation.md, "Key rotation").
//!
//! This node's side: [`Core::rotate_key`] makes a new key; the old one keeps
//! verifying for `federation.key_overlap`. Before its next batch, each peer's
//! outbox sender tells its peer ([`Core::announce_key`], `POST
//! /federation/v1/keys`), signed with a retired key the peer still trusts;
//! which key each peer was told is remembered in memory only (after a restart
//! the announcement is sent again, which a peer takes as a no-op).
//!
//! A peer's side: [`Core::accept_peer_key`] adds the announced key to the
//! sender's own record and ends the signing key at the announced `notAfter`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::VerifyingKey;

use super::{DocumentKey, Federation, NodeIdentity, PeerRequest, parse_public_key};
use crate::clock::rfc3339;
use crate::core::writer::Op;
use crate::core::{Core, CoreError};
use crate::federation::client::PeerError;
use crate::federation::events::{KeyAccepted, KeyAnnouncement, NewKey, OldKey};
use crate::federation::keys::key_id;
use crate::identity::PreviousKey;
use crate::ids::NodeName;
use crate::protocol::ErrorCode;
use crate::store::{PeerKeyRecord, PeerRecord};

/// What a peer is to be told: the new key, and the retired keys that may
/// sign the announcement (newest first).
struct Pending {
    new_key: NewKey,
    signers: Vec<PreviousKey>,
}

impl Federation {
    /// This node as peers see it at `now_ms`.
    fn identity_at(&self, now_ms: i64) -> NodeIdentity {
        let own = self.own.read().unwrap_or_else(|e| e.into_inner());
        let verifying = own.current.verifying_key();
        NodeIdentity {
            node: self.node.to_string(),
            public_key: STANDARD.encode(verifying.as_bytes()),
            fingerprint: key_id(&verifying),
            url: self.url.clone(),
            previous_keys: own.valid_previous(now_ms).map(document_key).collect(),
        }
    }

    /// What `node` has not been told yet, if anything.
    fn pending(&self, node: &NodeName, now_ms: i64) -> Option<Pending> {
        let own = self.own.read().unwrap_or_else(|e| e.into_inner());
        let verifying = own.current.verifying_key();
        let new_key = NewKey {
            key_id: key_id(&verifying),
            public_key: STANDARD.encode(verifying.as_bytes()),
        };
        let announced = self.announced.lock().unwrap_or_else(|e| e.into_inner());
        if announced.get(node) == Some(&new_key.key_id) {
            return None;
        }
        let signers: Vec<PreviousKey> = own.valid_previous(now_ms).cloned().collect();
        (!signers.is_empty()).then_some(Pending { new_key, signers })
    }

    fn mark_announced(&self, node: &NodeName, key_id: String) {
        let mut announced = self.announced.lock().unwrap_or_else(|e| e.into_inner());
        announced.insert(node.clone(), key_id);
    }

    /// Wakes every peer's outbox sender (to announce a new key).
    fn wake_senders(&self, wakers: &crate::federation::Wakers) {
        let senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        for node in senders.keys() {
            wakers.wake(node);
        }
    }
}

fn document_key(key: &PreviousKey) -> DocumentKey {
    let verifying = key.key.verifying_key();
    DocumentKey {
        key_id: key_id(&verifying),
        public_key: STANDARD.encode(verifying.as_bytes()),
        not_before: None,
        not_after: Some(rfc3339(key.not_after)),
    }
}

impl Core {
    /// This node as peers see it (`/.well-known/natter/node`, `natter key show`).
    pub fn identity(&self) -> NodeIdentity {
        self.fed().identity_at(self.inner.clock.now_ms())
    }

    /// `natter key rotate`: a new key, signed with from now on; the current
    /// one verifies for `key_overlap` more. Peers are told by their senders.
    pub async fn rotate_key(&self) -> Result<NodeIdentity, CoreError> {
        let fed = self.fed();
        let _one = fed.rotating.lock().await;
        let now = self.inner.clock.now_ms();
        let overlap = crate::clock::millis(fed.config.key_overlap);
        let keys = fed.own.read().unwrap_or_else(|e| e.into_inner()).clone();
        let rotated = tokio::task::spawn_blocking(move || keys.rotate(now, overlap)).await??;
        *fed.own.write().unwrap_or_else(|e| e.into_inner()) = rotated;
        let identity = self.identity();
        tracing::info!(key = %identity.fingerprint, old_key_until = %rfc3339(now + overlap), "rotated the node key");
        fed.wake_senders(&self.inner.wakers);
        Ok(identity)
    }

    /// Tells `node` this node's current key if it was not told yet. A peer
    /// that refuses every retired key is logged and not asked again (its
    /// admin has to add the new key); only an unreachable peer is an error.
    pub(super) async fn announce_key(&self, node: &NodeName, url: &str) -> Result<(), PeerError> {
        let now = self.inner.clock.now_ms();
        let Some(pending) = self.fed().pending(node, now) else {
            return Ok(());
        };
        for signer in &pending.signers {
            match self
                .announce_with(node, url, &pending.new_key, signer, now)
                .await
            {
                Ok(()) => {
                    tracing::info!(peer = %node, key = %pending.new_key.key_id, "told a peer the new key");
                    break;
                }
                // Not a key this peer trusts: an older one may be.
                Err(PeerError::Refused { status: 401, .. }) => {}
                Err(PeerError::Refused { status, body, .. }) => {
                    tracing::warn!(peer = %node, status, %body, "a peer refused the new key");
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        self.fed().mark_announced(node, pending.new_key.key_id);
        Ok(())
    }

    async fn announce_with(
        &self,
        node: &NodeName,
        url: &str,
        new_key: &NewKey,
        signer: &PreviousKey,
        now: i64,
    ) -> Result<(), PeerError> {
        let body = KeyAnnouncement {
            node: self.node().to_string(),
            new_key: new_key.clone(),
            old_key: OldKey {
                key_id: key_id(&signer.key.verifying_key()),
                not_after: signer.not_after,
            },
        };
        let client = &self.fed().client;
        let path = "/federation/v1/keys";
        let _: KeyAccepted = client
            .post(&signer.key, node, url, path, &body, now)
            .await?;
        Ok(())
    }

    /// A peer announces its new key (`POST /federation/v1/keys`), signed with
    /// the key it retires: that key ends at `oldKey.notAfter` (never later than
    /// it already did), the new one is added, expired ones are dropped.
    pub async fn accept_peer_key(
        &self,
        from: &PeerRequest,
        announcement: KeyAnnouncement,
    ) -> Result<KeyAccepted, CoreError> {
        let new_key = checked_announcement(from, &announcement)?;
        let _update = self.fed().peer_updates.lock().await;
        let name = from.origin.clone();
        let record = self.read(move |view| Ok(view.peer(&name)?)).await?;
        let record = record.ok_or_else(|| CoreError::reject(ErrorCode::Forbidden, "not a peer"))?;
        let now = self.inner.clock.now_ms();
        let not_after = announcement.old_key.not_after;
        let record = with_new_key(record, &from.key_id, &new_key, not_after, now);
        self.write(Op::PutPeer {
            node: from.origin.clone(),
            record: record.clone(),
        })
        .await?;
        self.refresh_keys(&from.origin, Some(&record));
        tracing::info!(peer = %from.origin, key = %announcement.new_key.key_id, old_key = %from.key_id, old_key_until = %rfc3339(not_after), "a peer rotated its key");
        Ok(KeyAccepted {
            key_id: announcement.new_key.key_id,
        })
    }
}

/// The announced key, if the announcement is the sender's own, signed with
/// the key it retires, and names a new key by its right id.
fn checked_announcement(
    from: &PeerRequest,
    announcement: &KeyAnnouncement,
) -> Result<VerifyingKey, CoreError> {
    let forbidden = |m: &str| CoreError::reject(ErrorCode::Forbidden, m);
    let bad = |m: &str| CoreError::reject(ErrorCode::BadRequest, m);
    if !announcement.node.eq_ignore_ascii_case(from.origin.as_str()) {
        return Err(forbidden("a node announces only its own keys"));
    }
    if announcement.old_key.key_id != from.key_id {
        return Err(forbidden(
            "a new key is announced with the key it replaces (oldKey.keyId)",
        ));
    }
    let key = parse_public_key(&announcement.new_key.public_key)
        .ok_or_else(|| bad("newKey.publicKey must be the base64 of 32 bytes"))?;
    if key_id(&key) != announcement.new_key.key_id {
        return Err(bad("newKey.keyId is not the id of newKey.publicKey"));
    }
    if announcement.new_key.key_id == from.key_id {
        return Err(bad("the new key is the key that signed"));
    }
    Ok(key)
}

fn record_key_id(key: &PeerKeyRecord) -> Option<String> {
    parse_public_key(&key.public_key).map(|k| key_id(&k))
}

/// `record` with `old` ending at `not_after` (or earlier), `new` added
/// (valid from now on, open-ended), and keys expired at `now` dropped.
fn with_new_key(
    mut record: PeerRecord,
    old: &str,
    new: &VerifyingKey,
    not_after: i64,
    now: i64,
) -> PeerRecord {
    for key in &mut record.keys {
        if record_key_id(key).as_deref() == Some(old) {
            key.not_after = Some(key.not_after.map_or(not_after, |t| t.min(not_after)));
        }
    }
    record.keys.retain(|k| k.not_after.is_none_or(|t| t > now));
    let new_id = key_id(new);
    if !record
        .keys
        .iter()
        .any(|k| record_key_id(k).as_deref() == Some(new_id.as_str()))
    {
        record.keys.push(PeerKeyRecord {
            public_key: STANDARD.encode(new.as_bytes()),
            not_before: None,
            not_after: None,
        });
    }
    record
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn key(seed: u8) -> VerifyingKey {
        SigningKey::from_bytes(&[seed; 32]).verifying_key()
    }

    fn record(keys: &[(u8, Option<i64>)]) -> PeerRecord {
        PeerRecord {
            url: "http://peer".into(),
            keys: keys
                .iter()
                .map(|(seed, not_after)| PeerKeyRecord {
                    public_key: STANDARD.encode(key(*seed).as_bytes()),
                    not_before: None,
                    not_after: *not_after,
                })
                .collect(),
            added_at: 0,
        }
    }

    #[test]
    fn the_old_key_ends_and_the_new_one_is_added() {
        let old = key_id(&key(1));
        let updated = with_new_key(record(&[(1, None)]), &old, &key(2), 500, 100);
        assert_eq!(updated, record(&[(1, Some(500)), (2, None)]));
        // Again (a retried announcement): the same record.
        let again = with_new_key(updated.clone(), &old, &key(2), 900, 100);
        assert_eq!(again, updated, "never extended");
    }

    #[test]
    fn expired_keys_are_dropped() {
        let old = key_id(&key(2));
        let start = record(&[(1, Some(50)), (2, None)]);
        let updated = with_new_key(start, &old, &key(3), 500, 100);
        assert_eq!(updated, record(&[(2, Some(500)), (3, None)]));
    }
}
