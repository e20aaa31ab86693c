//! A node this process spawns, in one of three topologies, each made of real
//! processes on free loopback ports sharing one temporary folder:
//! - `embedded`: one `natterd serve` (the live hop is in-process);
//! - `nats`: `nats-server` and `natterd serve --nats` (deliveries over JetStream);
//! - `split`: `nats-server`, `natterd core` (the store and the admin API) and two
//!   `natterd gateway`s (the client connections), as a scaled-out node runs;
//! - `federated`: two nodes, each one `natterd serve` (a cluster each), named
//!   and peered by `crate::federation`.
//!
//! Every process is killed when the [`Cluster`] is dropped, so an error anywhere
//! in a benchmark leaves nothing running.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tokio::time::Instant;

use crate::usage::{Processes, Watched};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub(crate) enum Topology {
    /// One `natterd serve`.
    #[default]
    Embedded,
    /// nats-server and `natterd serve --nats`.
    Nats,
    /// nats-server, `natterd core` and two `natterd gateway`s.
    Split,
    /// Two peered nodes (alpha.bench, beta.bench), each one `natterd serve`;
    /// the chat's home is alpha.
    Federated,
}

/// What sets one spawned node apart: its name (peers know it by that) and
/// settings appended to [`SPAWN_CONFIG`].
#[derive(Debug, Clone, Default)]
pub(crate) struct NodeSetup {
    /// `name = "..."`; natterd's default (`localhost`) when `None`.
    pub name: Option<String>,
    /// TOML appended to the config (e.g. a `[federation]` table).
    pub extra_config: String,
}

impl NodeSetup {
    fn config(&self) -> String {
        // Top-level keys must come before the first table.
        let name = self
            .name
            .as_ref()
            .map(|n| format!("name = \"{n}\"\n"))
            .unwrap_or_default();
        format!("{name}{SPAWN_CONFIG}{}", self.extra_config)
    }
}

/// The settings every spawned natterd runs with: anyone may register, and the
/// rate limits (per connection and per user) and quotas are far above what one
/// machine can produce, so the benchmark measures the node rather than its
/// throttle; every client comes from 127.0.0.1, so the per-address connection
/// cap is lifted too. This is the documented way (docs/configuration.md,
/// `[limits]`, `[http]`).
const SPAWN_CONFIG: &str = r#"registration = "open"

[limits]
send_rate = 1000000.0
send_burst = 1000000
user_send_rate = 1000000.0
user_send_burst = 1000000
user_chat_rate = 1000000.0
user_chat_burst = 1000000
user_upload_rate = 1000000.0
user_upload_burst = 1000000
user_read_rate = 1000000.0
user_read_burst = 1000000
chats_per_user = 1000000
devices_per_user = 1000000

[http]
max_connections = 1000000
max_connections_per_address = 1000000
"#;

/// A free loopback port, chosen by the kernel.
const ANY_PORT: &str = "127.0.0.1:0";
/// The gateways of the split topology, by `--gateway-id`.
const GATEWAY_IDS: [&str; 2] = ["gw1", "gw2"];
/// How long a process may take to print its address, and then to be ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How often `/readyz` is asked while waiting.
const READY_POLL: Duration = Duration::from_millis(50);
/// Lines of a process's log kept to explain a failed start.
const LOG_TAIL: usize = 50;

/// The spawned processes, with where to reach them.
pub(crate) struct Cluster {
    // Fields drop in order: natterd's processes, then nats-server (so natterd
    // never sees its broker go and logs about it), then the folder they all use.
    /// The process with the store first (`serve` or `core`), then the gateways.
    natterd: Vec<Process>,
    nats: Option<Process>,
    /// Base URL of the admin API (the process with the store's admin listener).
    pub admin_url: String,
    /// Base URL of the process with the store (federation, media).
    pub main_url: String,
    /// Base URLs clients connect to (the gateways in split, else the one node).
    pub client_urls: Vec<String>,
    pub admin_token: String,
    /// How the process with the store was started, to start it again.
    relaunch: Relaunch,
    _dir: tempfile::TempDir,
}

