//! The store's format version: one record, `meta` `v` → u32 BE.
//!
//! Owns: what format this natterd reads ([`CURRENT`]), the record of the
//! format a store was written in, and the migrations from older formats.
//! On open (`Store::open`), a store
//! - without the record is format 1 (stores written before the record
//!   existed; a new store gets [`CURRENT`] at once);
//! - of a newer format is refused ([`StoreError::TooNew`]), never misread;
//! - of an older format is copied beside itself
//!   (`store.format<N>-backup-<unix seconds>`), then migrated in place one
//!   step at a time, each step's version recorded after its writes; or refused
//!   ([`StoreError::CannotMigrate`]) when no chain of migrations leads here.
//!
//! Invariant: a migration can be run again after a crash in its middle (the
//! version moves only once the step is done), so each one is idempotent.

use std::path::{Path, PathBuf};

use super::{Result, Store, StoreError, keys};

/// The store format this natterd writes and reads. Bump it (and add a
/// [`Migration`] from the one before) whenever a stored record or key layout
/// changes in a way an older natterd would misread.
pub const CURRENT: u32 = 2;

/// The format of a store that has no version record.
pub(crate) const UNRECORDED: u32 = 1;

/// One step: a store of format `from` becomes `from + 1`.
pub(crate) struct Migration {
    pub from: u32,
    /// What it changes, for the log.
    pub what: &'static str,
    /// Writes the change (in as many commits as it needs); idempotent.
    pub run: fn(&Store) -> Result<()>,
}

/// The migrations of this natterd, oldest first.
pub(crate) const MIGRATIONS: &[Migration] = &[Migration {
    from: 1,
    what: "inbox entries may hold read positions (chatRead, kind 4), which format 1 \
           does not know; no stored record changes",
    run: nothing_to_rewrite,
}];

/// Format 2 only adds a kind of inbox entry: a format 1 store is valid as it
/// is, and the step only records that an older natterd must not open it.
fn nothing_to_rewrite(_: &Store) -> Result<()> {
    Ok(())
}

/// What this build reads, and how it gets there from older formats.
#[derive(Clone, Copy)]
pub(crate) struct Formats {
    pub current: u32,
    pub migrations: &'static [Migration],
}

impl Formats {
    pub(crate) const THIS: Self = Self {
        current: CURRENT,
        migrations: MIGRATIONS,
    };

    /// The steps from `found` to `current`, or `None` if one is missing.
    fn chain(&self, found: u32) -> Option<Vec<&'static Migration>> {
        (found..self.current)
            .map(|from| self.migrations.iter().find(|m| m.from == from))
            .collect()
    }
}

pub(crate) fn decode(bytes: &[u8]) -> Result<u32> {
    let raw: [u8; 4] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        keyspace: "meta",
        detail: "format version".to_owned(),
    })?;
    Ok(u32::from_be_bytes(raw))
}

impl Store {
    /// The format recorded in the store, if any.
    pub(crate) fn recorded_format(&self) -> Result<Option<u32>> {
        let tx = self.db.read_tx();
        match fjall::Readable::get(&tx, &self.ks.meta, keys::FORMAT)? {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Records `version` (fsync'd).
    pub(crate) fn record_format(&self, version: u32) -> Result<()> {
        self.write(|tx| {
            tx.tx
                .insert(&tx.ks.meta, keys::FORMAT, version.to_be_bytes());
            Ok(((), super::Durability::Sync))
        })
    }

    /// Checks the store's format against `formats`, migrating it if it is
    /// older; returns the store to use (reopened after a migration's backup).
    pub(crate) fn settle_format(
        self,
        path: &Path,
        fresh: bool,
        formats: Formats,
        reopen: impl Fn() -> Result<Store>,
    ) -> Result<Store> {
        let recorded = self.recorded_format()?;
        let found = match recorded {
            Some(v) => v,
            None if fresh => formats.current,
            None => UNRECORDED,
        };
        if found > formats.current {
            return Err(StoreError::TooNew {
                path: path.to_owned(),
                found,
                supported: formats.current,
            });
        }
        if found == formats.current {
            if recorded.is_none() {
                self.record_format(found)?;
            }
            return Ok(self);
        }
        let Some(chain) = formats.chain(found) else {
            return Err(StoreError::CannotMigrate {
                path: path.to_owned(),
                found,
                supported: formats.current,
            });
        };
        // The backup is a copy of a closed store.
        self.persist()?;
        drop(self);
        let backup = backup_beside(path, found)?;
        let store = reopen()?;
        for step in chain {
            tracing::info!(
                from = step.from,
                to = step.from + 1,
                what = step.what,
                "migrating the store"
            );
            (step.run)(&store)?;
            store.record_format(step.from + 1)?;
            tracing::info!(format = step.from + 1, "store migration step done");
        }
        tracing::info!(from = found, to = formats.current, backup = %backup.display(), "store migrated; the backup can be removed once the node works");
        Ok(store)
    }
}

/// Copies the store folder to `<store>.format<N>-backup-<unix seconds>`
/// beside it, logging progress; returns where.
fn backup_beside(path: &Path, format: u32) -> Result<PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let name = path
        .file_name()
        .map_or("store".into(), |n| n.to_string_lossy().into_owned());
    let target = path.with_file_name(format!("{name}.format{format}-backup-{secs}"));
    tracing::info!(from = %path.display(), to = %target.display(), "backing the store up before migrating it");
    let mut copied = Copied::default();
    copy_dir(path, &target, &mut copied).map_err(|source| StoreError::Backup {
        path: target.clone(),
        source,
    })?;
    tracing::info!(
        files = copied.files,
        bytes = copied.bytes,
        "store backup written"
    );
    Ok(target)
}

#[derive(Default)]
struct Copied {
    files: u64,
    bytes: u64,
}

fn copy_dir(from: &Path, to: &Path, copied: &mut Copied) -> std::io::Result<()> {
    std::fs::create_dir(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target, copied)?;
        } else {
            copied.bytes += std::fs::copy(entry.path(), &target)?;
            copied.files += 1;
            if copied.files.is_multiple_of(1000) {
                tracing::info!(
                    files = copied.files,
                    bytes = copied.bytes,
                    "backing the store up"
                );
            }
        }
    }
    std::fs::File::open(to)?.sync_all()
}

