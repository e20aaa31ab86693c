//! The node under test: a `natterd` this process spawned, or one already running,
//! plus the admin calls that provision users and devices.
//!
//! Provisioning goes through the admin API, never `/v1/login`: a login hashes a
//! password with argon2, which would make setting up 10k devices take minutes.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use futures_util::{StreamExt, TryStreamExt, stream};
use serde::Deserialize;
use serde_json::json;

/// How natterd is reached; every subcommand takes these.
#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct TargetArgs {
    /// Spawn this natterd binary (e.g. target/release/natterd) on a free port with
    /// a temporary data folder; it is killed at the end.
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present = "url",
        conflicts_with = "url"
    )]
    natterd: Option<PathBuf>,
    /// Use a node that is already running at this base URL instead.
    #[arg(long, value_name = "URL", requires = "admin_token")]
    url: Option<String>,
    /// The running node's admin token (with --url).
    #[arg(long, env = "NATTER_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// The running node's process id (with --url), to report its memory.
    #[arg(long, requires = "url")]
    pid: Option<u32>,
    /// Prepended to every username. Default: none for a spawned node (its store is
    /// new), a tag made from the current time with --url, so that repeated runs
    /// against one node do not collide with users of earlier runs.
    #[arg(long)]
    user_prefix: Option<String>,
}

/// The settings a spawned natterd runs with: anyone may register, and the send
/// rate limit is far above what one machine can produce, so the benchmark
/// measures the node rather than its throttle.
const SPAWN_CONFIG: &str = r#"registration = "open"

[limits]
send_rate = 1000000.0
send_burst = 1000000
"#;

/// How long natterd may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of natterd's log kept to explain a failed start.
const LOG_TAIL: usize = 50;
/// Admin requests in flight while provisioning.
const PROVISION_CONCURRENCY: usize = 16;
/// Long enough for the admin API's checks; short enough to not be a weak password.
const PASSWORD: &str = "loadgen-password";

/// One device of one user, as the admin API created it.
#[derive(Debug, Clone, Deserialize)]
pub struct Device {
    /// The device's bearer token for `/v1/ws`.
    pub token: String,
}

/// A natterd this process started. Dropping it kills the process, so an error
/// anywhere in a benchmark does not leave a node running.
struct Spawned {
    child: Child,
    // Holds the data folder and config until natterd is gone.
    _dir: tempfile::TempDir,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // Already exited is fine: there is nothing left to stop.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Node {
    base_url: String,
    admin_token: String,
    user_prefix: String,
    pid: Option<u32>,
    http: reqwest::Client,
    spawned: Option<Spawned>,
}

impl Node {
    /// Spawns natterd or connects to the running node, as the arguments say.
    pub async fn start(args: &TargetArgs) -> Result<Self> {
        let http = reqwest::Client::new();
        if let Some(path) = args.natterd.clone() {
            // Spawning blocks on natterd's log until it listens.
            let (spawned, base_url, admin_token) =
                tokio::task::spawn_blocking(move || spawn(&path))
                    .await
                    .context("the natterd start task panicked")??;
            return Ok(Self {
                base_url,
                admin_token,
                user_prefix: args.user_prefix.clone().unwrap_or_default(),
                pid: Some(spawned.child.id()),
                http,
                spawned: Some(spawned),
            });
        }
        let (Some(url), Some(token)) = (&args.url, &args.admin_token) else {
            bail!("give --natterd PATH, or --url URL with --admin-token TOKEN");
        };
        Ok(Self {
            base_url: url.trim_end_matches('/').to_owned(),
            admin_token: token.clone(),
            user_prefix: args.user_prefix.clone().unwrap_or_else(run_tag),
            pid: args.pid,
            http,
            spawned: None,
        })
    }

    /// `ws://HOST/v1/ws` for the node's `http://HOST`.
    pub fn ws_url(&self) -> String {
        let rest = self.base_url.strip_prefix("http").unwrap_or(&self.base_url);
        format!("ws{rest}/v1/ws")
    }

    /// The username for `name` in this run (see `--user-prefix`).
    pub fn username(&self, name: &str) -> String {
        format!("{}{name}", self.user_prefix)
    }

    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// natterd's resident memory in KiB, when its process is known.
    pub fn rss_kib(&self) -> Result<Option<u64>> {
        self.pid.map(rss_kib).transpose()
    }

    /// Kills a spawned natterd (a running node is left alone).
    pub fn stop(mut self) {
        self.spawned.take();
    }

    pub async fn create_user(&self, username: &str) -> Result<()> {
        let body = json!({ "username": username, "password": PASSWORD });
        self.admin_post("/admin/v1/users", body)
            .await
            .with_context(|| format!("create user {username}"))?;
        Ok(())
    }

    pub async fn create_device(&self, username: &str, device_name: &str) -> Result<Device> {
        let path = format!("/admin/v1/users/{username}/devices");
        let body = json!({ "deviceName": device_name });
        let answer = self
            .admin_post(&path, body)
            .await
            .with_context(|| format!("create device {device_name} of {username}"))?;
        serde_json::from_str(&answer)
            .with_context(|| format!("device answer for {username}: {answer}"))
    }