/// What starting the process with the store again needs.
#[derive(Clone)]
struct Relaunch {
    binary: PathBuf,
    dir: PathBuf,
    config: PathBuf,
    nats_url: Option<String>,
    name: String,
    role: &'static str,
    args: Vec<OsString>,
}

impl Cluster {
    /// Starts every process of `topology`, then waits until each is ready.
    pub(crate) async fn start(
        natterd: PathBuf,
        nats_server: PathBuf,
        topology: Topology,
        setup: NodeSetup,
        http: &reqwest::Client,
    ) -> Result<Self> {
        // Starting blocks on the processes' logs until they listen.
        let cluster =
            tokio::task::spawn_blocking(move || launch(&natterd, &nats_server, topology, &setup))
                .await
                .context("the start task panicked")??;
        for process in &cluster.natterd {
            wait_ready(http, &process.name, &process.url).await?;
        }
        Ok(cluster)
    }

    pub(crate) fn processes(&self) -> Processes {
        let watched = |p: &Process| Watched {
            name: p.name.clone(),
            pid: p.child.id(),
        };
        Processes {
            natterd: self.natterd.iter().map(watched).collect(),
            nats: self.nats.as_ref().map(watched),
        }
    }

    /// `kill -9` of the process with the store (the one `serve`): an outage,
    /// not a shutdown. Its data folder stays.
    pub(crate) fn kill_main(&mut self) -> Result<()> {
        ensure!(
            self.natterd.len() == 1,
            "only a one-process node is stopped and restarted"
        );
        let main = &mut self.natterd[0];
        main.child.kill().context("kill natterd")?;
        main.child.wait().context("reap natterd")?;
        Ok(())
    }

    /// Starts the process with the store again, on the port and data folder it
    /// had (peers know a node by its URL), and waits until it is ready. Its pid
    /// changes: take [`Self::processes`] again.
    pub(crate) async fn restart_main(&mut self, http: &reqwest::Client) -> Result<()> {
        let addr = |url: &str| url.strip_prefix("http://").map(str::to_owned);
        let main = &self.natterd[0];
        let addr = addr(&main.url)
            .zip(addr(&main.admin_url))
            .context("natterd's URLs")?;
        let relaunch = self.relaunch.clone();
        let process = tokio::task::spawn_blocking(move || {
            let spawner = Spawner {
                binary: &relaunch.binary,
                dir: &relaunch.dir,
                config: &relaunch.config,
                nats_url: relaunch.nats_url.as_deref(),
            };
            spawner.natterd(
                &relaunch.name,
                relaunch.role,
                (&addr.0, &addr.1),
                &relaunch.args,
            )
        })
        .await
        .context("the restart task panicked")??;
        // The old one was killed; replacing it only reaps it again.
        self.natterd[0] = process;
        wait_ready(http, &self.natterd[0].name, &self.natterd[0].url).await
    }
}

/// Spawns the processes one after the other, each once the one it needs
/// listens. An early return drops (kills) those already started.
fn launch(
    natterd: &Path,
    nats_server: &Path,
    topology: Topology,
    setup: &NodeSetup,
) -> Result<Cluster> {
    let dir = tempfile::tempdir().context("make a temporary folder for the node")?;
    let config = dir.path().join("natter.toml");
    std::fs::write(&config, setup.config()).context("write natterd's config")?;
    let nats = match topology {
        Topology::Embedded | Topology::Federated => None,
        Topology::Nats | Topology::Split => Some(spawn_nats(nats_server, dir.path())?),
    };
    let nats_url = nats.as_ref().map(|n| n.url.clone());
    let spawner = Spawner {
        binary: natterd,
        dir: dir.path(),
        config: &config,
        nats_url: nats_url.as_deref(),
    };
    let data = dir.path().join("data");
    // Each process is named after its role (a named node after its name), the
    // gateways after their ids.
    let main_role = match topology {
        Topology::Split => "core",
        Topology::Embedded | Topology::Nats | Topology::Federated => "serve",
    };
    let main_name = setup.name.as_deref().unwrap_or(main_role);
    let data_args = vec![OsString::from("--data"), data.clone().into_os_string()];
    let mut processes =
        vec![spawner.natterd(main_name, main_role, (ANY_PORT, ANY_PORT), &data_args)?];
    if topology == Topology::Split {
        for id in GATEWAY_IDS {
            let args = [OsString::from("--gateway-id"), OsString::from(id)];
            processes.push(spawner.natterd(id, "gateway", (ANY_PORT, ANY_PORT), &args)?);
        }
    }
    let token_file = data.join("admin.token");
    let admin_token = std::fs::read_to_string(&token_file)
        .with_context(|| format!("read {}", token_file.display()))?
        .trim()
        .to_owned();
    // Clients go to the gateways in split, else to the one process.
    let clients = match topology {
        Topology::Split => &processes[1..],
        Topology::Embedded | Topology::Nats | Topology::Federated => &processes[..],
    };
    let relaunch = Relaunch {
        binary: natterd.to_owned(),
        dir: dir.path().to_owned(),
        config,
        nats_url,
        name: main_name.to_owned(),
        role: main_role,
        args: data_args,
    };
    Ok(Cluster {
        admin_url: processes[0].admin_url.clone(),
        main_url: processes[0].url.clone(),
        client_urls: clients.iter().map(|p| p.url.clone()).collect(),
        admin_token,
        relaunch,
        natterd: processes,
        nats,
        _dir: dir,
    })
}