/// Writes `version` as the format of the store at `path` (which must not be
/// open). For tests and recovery tools: it does not migrate anything.
pub fn stamp(path: &Path, version: u32) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let store = Store::open_raw(path, super::StoreOptions::default())?;
    store.record_format(version)?;
    store.persist()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Durability, StoreOptions};

    fn open(path: &Path, formats: Formats) -> Result<Store> {
        Store::open_as(path, StoreOptions::default(), formats)
    }

    fn set_counter(store: &Store, name: &str, value: u64) {
        store
            .write(|tx| {
                tx.set_counter(name, value);
                Ok::<_, StoreError>(((), Durability::Sync))
            })
            .unwrap();
    }

    fn counter(store: &Store, name: &str) -> u64 {
        store.snapshot().counter(name).unwrap()
    }

    /// A test-only step 1 → 2: doubles the counter `x`.
    fn double_x(store: &Store) -> Result<()> {
        let x = counter(store, "x");
        set_counter(store, "x", x * 2);
        Ok(())
    }

    /// A build that reads format 1 only (what the first natterd was).
    const V1: Formats = Formats {
        current: 1,
        migrations: &[],
    };

    const TO_2: &[Migration] = &[Migration {
        from: 1,
        what: "doubles x (test)",
        run: double_x,
    }];

    #[test]
    fn a_new_store_records_the_current_format() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("s"), Formats::THIS).unwrap();
        assert_eq!(store.recorded_format().unwrap(), Some(CURRENT));
    }

    #[test]
    fn a_store_without_a_record_is_format_1() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let raw = Store::open_raw(&path, StoreOptions::default()).unwrap();
        set_counter(&raw, "x", 21);
        raw.persist().unwrap();
        drop(raw);
        let formats = Formats {
            current: 2,
            migrations: TO_2,
        };
        let store = open(&path, formats).unwrap();
        // Taken for format 1, so migrated to 2.
        assert_eq!(counter(&store, "x"), 42);
        assert_eq!(store.recorded_format().unwrap(), Some(2));
    }

    #[test]
    fn an_older_store_is_backed_up_then_migrated_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let v1 = open(&path, V1).unwrap();
        set_counter(&v1, "x", 5);
        drop(v1);
        let formats = Formats {
            current: 2,
            migrations: TO_2,
        };
        let store = open(&path, formats).unwrap();
        assert_eq!(counter(&store, "x"), 10);
        drop(store);
        // Opened again: already format 2, not migrated twice.
        let store = open(&path, formats).unwrap();
        assert_eq!(counter(&store, "x"), 10);
        drop(store);
        let backups: Vec<PathBuf> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains("s.format1-backup-"))
            .collect();
        assert_eq!(backups.len(), 1, "one backup beside the store");
        let backup = open(&backups[0], V1).unwrap();
        assert_eq!(backup.recorded_format().unwrap(), Some(1));
        assert_eq!(counter(&backup, "x"), 5, "the backup is the store before");
    }

    #[test]
    fn a_newer_store_is_refused_naming_both_formats() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        drop(open(&path, Formats::THIS).unwrap());
        stamp(&path, CURRENT + 1).unwrap();
        let err = open(&path, Formats::THIS).err().expect("refused");
        let text = err.to_string();
        assert!(matches!(err, StoreError::TooNew { .. }), "{text}");
        assert!(
            text.contains(&format!("has format {}", CURRENT + 1)),
            "{text}"
        );
        assert!(
            text.contains(&format!("reads store format {CURRENT}")),
            "{text}"
        );
        // Refused without damage: the record is still the newer one.
        let raw = Store::open_raw(&path, StoreOptions::default()).unwrap();
        assert_eq!(raw.recorded_format().unwrap(), Some(CURRENT + 1));
    }

    #[test]
    fn a_store_no_migration_leads_from_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        drop(open(&path, V1).unwrap());
        const FROM_2: &[Migration] = &[Migration {
            from: 2,
            what: "(test)",
            run: double_x,
        }];
        let formats = Formats {
            current: 3,
            migrations: FROM_2,
        };
        let err = open(&path, formats).err().expect("refused");
        assert!(
            matches!(
                err,
                StoreError::CannotMigrate {
                    found: 1,
                    supported: 3,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            std::fs::read_dir(dir.path()).unwrap().count() == 1,
            "no backup made"
        );
    }
}
