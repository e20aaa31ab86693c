//! Raw records for backups (`crate::backup`): every record of one snapshot,
//! and loading records into a new store.
//!
//! A backup is a logical dump: keyspace, key and value of every record, read
//! from one snapshot, so it is consistent across keyspaces and independent of
//! fjall's files. Restoring writes the records back as they were (the format
//! record `meta` `v` included), then `Store::open` checks and migrates.

use std::path::Path;

use fjall::{Readable, SingleWriterTxKeyspace};

use super::{Keyspaces, Result, Snapshot, Store, StoreError, StoreOptions, format, keys};

/// The keyspaces, in dump order; a dumped record names its keyspace by its
/// index here.
pub(crate) const KEYSPACES: [&str; 8] = [
    "meta", "users", "devices", "chats", "messages", "inbox", "media", "fed",
];

/// The index in [`KEYSPACES`] of the `fed` keyspace (outbox records).
pub(crate) const FED: usize = 7;

/// Bytes of records written in one commit while loading.
const LOAD_BATCH_BYTES: usize = 4 << 20;

impl Keyspaces {
    fn all(&self) -> [&SingleWriterTxKeyspace; 8] {
        [
            &self.meta,
            &self.users,
            &self.devices,
            &self.chats,
            &self.messages,
            &self.inbox,
            &self.media,
            &self.fed,
        ]
    }
}

impl Snapshot {
    /// Calls `f` with every record (keyspace index, key, value), keyspace by
    /// keyspace in [`KEYSPACES`] order, keys in order. Reads as it goes: the
    /// store is never held in memory.
    pub fn dump<E: From<StoreError>>(
        &self,
        mut f: impl FnMut(usize, &[u8], &[u8]) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        for (index, keyspace) in self.ks.all().into_iter().enumerate() {
            for item in self.r.iter(keyspace) {
                let (key, value) = item.into_inner().map_err(StoreError::from)?;
                f(index, &key, &value)?;
            }
        }
        Ok(())
    }

    /// The format recorded in this snapshot (a store without the record is
    /// format 1).
    pub fn format(&self) -> Result<u32> {
        match self.r.get(&self.ks.meta, keys::FORMAT)? {
            Some(bytes) => format::decode(&bytes),
            None => Ok(format::UNRECORDED),
        }
    }

    /// Whether `fed` has an outbox entry of `node` at `seq`.
    pub fn has_outbox(&self, node: &crate::ids::NodeName, seq: u64) -> Result<bool> {
        Ok(self
            .r
            .contains_key(&self.ks.fed, keys::outbox(node, seq, false))?)
    }
}

/// The key of `node`'s outbox entry `seq` (for records a backup adds).
pub(crate) fn outbox_key(node: &crate::ids::NodeName, seq: u64) -> Vec<u8> {
    keys::outbox(node, seq, false)
}

/// Writes records into a new store, a few MiB per commit.
pub(crate) struct Loader {
    store: Store,
    pending: Vec<(usize, Vec<u8>, Vec<u8>)>,
    bytes: usize,
}

impl Loader {
    /// A new store at `path` (which must not hold one), its format left to
    /// the records loaded.
    pub(crate) fn create(path: &Path) -> Result<Self> {
        Ok(Self {
            store: Store::open_raw(path, StoreOptions::default())?,
            pending: Vec::new(),
            bytes: 0,
        })
    }

    /// Adds one record; `keyspace` is an index in [`KEYSPACES`].
    pub(crate) fn put(&mut self, keyspace: usize, key: &[u8], value: &[u8]) -> Result<()> {
        if keyspace >= KEYSPACES.len() {
            return Err(StoreError::Corrupt {
                keyspace: "backup",
                detail: format!("keyspace index {keyspace}"),
            });
        }
        self.bytes += key.len() + value.len();
        self.pending.push((keyspace, key.to_vec(), value.to_vec()));
        if self.bytes >= LOAD_BATCH_BYTES {
            self.commit()?;
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        self.bytes = 0;
        self.store.write(|tx| {
            let all = tx.ks.all();
            for (keyspace, key, value) in pending {
                tx.tx.insert(all[keyspace], key, value);
            }
            Ok(((), super::Durability::Buffer))
        })
    }

    /// Commits what is left and syncs the store to disk.
    pub(crate) fn finish(mut self) -> Result<()> {
        self.commit()?;
        self.store.persist()
    }
}
