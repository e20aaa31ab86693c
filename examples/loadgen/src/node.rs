//! The node under test: one this process spawned (see `spawn`), or one already
//! running, plus the admin calls that provision users and devices.
//!
//! Provisioning goes through the admin API, never `/v1/login`: a login hashes a
//! password with argon2, which would make setting up 10k devices take minutes.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use futures_util::{StreamExt, TryStreamExt, stream};
use serde::Deserialize;
use serde_json::json;

use crate::spawn::{Cluster, NodeSetup, Topology};
use crate::usage::{Processes, Watched};

/// How natterd is reached; every subcommand takes these.
#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub(crate) struct TargetArgs {
    /// Spawn this natterd binary (e.g. target/release/natterd) on free ports with
    /// a temporary data folder; every process is killed at the end.
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present = "url",
        conflicts_with = "url"
    )]
    natterd: Option<PathBuf>,
    /// With --natterd: which processes to run. In split, admin calls go to the
    /// core and client connections round robin to the two gateways. federated
    /// (fanout only): two peered nodes, the members split between them.
    #[arg(long, value_enum, default_value_t = Topology::Embedded, conflicts_with = "url")]
    topology: Topology,
    /// With --topology nats or split: the nats-server binary to spawn.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/usr/sbin/nats-server",
        conflicts_with = "url"
    )]
    nats_server: PathBuf,
    /// Use a node that is already running at this base URL instead (one
    /// all-in-one process: its client endpoints).
    #[arg(long, value_name = "URL", requires = "admin_token")]
    url: Option<String>,
    /// The running node's admin listener (natterd's --admin-listen), with --url.
    #[arg(
        long,
        value_name = "URL",
        default_value = "http://127.0.0.1:7071",
        requires = "url"
    )]
    admin_url: String,
    /// The running node's admin token (with --url).
    #[arg(long, env = "NATTER_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// The running node's process id (with --url), to report its memory and CPU.
    #[arg(long, requires = "url")]
    pid: Option<u32>,
    /// Prepended to every username. Default: none for a spawned node (its store is
    /// new), a tag made from the current time with --url, so that repeated runs
    /// against one node do not collide with users of earlier runs.
    #[arg(long)]
    user_prefix: Option<String>,
}

impl TargetArgs {
    /// For the results: the spawned topology, or `running` for `--url`.
    pub(crate) fn topology_name(&self) -> &'static str {
        if self.natterd.is_none() {
            return "running";
        }
        match self.topology {
            Topology::Embedded => "embedded",
            Topology::Nats => "nats",
            Topology::Split => "split",
            Topology::Federated => "federated",
        }
    }
}

/// Admin requests in flight while provisioning.
const PROVISION_CONCURRENCY: usize = 16;
/// Long enough for the admin API's checks; short enough to not be a weak password.
const PASSWORD: &str = "loadgen-password";

/// One device of one user, as the admin API created it.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Device {
    /// The device's bearer token for `/v1/ws`.
    pub token: String,
}

pub(crate) struct Node {
    /// The node's name when the load generator set one (federation), else
    /// `None` (natterd's default).
    name: Option<String>,
    /// Base URL of the admin API (natterd's admin listener).
    admin_url: String,
    /// Base URL of the process with the store: clients' and federation endpoints.
    main_url: String,
    /// `ws://…/v1/ws` of every process that serves clients.
    ws_urls: Vec<String>,
    admin_token: String,
    user_prefix: String,
    processes: Processes,
    http: reqwest::Client,
    /// Dropping it kills the spawned processes.
    cluster: Option<Cluster>,
}