/// A started process; dropping it kills it.
struct Process {
    name: String,
    child: Child,
    /// Where it listens: `http://…` for natterd, `nats://…` for nats-server.
    url: String,
    /// natterd's admin listener (`http://…`); nats-server's `url`.
    admin_url: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        // Already exited is fine: there is nothing left to stop.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What every natterd of one cluster shares.
struct Spawner<'a> {
    binary: &'a Path,
    /// The working folder: whatever a process writes outside its data folder
    /// stays in the temporary folder too.
    dir: &'a Path,
    config: &'a Path,
    nats_url: Option<&'a str>,
}

impl Spawner<'_> {
    /// Starts `natterd ROLE` listening on `listen` (clients) and `admin_listen`
    /// with the shared flags and `extra`; returns once it prints both addresses.
    fn natterd(
        &self,
        name: &str,
        role: &str,
        (listen, admin_listen): (&str, &str),
        extra: &[OsString],
    ) -> Result<Process> {
        let mut command = Command::new(self.binary);
        command
            .arg(role)
            .arg("--config")
            .arg(self.config)
            .args(["--listen", listen, "--admin-listen", admin_listen])
            .args(extra);
        if let Some(url) = self.nats_url {
            command.args(["--nats", url]);
        }
        // The address is parsed from the human log format at its default level.
        command
            .env("NATTER_LOG_FORMAT", "human")
            .env_remove("RUST_LOG");
        let watch = LogWatch {
            name: format!("natterd {name}"),
            find: listening_url,
            // And a shutdown: a node that stops mid-run says why (natterd logs
            // the signal it got at INFO).
            alarm: |line| {
                line.contains(" WARN ")
                    || line.contains(" ERROR ")
                    || line.contains("SIGTERM")
                    || line.contains("SIGINT")
                    || line.contains("shutting down")
            },
        };
        start(command, name, self.dir, watch, self.binary)
    }
}

/// Starts nats-server with JetStream, its store under `dir`.
fn spawn_nats(binary: &Path, dir: &Path) -> Result<Process> {
    let mut command = Command::new(binary);
    command
        .args(["-js", "-a", "127.0.0.1", "-p", "-1", "-sd"])
        .arg(dir.join("nats"));
    let watch = LogWatch {
        name: "nats-server".to_owned(),
        find: nats_url,
        alarm: |line| line.contains("[ERR]") || line.contains("[WRN]"),
    };
    start(command, "nats-server", dir, watch, binary).context(
        "start nats-server (Debian: apt-get install nats-server; or give --nats-server PATH)",
    )
}

/// Runs `command` in `dir` with its stderr watched; returns once the log shows
/// the address it listens on. `name` is how the reports call it.
fn start(
    mut command: Command,
    name: &str,
    dir: &Path,
    watch: LogWatch,
    binary: &Path,
) -> Result<Process> {
    let mut child = command
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {}", binary.display()))?;
    let stderr = child.stderr.take().context("the child's stderr")?;
    // From here on, an early return kills the process.
    let mut process = Process {
        name: name.to_owned(),
        child,
        url: String::new(),
        admin_url: String::new(),
    };
    let found = watch.wait(stderr)?;
    // natterd's watch finds "URL ADMIN_URL"; nats-server's one URL.
    let (url, admin) = found.split_once(' ').unwrap_or((&found, &found));
    (process.url, process.admin_url) = (url.to_owned(), admin.to_owned());
    Ok(process)
}

