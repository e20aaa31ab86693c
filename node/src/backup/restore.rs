//! `natterd restore FILE --data DIR`: a backup into a new data folder.
//!
//! Everything is written into a staging folder first (beside a missing DIR,
//! inside an empty one), checked as it is read; only a whole, valid archive
//! is moved into place (renames), after the
//! store has been opened once the normal way (which migrates an older store
//! format). A damaged backup leaves DIR as it was.

use std::collections::BTreeMap;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{BackupError, Manifest, Visit, read_archive};
use crate::store::{Loader, Store, StoreOptions};

/// Where the restored config file is written, in the data folder.
pub const RESTORED_CONFIG: &str = "natter.toml.restored";

/// What a restore wrote.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreReport {
    pub data: PathBuf,
    pub manifest: Manifest,
    pub records: BTreeMap<String, u64>,
    pub secrets: Vec<String>,
    /// Where the configuration file was written, if the backup had one.
    pub config: Option<PathBuf>,
    pub media_files: u64,
    pub media_missing: Vec<String>,
    /// The store's format once opened (migrated if the backup's was older).
    pub store_format: u32,
    /// Each peer's outbox counter, moved past every seq the node may have
    /// given out after the backup was taken (see [`jump_outbox_counters`]).
    pub outbox_seqs: Vec<OutboxJump>,
}

/// A peer's outbox counter as the backup had it, and as the restore left it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboxJump {
    pub peer: String,
    pub from: u64,
    pub to: u64,
}

/// Where a restore moves outbox counters: at least the restore time in ms
/// times 1024 (so a later restore of a later backup still moves forward),
/// and at least 2^32 past the counter (a clock set back).
fn jumped_counter(counter: u64, now_ms: i64) -> u64 {
    let by_time = u64::try_from(now_ms).unwrap_or(0).saturating_mul(1024);
    by_time.max(counter.saturating_add(1 << 32))
}

/// The restored node is the node as of the backup, but its peers have
/// applied the events it sent after it: a peer skips every event seq it has
/// applied, so new events must not reuse those seqs. Every peer's outbox
/// counter (and every counter of a node that was one) jumps past them; the
/// gap is recorded, for the outbox depth.
fn jump_outbox_counters(store: &Store, now_ms: i64) -> Result<Vec<OutboxJump>, BackupError> {
    let jumps = store.write(|tx| {
        let view = tx.view();
        let mut counters: BTreeMap<_, u64> = view.outbox_counters()?.into_iter().collect();
        for (peer, _) in view.peers()? {
            counters.entry(peer).or_insert(0);
        }
        let mut jumps = Vec::new();
        for (node, counter) in counters {
            // With NATS the backup adds the outbox entries relayed to
            // JetStream, which may go past the snapshot's counter.
            let above = tx.view().outbox(&node, counter, usize::MAX, false)?;
            let from = above.last().map_or(counter, |(seq, _)| counter.max(*seq));
            let to = jumped_counter(from, now_ms);
            tx.jump_outbox_counter(&node, from, to);
            jumps.push(OutboxJump {
                peer: node.to_string(),
                from,
                to,
            });
        }
        Ok::<_, BackupError>((jumps, crate::store::Durability::Buffer))
    })?;
    Ok(jumps)
}

/// Restores the backup at `file` into `data`, which must be missing or empty.
pub fn restore(file: &Path, data: &Path) -> Result<RestoreReport, BackupError> {
    let exists = match fs::read_dir(data) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BackupError::Refused(format!(
                    "{} is not empty: restore into a new or empty folder",
                    data.display()
                )));
            }
            true
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(e.into()),
    };
    let input = fs::File::open(file)?;
    let staging = staging_for(data, exists);
    DirBuilder::new().mode(0o700).create(&staging)?;
    let result = restore_into(input, &staging, data).and_then(|report| {
        move_into_place(&staging, data, exists)?;
        Ok(report)
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result
}

/// Where the restore is written first: inside an existing empty folder (it
/// may be a mount point, which cannot be renamed onto), else beside it.
fn staging_for(data: &Path, exists: bool) -> PathBuf {
    let pid = std::process::id();
    if exists {
        return data.join(format!(".restoring-{pid}"));
    }
    let name = data
        .file_name()
        .map_or("natter-data".into(), |n| n.to_string_lossy().into_owned());
    match data.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.join(format!(".{name}.restoring-{pid}")),
        _ => PathBuf::from(format!(".{name}.restoring-{pid}")),
    }
}

/// Renames the staging folder to `data`, or (inside an existing `data`)
/// moves its entries up.
fn move_into_place(staging: &Path, data: &Path, exists: bool) -> io::Result<()> {
    if !exists {
        return fs::rename(staging, data);
    }
    for entry in fs::read_dir(staging)? {
        let entry = entry?;
        fs::rename(entry.path(), data.join(entry.file_name()))?;
    }
    fs::remove_dir(staging)?;
    // Readable only by the node's user, as a folder natterd makes.
    fs::set_permissions(data, fs::Permissions::from_mode(0o700))
}

