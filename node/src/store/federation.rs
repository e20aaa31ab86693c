//! The federation records: known peers (with their keys), each peer's outbox
//! of events (and its dead letters), and the per-peer counters that make
//! delivery in order and exactly-once to apply.

use fjall::Readable;
use serde::{Deserialize, Serialize};

use super::{Result, Source, StoreError, Tx, View, json, keys, parse};
use crate::ids::{AttachmentId, ChatId, NodeName};

/// A peer node, added by an admin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// Base URL of the peer (what its clients use); federation is under
    /// `/federation/v1/` there.
    pub url: String,
    pub keys: Vec<PeerKeyRecord>,
    pub added_at: i64,
}

/// One of a peer's ed25519 public keys, valid from `not_before` until
/// `not_after` (ms; `None` = open).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerKeyRecord {
    /// base64 of the 32-byte key.
    pub public_key: String,
    #[serde(default)]
    pub not_before: Option<i64>,
    #[serde(default)]
    pub not_after: Option<i64>,
}

/// One event waiting to be delivered to a peer (JSON of the federation event).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub queued_at: i64,
    pub event: serde_json::Value,
}

/// An attachment of a mirrored chat: the home holds the bytes and decides who
/// may download them; this node knows where to ask and for which chats.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemoteAttachment {
    pub home: NodeName,
    pub chats: Vec<ChatId>,
}

fn counter(bytes: Option<fjall::Slice>) -> Result<u64> {
    match bytes {
        None => Ok(0),
        Some(b) => Ok(u64::from_be_bytes(b.as_ref().try_into().map_err(|_| {
            StoreError::Corrupt {
                keyspace: "fed",
                detail: "counter".into(),
            }
        })?)),
    }
}

impl<R: Source> View<R> {
    pub fn peer(&self, node: &NodeName) -> Result<Option<PeerRecord>> {
        match self.r.readable().get(&self.ks.fed, keys::peer(node))? {
            Some(bytes) => Ok(Some(parse("fed", &bytes)?)),
            None => Ok(None),
        }
    }

    pub fn peers(&self) -> Result<Vec<(NodeName, PeerRecord)>> {
        let mut out = Vec::new();
        for item in self.r.readable().prefix(&self.ks.fed, keys::PEER_PREFIX) {
            let (key, value) = item.into_inner()?;
            if let Some(name) = keys::peer_name(&key) {
                out.push((name, parse("fed", &value)?));
            }
        }
        Ok(out)
    }

    /// A peer's outbox (or dead letters) from `after` on, oldest first.
    pub fn outbox(
        &self,
        node: &NodeName,
        after: u64,
        limit: usize,
        dead: bool,
    ) -> Result<Vec<(u64, OutboxEntry)>> {
        let range =
            keys::outbox(node, after.saturating_add(1), dead)..=keys::outbox(node, u64::MAX, dead);
        let mut out = Vec::new();
        for item in self.r.readable().range(&self.ks.fed, range).take(limit) {
            let (key, value) = item.into_inner()?;
            let seq = keys::outbox_seq(&key).ok_or_else(|| StoreError::Corrupt {
                keyspace: "fed",
                detail: "outbox key".into(),
            })?;
            out.push((seq, parse("fed", &value)?));
        }
        Ok(out)
    }

    /// The last outbox seq given out for a peer.
    pub fn outbox_counter(&self, node: &NodeName) -> Result<u64> {
        counter(
            self.r
                .readable()
                .get(&self.ks.fed, keys::outbox_counter(node))?,
        )
    }

    /// A peer's outbox gaps (`from`, `to`), oldest first: seqs `from`+1 ..=
    /// `to` were never given out (a restore moved the counter past them).
    pub fn outbox_gaps(&self, node: &NodeName) -> Result<Vec<(u64, u64)>> {
        let mut out = Vec::new();
        for item in self
            .r
            .readable()
            .prefix(&self.ks.fed, keys::outbox_gaps_prefix(node))
        {
            let (key, value) = item.into_inner()?;
            let from = keys::outbox_seq(&key);
            let to = counter(Some(value))?;
            if let Some(from) = from {
                out.push((from, to));
            }
        }
        Ok(out)
    }

    /// Every node with an outbox counter (peers, and nodes that were).
    pub fn outbox_counters(&self) -> Result<Vec<(NodeName, u64)>> {
        let mut out = Vec::new();
        for item in self.r.readable().prefix(&self.ks.fed, b"n") {
            let (key, value) = item.into_inner()?;
            let name = std::str::from_utf8(&key[1..])
                .ok()
                .and_then(NodeName::parse);
            if let Some(name) = name {
                out.push((name, counter(Some(value))?));
            }
        }
        Ok(out)
    }

    pub fn remote_attachment(&self, id: AttachmentId) -> Result<Option<RemoteAttachment>> {
        match self
            .r
            .readable()
            .get(&self.ks.fed, keys::remote_attachment(id))?
        {
            Some(bytes) => Ok(Some(parse("fed", &bytes)?)),
            None => Ok(None),
        }
    }

    /// The last event seq applied from a peer.
    pub fn applied(&self, node: &NodeName) -> Result<u64> {
        counter(self.r.readable().get(&self.ks.fed, keys::applied(node))?)
    }
}

impl Tx<'_> {
    pub fn put_peer(&mut self, node: &NodeName, record: &PeerRecord) {
        self.tx.insert(&self.ks.fed, keys::peer(node), json(record));
    }

    pub fn delete_peer(&mut self, node: &NodeName) {
        self.tx.remove(&self.ks.fed, keys::peer(node));
    }

    pub fn put_outbox(&mut self, node: &NodeName, seq: u64, entry: &OutboxEntry, dead: bool) {
        let key = keys::outbox(node, seq, dead);
        self.tx.insert(&self.ks.fed, key, json(entry));
    }

    /// Weak tombstones, like inbox acks: an outbox is written once and removed
    /// once, so removals need not pile up for reads to step over.
    pub fn delete_outbox(&mut self, node: &NodeName, seq: u64, dead: bool) {
        self.tx
            .remove_weak(&self.ks.fed, keys::outbox(node, seq, dead));
    }

    pub fn set_outbox_counter(&mut self, node: &NodeName, seq: u64) {
        let key = keys::outbox_counter(node);
        self.tx.insert(&self.ks.fed, key, seq.to_be_bytes());
    }

    /// Moves a peer's outbox counter from `from` to `to`, recording the gap.
    pub fn jump_outbox_counter(&mut self, node: &NodeName, from: u64, to: u64) {
        self.set_outbox_counter(node, to);
        let key = keys::outbox_gap(node, from);
        self.tx.insert(&self.ks.fed, key, to.to_be_bytes());
    }

    pub fn put_remote_attachment(&mut self, id: AttachmentId, record: &RemoteAttachment) {
        let key = keys::remote_attachment(id);
        self.tx.insert(&self.ks.fed, key, json(record));
    }

    pub fn set_applied(&mut self, node: &NodeName, seq: u64) {
        self.tx
            .insert(&self.ks.fed, keys::applied(node), seq.to_be_bytes());
    }
}