/// What to look for in a process's log.
struct LogWatch {
    /// E.g. `natterd gw1`: names the process in errors and echoed lines.
    name: String,
    /// The address it listens on, from the line that announces it.
    find: fn(&str) -> Option<String>,
    /// Lines worth echoing once started (warnings and errors matter when
    /// reading results).
    alarm: fn(&str) -> bool,
}

impl LogWatch {
    /// Reads the log until `find` matches and returns what it found. A thread
    /// keeps draining the log afterwards so the process never blocks on a full
    /// pipe.
    fn wait(self, stderr: ChildStderr) -> Result<String> {
        let (found_tx, found_rx) = mpsc::channel();
        let (tail_tx, tail_rx) = mpsc::channel();
        let name = self.name.clone();
        std::thread::spawn(move || {
            let mut tail = VecDeque::with_capacity(LOG_TAIL);
            let mut found_tx = Some(found_tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(found) = (self.find)(&line)
                    && let Some(tx) = found_tx.take()
                {
                    let _ = tx.send(found);
                }
                if found_tx.is_none() {
                    if (self.alarm)(&line) {
                        eprintln!("{}: {line}", self.name);
                    }
                    continue;
                }
                if tail.len() == LOG_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            // The process closed its log before listening: hand over what it said.
            let _ = tail_tx.send(Vec::from(tail));
        });
        match found_rx.recv_timeout(START_TIMEOUT) {
            Ok(found) => Ok(found),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!("{name} printed no address within {START_TIMEOUT:?}")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let log = tail_rx.recv().unwrap_or_default().join("\n");
                bail!("{name} exited before listening; its log ends with:\n{log}")
            }
        }
    }
}

/// `http://127.0.0.1:PORT http://127.0.0.1:ADMIN_PORT` from natterd's
/// `… listening url=http://… admin=http://… …` line.
fn listening_url(line: &str) -> Option<String> {
    if !line.contains("listening") {
        return None;
    }
    let field = |name: &str| {
        line.split(&format!(" {name}="))
            .nth(1)?
            .split_whitespace()
            .next()
    };
    Some(format!("{} {}", field("url")?, field("admin")?))
}

/// `nats://127.0.0.1:PORT` from nats-server's `… Listening for client
/// connections on 127.0.0.1:PORT` line.
fn nats_url(line: &str) -> Option<String> {
    let (_, addr) = line.split_once("Listening for client connections on ")?;
    let port: u16 = addr.trim().rsplit(':').next()?.parse().ok()?;
    Some(format!("nats://127.0.0.1:{port}"))
}

/// Polls `GET {url}/readyz` until it answers 200 (NATS connected, streams made),
/// within `START_TIMEOUT`.
async fn wait_ready(http: &reqwest::Client, name: &str, url: &str) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    let readyz = format!("{url}/readyz");
    loop {
        let last = match http.get(&readyz).send().await {
            Ok(r) if r.status() == reqwest::StatusCode::OK => return Ok(()),
            Ok(r) => format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("{name} was not ready within {START_TIMEOUT:?} ({readyz}: {last})");
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_listening_url() {
        let line = "2025-01-01T00:00:00Z  INFO natter::server: listening url=http://127.0.0.1:4321 admin=http://127.0.0.1:4322 node=localhost registration=Open";
        assert_eq!(
            listening_url(line).as_deref(),
            Some("http://127.0.0.1:4321 http://127.0.0.1:4322")
        );
        assert_eq!(listening_url("INFO shutting down"), None);
    }

    #[test]
    fn finds_the_nats_port() {
        let line = "[23334] 2026/11/25 13:49:53.387449 [INF] Listening for client connections on 127.0.0.1:46589";
        assert_eq!(nats_url(line).as_deref(), Some("nats://127.0.0.1:46589"));
        assert_eq!(nats_url("[INF] Server is ready"), None);
    }
}