impl Node {
    /// Spawns natterd or connects to the running node, as the arguments say.
    /// One node: `--topology federated` is [`Self::start_all`]'s.
    pub(crate) async fn start(args: &TargetArgs) -> Result<Self> {
        if let Some(path) = args.natterd.clone() {
            ensure!(
                args.topology != Topology::Federated,
                "--topology federated is for fanout (and catchup is always federated)"
            );
            let prefix = args.user_prefix.clone().unwrap_or_default();
            let (nats, topology) = (args.nats_server.clone(), args.topology);
            return Self::spawn(path, nats, topology, NodeSetup::default(), prefix).await;
        }
        let http = reqwest::Client::new();
        let (Some(url), Some(token)) = (&args.url, &args.admin_token) else {
            bail!("give --natterd PATH, or --url URL with --admin-token TOKEN");
        };
        let url = url.trim_end_matches('/').to_owned();
        let natterd = args.pid.map(|pid| Watched {
            name: "natterd".to_owned(),
            pid,
        });
        Ok(Self {
            name: None,
            ws_urls: vec![ws_url(&url)],
            admin_url: args.admin_url.trim_end_matches('/').to_owned(),
            main_url: url,
            admin_token: token.clone(),
            user_prefix: args.user_prefix.clone().unwrap_or_else(run_tag),
            processes: Processes {
                natterd: natterd.into_iter().collect(),
                nats: None,
            },
            http,
            cluster: None,
        })
    }

    /// The nodes the arguments name: the two peered ones of `--topology
    /// federated` (the first is the home of the benchmark's chat), else one.
    pub(crate) async fn start_all(args: &TargetArgs) -> Result<Vec<Self>> {
        match (&args.natterd, args.topology) {
            (Some(path), Topology::Federated) => {
                let prefix = args.user_prefix.clone().unwrap_or_default();
                crate::federation::start_pair(path, &prefix).await
            }
            _ => Ok(vec![Self::start(args).await?]),
        }
    }

    /// Spawns `path` in `topology`, set up as `setup` says.
    pub(crate) async fn spawn(
        path: PathBuf,
        nats_server: PathBuf,
        topology: Topology,
        setup: NodeSetup,
        user_prefix: String,
    ) -> Result<Self> {
        let http = reqwest::Client::new();
        let name = setup.name.clone();
        let cluster = Cluster::start(path, nats_server, topology, setup, &http).await?;
        Ok(Self {
            name,
            admin_url: cluster.admin_url.clone(),
            main_url: cluster.main_url.clone(),
            ws_urls: cluster.client_urls.iter().map(|u| ws_url(u)).collect(),
            admin_token: cluster.admin_token.clone(),
            user_prefix,
            processes: cluster.processes(),
            http,
            cluster: Some(cluster),
        })
    }

