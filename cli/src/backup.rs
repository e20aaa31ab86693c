//! `natter backup create FILE [--with-media]` and `natter backup verify FILE`.
//!
//! `create` is one admin API call, `GET /admin/v1/backup`, whose body is the
//! archive (docs/operations.md, "Backups"). It is written to `FILE.partial`,
//! checked with the node's own reader, and only then renamed to FILE, so a
//! cut stream never leaves a FILE that looks complete; `FILE.sha256` is then
//! written in `sha256sum -c` format. `verify` needs no node.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use natter::backup::{BACKUP_FORMAT, Summary, verify_file};
use natter::gateway::admin::BACKUP_ESTIMATE_HEADER;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::{Admin, Failure, refusal};

#[derive(Debug, Subcommand)]
pub(crate) enum BackupCommand {
    /// Take a backup of the running node into FILE (never overwritten):
    /// store, secrets, config; with --with-media, embedded media too.
    Create {
        file: PathBuf,
        /// Add the embedded media store's files (refused with S3 media).
        #[arg(long)]
        with_media: bool,
    },
    /// Check a backup file without a node: exit 0 when it is whole, 1 with
    /// what is wrong.
    Verify { file: PathBuf },
}

fn failed(code: &str, message: String) -> anyhow::Error {
    Failure {
        exit: 1,
        code: code.to_owned(),
        message,
    }
    .into()
}

/// `FILE` with `suffix` added to its name.
fn beside(file: &Path, suffix: &str) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

pub(crate) async fn backup(
    admin: &Admin,
    command: &BackupCommand,
    json_out: bool,
) -> anyhow::Result<(Value, String)> {
    match command {
        BackupCommand::Create { file, with_media } => {
            create(admin, file, *with_media, json_out).await
        }
        BackupCommand::Verify { file } => verify(file),
    }
}

async fn create(
    admin: &Admin,
    file: &Path,
    with_media: bool,
    json_out: bool,
) -> anyhow::Result<(Value, String)> {
    if fs::symlink_metadata(file).is_ok() {
        return Err(failed(
            "exists",
            format!(
                "{} exists: a backup never overwrites a file",
                file.display()
            ),
        ));
    }
    let url = format!(
        "{}/admin/v1/backup?media={with_media}",
        admin.base.trim_end_matches('/')
    );
    let response = admin
        .http
        .get(&url)
        .bearer_auth(&admin.token)
        .send()
        .await
        .map_err(|e| admin.unreachable(&e))?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        return Err(refusal(status, value).into());
    }
    let estimate = response
        .headers()
        .get(BACKUP_ESTIMATE_HEADER)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(0);
    let partial = beside(file, ".partial");
    let written = download(response, &partial, estimate, json_out).await;
    let (bytes, sha256) = match written {
        Ok(done) => done,
        Err(e) => {
            let _ = fs::remove_file(&partial);
            return Err(e);
        }
    };
    let summary = match verify_file(&partial) {
        Ok(summary) => summary,
        Err(e) => {
            let _ = fs::remove_file(&partial);
            return Err(failed(
                "corrupt",
                format!("the backup received is not valid ({e}); nothing was kept"),
            ));
        }
    };
    fs::rename(&partial, file)?;
    let name = file.file_name().map_or_else(
        || file.to_string_lossy().into_owned(),
        |n| n.to_string_lossy().into_owned(),
    );
    fs::write(beside(file, ".sha256"), format!("{sha256}  {name}\n"))?;
    Ok(describe(file, bytes, &sha256, &summary, "backup written"))
}

/// Streams the body into `partial` (mode 0600), with a progress bar on
/// stderr (hidden when stderr is not a terminal); its size and SHA-256.
async fn download(
    mut response: reqwest::Response,
    partial: &Path,
    estimate: u64,
    json_out: bool,
) -> anyhow::Result<(u64, String)> {
    let mut out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(partial)?;
    let bar = match json_out {
        true => ProgressBar::hidden(),
        false => ProgressBar::new(estimate),
    };
    bar.set_style(
        ProgressStyle::with_template("{bytes} of ~{total_bytes} ({bytes_per_sec}) {wide_bar}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut hash = Sha256::new();
    let mut bytes = 0u64;
    loop {
        let chunk = response.chunk().await.map_err(|e| {
            failed(
                "cut",
                format!(
                    "the node's stream was cut after {bytes} bytes ({}); nothing was kept",
                    crate::root_cause(&e)
                ),
            )
        })?;
        let Some(chunk) = chunk else { break };
        out.write_all(&chunk)?;
        hash.update(&chunk);
        bytes += chunk.len() as u64;
        bar.set_position(bytes);
        if bytes > bar.length().unwrap_or(0) {
            bar.set_length(bytes);
        }
    }
    bar.finish_and_clear();
    out.sync_all()?;
    Ok((bytes, natter_hex(&hash.finalize())))
}

fn natter_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `natter backup verify FILE`; also checks `FILE.sha256` when it is there.
pub(crate) fn verify(file: &Path) -> anyhow::Result<(Value, String)> {
    let summary = verify_file(file).map_err(|e| {
        failed(
            "corrupt",
            format!("{} is not a valid backup: {e}", file.display()),
        )
    })?;
    let (bytes, sha256) = file_sha256(file)?;
    if let Ok(listed) = fs::read_to_string(beside(file, ".sha256")) {
        let listed = listed.split_whitespace().next().unwrap_or("");
        if listed != sha256 {
            return Err(failed(
                "corrupt",
                format!(
                    "{}: SHA-256 {sha256} differs from {listed} in its .sha256 file",
                    file.display()
                ),
            ));
        }
    }
    Ok(describe(file, bytes, &sha256, &summary, "backup verified"))
}

fn file_sha256(file: &Path) -> anyhow::Result<(u64, String)> {
    let mut input = fs::File::open(file)?;
    let mut hash = Sha256::new();
    let mut buf = vec![0; 1 << 16];
    let mut bytes = 0u64;
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok((bytes, natter_hex(&hash.finalize())))
}

/// The `--json` object (stable: extend, never break) and the text.
fn describe(
    file: &Path,
    bytes: u64,
    sha256: &str,
    summary: &Summary,
    what: &str,
) -> (Value, String) {
    let m = &summary.manifest;
    let t = &summary.trailer;
    let value = json!({
        "file": file.display().to_string(),
        "bytes": bytes,
        "sha256": sha256,
        "backupFormat": m.backup_format,
        "readsBackupFormat": BACKUP_FORMAT,
        "node": m.node,
        "natterdVersion": m.natterd_version,
        "storeFormat": m.store_format,
        "createdAt": m.created_at,
        "withMedia": m.with_media,
        "counts": t.records,
        "secrets": summary.secrets,
        "config": summary.config,
        "mediaFiles": t.media_files,
        "mediaMissing": t.media_missing,
        "outboxFromStream": t.outbox_from_stream,
    });
    let counts: Vec<String> = t.records.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let text = format!(
        "{what}: {}\nnode {} (natterd {}), store format {}, taken {}\n\
         {bytes} bytes, sha256 {sha256}\nrecords: {}\nsecrets: {}; config: {}; media: {}",
        file.display(),
        m.node,
        m.natterd_version,
        m.store_format,
        m.created_at,
        counts.join(", "),
        summary.secrets.join(", "),
        if summary.config { "yes" } else { "no" },
        match m.with_media {
            true => format!("{} files, {} missing", t.media_files, t.media_missing.len()),
            false => "not included".to_owned(),
        },
    );
    (value, text)
}