fn restore_into(
    input: fs::File,
    staging: &Path,
    data: &Path,
) -> Result<RestoreReport, BackupError> {
    let mut writer = Writer {
        dir: staging.to_owned(),
        loader: None,
    };
    let summary = read_archive(io::BufReader::new(input), &mut writer)?;
    let Some(loader) = writer.loader.take() else {
        return Err(super::corrupt("the backup has no store records"));
    };
    loader.finish()?;
    // Dropped at once: opened only to check (and migrate) its format.
    let (store_format, outbox_seqs) = {
        let store = Store::open(&staging.join("store"), StoreOptions::default())?;
        let format = store.snapshot().format()?;
        let jumps = jump_outbox_counters(&store, crate::metrics::wall_ms())?;
        store.persist()?;
        (format, jumps)
    };
    Ok(RestoreReport {
        data: data.to_owned(),
        config: summary.config.then(|| data.join(RESTORED_CONFIG)),
        records: summary.trailer.records,
        secrets: summary.secrets,
        media_files: summary.trailer.media_files,
        media_missing: summary.trailer.media_missing,
        manifest: summary.manifest,
        store_format,
        outbox_seqs,
    })
}

struct Writer {
    dir: PathBuf,
    loader: Option<Loader>,
}

/// A new file readable only by its owner.
fn create_private(path: &Path) -> io::Result<fs::File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut file = create_private(path)?;
    file.write_all(data)?;
    file.sync_all()
}

impl Visit for Writer {
    fn secret(&mut self, name: &str, data: &[u8]) -> Result<(), BackupError> {
        Ok(write_private(&self.dir.join(name), data)?)
    }

    fn config(&mut self, text: &[u8]) -> Result<(), BackupError> {
        Ok(write_private(&self.dir.join(RESTORED_CONFIG), text)?)
    }

    fn record(&mut self, keyspace: usize, key: &[u8], value: &[u8]) -> Result<(), BackupError> {
        let loader = match &mut self.loader {
            Some(loader) => loader,
            None => self.loader.insert(Loader::create(&self.dir.join("store"))?),
        };
        Ok(loader.put(keyspace, key, value)?)
    }

    fn media(&mut self, path: &str, data: &mut dyn Read) -> Result<(), BackupError> {
        let target = self.dir.join("media").join(path);
        if let Some(folder) = target.parent() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(folder)?;
        }
        let mut file = create_private(&target)?;
        io::copy(data, &mut file)?;
        file.sync_all()?;
        Ok(())
    }
}

/// What `natterd restore` prints.
pub fn describe_restore(report: &RestoreReport) -> String {
    let m = &report.manifest;
    let records: Vec<String> = report
        .records
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    let mut out = format!(
        "restored the backup of node {} taken {} by natterd {} into {}\n\
         store: format {} (backup: {}), records: {}\n\
         secrets: {}\n",
        m.node,
        m.created_at,
        m.natterd_version,
        report.data.display(),
        report.store_format,
        m.store_format,
        records.join(", "),
        report.secrets.join(", "),
    );
    match &report.config {
        Some(path) => out.push_str(&format!(
            "config: written to {} (move it where natterd reads its --config)\n",
            path.display()
        )),
        None => out.push_str("config: none in the backup\n"),
    }
    for jump in &report.outbox_seqs {
        out.push_str(&format!(
            "federation: the outbox seqs for peer {} moved from {} to {} (it has applied events this node sent after the backup; new ones must not reuse their seqs)\n",
            jump.peer, jump.from, jump.to
        ));
    }
    match m.with_media {
        true => out.push_str(&format!(
            "media: {} files into {} (the default media.root); {} missing when the backup was taken\n",
            report.media_files,
            report.data.join("media").display(),
            report.media_missing.len()
        )),
        false => out.push_str("media: not in the backup\n"),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeName;
    use crate::store::{Durability, OutboxEntry};

    #[test]
    fn counters_jump_past_the_counter_and_every_queued_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store"), StoreOptions::default()).unwrap();
        let (beta, gamma) = (
            NodeName::parse("beta.test").unwrap(),
            NodeName::parse("gamma.test").unwrap(),
        );
        let entry = OutboxEntry {
            queued_at: 0,
            event: serde_json::json!({}),
        };
        store
            .write(|tx| {
                tx.set_outbox_counter(&beta, 3);
                // Relayed to JetStream after the snapshot, added by the backup.
                tx.put_outbox(&beta, 5, &entry, false);
                tx.set_outbox_counter(&gamma, 9);
                Ok::<_, crate::store::StoreError>(((), Durability::Buffer))
            })
            .unwrap();
        let now = 1_800_000_000_000;
        let jumps = jump_outbox_counters(&store, now).unwrap();
        let seen: Vec<(String, u64, u64)> = jumps
            .iter()
            .map(|j| (j.peer.clone(), j.from, j.to))
            .collect();
        assert_eq!(
            seen,
            [
                ("beta.test".to_owned(), 5, now as u64 * 1024),
                ("gamma.test".to_owned(), 9, now as u64 * 1024)
            ]
        );
        let view = store.snapshot();
        assert_eq!(view.outbox_counter(&beta).unwrap(), now as u64 * 1024);
        assert_eq!(view.outbox_gaps(&beta).unwrap(), [(5, now as u64 * 1024)]);
        // A clock set back still moves forward.
        let again = jump_outbox_counters(&store, 1).unwrap();
        assert_eq!(again[0].to, now as u64 * 1024 + (1 << 32));
    }
}