    /// The node's name, when the load generator named it.
    pub(crate) fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Base URL of the process with the store: its federation endpoints and
    /// well-known document (and, in one process, the clients').
    pub(crate) fn base_url(&self) -> &str {
        &self.main_url
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// How users of other nodes name `username` of this one: `username@node`
    /// (just `username` when the node has no name set here).
    pub(crate) fn user_id(&self, username: &str) -> String {
        match &self.name {
            Some(node) => format!("{username}@{node}"),
            None => username.to_owned(),
        }
    }

    /// `kill -9` of the spawned node (its data folder stays), for an outage.
    pub(crate) fn kill(&mut self) -> Result<()> {
        self.cluster
            .as_mut()
            .context("only a spawned node can be stopped")?
            .kill_main()
    }

    /// Starts the killed node again on its port and data folder; returns once
    /// it is ready.
    pub(crate) async fn restart(&mut self) -> Result<()> {
        let cluster = self
            .cluster
            .as_mut()
            .context("only a spawned node can be restarted")?;
        cluster.restart_main(&self.http).await?;
        self.processes = cluster.processes();
        Ok(())
    }

    /// The WebSocket URL for connection number `k`: connections are spread
    /// round robin over the processes that serve clients.
    pub(crate) fn ws_url(&self, k: usize) -> &str {
        &self.ws_urls[k % self.ws_urls.len()]
    }

    /// The username for `name` in this run (see `--user-prefix`).
    pub(crate) fn username(&self, name: &str) -> String {
        format!("{}{name}", self.user_prefix)
    }

    /// natterd's processes (none when running and no `--pid` was given) and the
    /// spawned nats-server.
    pub(crate) fn processes(&self) -> &Processes {
        &self.processes
    }

    /// The processes of all of `nodes`, as one set (their CPU and memory are
    /// summed, and listed per process).
    pub(crate) fn processes_of(nodes: &[Self]) -> Processes {
        Processes {
            natterd: nodes
                .iter()
                .flat_map(|n| n.processes.natterd.iter().cloned())
                .collect(),
            nats: nodes.iter().find_map(|n| n.processes.nats.clone()),
        }
    }

    /// Kills the spawned processes (a running node is left alone).
    pub(crate) fn stop(mut self) {
        self.cluster.take();
    }

    pub(crate) async fn create_user(&self, username: &str) -> Result<()> {
        let body = json!({ "username": username, "password": PASSWORD });
        self.admin_post("/admin/v1/users", body)
            .await
            .with_context(|| format!("create user {username}"))?;
        Ok(())
    }

    pub(crate) async fn create_device(&self, username: &str, device_name: &str) -> Result<Device> {
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
    pub(crate) async fn create_users(&self, usernames: &[String]) -> Result<()> {
        stream::iter(usernames)
            .map(|name| self.create_user(name))
            .buffer_unordered(PROVISION_CONCURRENCY)
            .try_collect()
            .await
    }

    /// Creates one device per entry of `owners` (a username; repeat it for more
    /// devices of one user), a few at a time; the devices come back in that order.
    pub(crate) async fn create_devices(&self, owners: &[&str]) -> Result<Vec<Device>> {
        stream::iter(owners.iter().enumerate())
            .map(|(k, owner)| async move { self.create_device(owner, &format!("loadgen-{k}")).await })
            .buffered(PROVISION_CONCURRENCY)
            .try_collect()
            .await
    }

    /// Creates `devices` devices for users named `stem0001`, `stem0002`, …,
    /// `per_user` devices each (the last user may have fewer); returns their
    /// tokens.
    pub(crate) async fn provision(
        &self,
        stem: &str,
        devices: usize,
        per_user: usize,
    ) -> Result<Vec<String>> {
        let users = devices.div_ceil(per_user);
        let names: Vec<String> = (1..=users)
            .map(|i| self.username(&format!("{stem}{i:04}")))
            .collect();
        self.create_users(&names).await?;
        let owners: Vec<&str> = (0..devices).map(|k| names[k / per_user].as_str()).collect();
        let created = self.create_devices(&owners).await?;
        Ok(created.into_iter().map(|d| d.token).collect())
    }

    /// GETs `path` of the admin API with the admin token; any status but 200
    /// is an error.
    pub(crate) async fn admin_get(&self, path: &str) -> Result<String> {
        let url = format!("{}{path}", self.admin_url);
        let response = self
            .http
            .get(&url)
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .with_context(|| format!("read the answer to GET {url}"))?;
        if status != reqwest::StatusCode::OK {
            bail!("GET {url}: {status}: {text}");
        }
        Ok(text)
    }

    /// POSTs JSON with the admin token; any status but 201 is an error.
    pub(crate) async fn admin_post(&self, path: &str, body: serde_json::Value) -> Result<String> {
        let url = format!("{}{path}", self.admin_url);
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

/// `ws://HOST/v1/ws` for the base URL `http://HOST`.
fn ws_url(base_url: &str) -> String {
    let rest = base_url.strip_prefix("http").unwrap_or(base_url);
    format!("ws{rest}/v1/ws")
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
    fn websocket_urls_follow_the_base_url() {
        assert_eq!(ws_url("http://127.0.0.1:7070"), "ws://127.0.0.1:7070/v1/ws");
        assert_eq!(ws_url("https://chat.example"), "wss://chat.example/v1/ws");
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