    /// Creates the users, a few admin requests at a time.
    pub async fn create_users(&self, usernames: &[String]) -> Result<()> {
        stream::iter(usernames)
            .map(|name| self.create_user(name))
            .buffer_unordered(PROVISION_CONCURRENCY)
            .try_collect()
            .await
    }

    /// Creates one device per entry of `owners` (a username; repeat it for more
    /// devices of one user), a few at a time; the devices come back in that order.
    pub async fn create_devices(&self, owners: &[&str]) -> Result<Vec<Device>> {
        stream::iter(owners.iter().enumerate())
            .map(|(k, owner)| async move { self.create_device(owner, &format!("loadgen-{k}")).await })
            .buffered(PROVISION_CONCURRENCY)
            .try_collect()
            .await
    }

    /// POSTs JSON with the admin token; any status but 201 is an error.
    async fn admin_post(&self, path: &str, body: serde_json::Value) -> Result<String> {
        let url = format!("{}{path}", self.base_url);
        let response = self
            .http
            .post(&url)
            .bearer_auth(&self.admin_token)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .with_context(|| format!("read the answer to POST {url}"))?;
        if status != reqwest::StatusCode::CREATED {
            bail!("POST {url}: {status}: {text}");
        }
        Ok(text)
    }
}

/// Starts natterd with a fresh data folder; returns it, its base URL and its
/// admin token.
fn spawn(binary: &Path) -> Result<(Spawned, String, String)> {
    let dir = tempfile::tempdir().context("make a temporary folder for natterd")?;
    let data = dir.path().join("data");
    let config = dir.path().join("natter.toml");
    std::fs::write(&config, SPAWN_CONFIG).context("write natterd's config")?;
    let mut child = Command::new(binary)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--data")
        .arg(&data)
        .arg("--listen")
        .arg("127.0.0.1:0")
        // The address is parsed from the human log format at its default level.
        .env("NATTER_LOG_FORMAT", "human")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {}", binary.display()))?;
    let stderr = child.stderr.take().context("natterd's stderr")?;
    // From here on, an early return kills natterd.
    let spawned = Spawned { child, _dir: dir };
    let base_url = wait_for_url(stderr)?;
    let token_file = data.join("admin.token");
    let admin_token = std::fs::read_to_string(&token_file)
        .with_context(|| format!("read {}", token_file.display()))?
        .trim()
        .to_owned();
    Ok((spawned, base_url, admin_token))
}

/// Reads natterd's log until the `listening url=…` line and returns the URL. A
/// thread keeps draining the log afterwards so natterd never blocks on a full
/// pipe; it echoes warnings and errors, which matter when reading results.
fn wait_for_url(stderr: ChildStderr) -> Result<String> {
    let (url_tx, url_rx) = mpsc::channel();
    let (tail_tx, tail_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut tail = VecDeque::with_capacity(LOG_TAIL);
        let mut url_tx = Some(url_tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = listening_url(&line)
                && let Some(tx) = url_tx.take()
            {
                let _ = tx.send(url);
            }
            if url_tx.is_none() {
                if line.contains(" WARN ") || line.contains(" ERROR ") {
                    eprintln!("natterd: {line}");
                }
                continue;
            }
            if tail.len() == LOG_TAIL {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        // natterd closed its log before listening: hand over what it said.
        let _ = tail_tx.send(Vec::from(tail));
    });
    match url_rx.recv_timeout(START_TIMEOUT) {
        Ok(url) => Ok(url),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            bail!("natterd printed no `listening url=` line within {START_TIMEOUT:?}")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let log = tail_rx.recv().unwrap_or_default().join("\n");
            bail!("natterd exited before listening; its log ends with:\n{log}")
        }
    }
}

/// `http://127.0.0.1:PORT` from natterd's `… listening url=http://… …` line.
fn listening_url(line: &str) -> Option<String> {
    if !line.contains("listening") {
        return None;
    }
    let url = line.split("url=").nth(1)?.split_whitespace().next()?;
    Some(url.to_owned())
}

/// VmRSS of a process, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .with_context(|| format!("no VmRSS in {path}"))?;
    // The line reads `VmRSS:     12345 kB`.
    let kib = line.trim().trim_end_matches("kB").trim();
    kib.parse()
        .with_context(|| format!("VmRSS {line:?} in {path}"))
}

/// A short tag unique to this run, e.g. `r1a2b3c4d5e6f7`: the current time in
/// nanoseconds, in base 36 (usernames allow only lowercase letters, digits and
/// `._-`, at most 32 of them).
fn run_tag() -> String {
    let mut nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut digits = Vec::new();
    while nanos > 0 {
        digits.push(char::from_digit((nanos % 36) as u32, 36).unwrap_or('0'));
        nanos /= 36;
    }
    std::iter::once('r')
        .chain(digits.into_iter().rev())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_listening_url() {
        let line = "2025-01-01T00:00:00Z  INFO natter::server: listening url=http://127.0.0.1:4321 node=localhost registration=Open";
        assert_eq!(
            listening_url(line).as_deref(),
            Some("http://127.0.0.1:4321")
        );
        assert_eq!(listening_url("INFO shutting down"), None);
    }

    #[test]
    fn run_tags_are_valid_username_prefixes() {
        let tag = run_tag();
        // Leaves room for the longest name used, `receiver`.
        assert!(tag.len() + "receiver".len() <= 32, "{tag}");
        assert!(
            tag.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
    }
}
