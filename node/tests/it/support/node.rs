//! A natter node for tests, in one of three topologies, each made of real
//! processes on free ports with their own folders:
//! - `Embedded`: one `natterd serve`, no NATS;
//! - `Nats`: one `natterd serve --nats` on a real `nats-server` (deliveries over
//!   JetStream);
//! - `Split`: `nats-server`, `natterd core` and two `natterd gateway`s. Clients
//!   are spread over the gateways (round robin), admin calls go to the core.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use super::nats::NatsServer;
use super::{DEADLINE, WsClient};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Topology {
    Embedded,
    Nats,
    Split,
}

/// One device of one user: what a login returns.
#[derive(Clone, Debug)]
pub(crate) struct Creds {
    pub token: String,
    pub device_id: String,
    pub user_id: String,
}

/// Settings tests commonly change; the rest are the node's defaults. The
/// per-address login rate is lifted (tests log many users in from one
/// address); `[logins]` stays the last table, so that [`with_logins`] can
/// replace it.
pub(crate) const BASE_CONFIG: &str = r#"
registration = "open"
[testing]
adjustable_clock = true
[limits]
send_rate = 100000.0
send_burst = 100000
user_send_rate = 100000.0
user_send_burst = 100000
user_chat_rate = 100000.0
user_chat_burst = 100000
user_upload_rate = 100000.0
user_upload_burst = 100000
user_read_rate = 100000.0
user_read_burst = 100000
[nats]
request_timeout = "2s"
heartbeat = "1s"
[logins]
attempt_rate = 100000.0
attempt_burst = 100000
"#;

/// [`BASE_CONFIG`] with these `[logins]` settings instead of its own.
pub(crate) fn with_logins(logins: &str) -> String {
    let (base, _) = BASE_CONFIG
        .split_once("[logins]")
        .expect("BASE_CONFIG ends with [logins]");
    format!("{base}[logins]\n{logins}\n")
}

/// Copies the folder `from` to `to` (made), recursively.
pub(crate) fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("make folder");
    for entry in std::fs::read_dir(from).expect("read folder") {
        let entry = entry.expect("folder entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// One natterd process.
pub(crate) struct Proc {
    args: Vec<String>,
    /// Environment of its own (NATS credentials).
    env: Vec<(String, String)>,
    child: Option<Child>,
    pub url: String,
    /// Its admin listener: the admin API and `/metrics`.
    pub admin_url: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn new(args: Vec<String>, env: Vec<(String, String)>) -> Self {
        Self {
            args,
            env,
            child: None,
            url: String::new(),
            admin_url: String::new(),
            log: Arc::default(),
        }
    }

    async fn spawn(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_natterd"))
            .args(&self.args)
            .envs(self.env.iter().cloned())
            .env_remove("RUST_LOG")
            .env("NATTER_LOG_FORMAT", "human")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start natterd");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let log = self.log.clone();
        // Drains natterd's log so it never blocks on a full pipe, and spots the
        // addresses it listens on (clients, admin).
        std::thread::spawn(move || {
            let field = |line: &str, name: &str| {
                let value = line.split(&format!(" {name}=")).nth(1)?;
                Some(value.split_whitespace().next().unwrap_or("").to_owned())
            };
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening")
                    && let (Some(url), Some(admin)) = (field(&line, "url"), field(&line, "admin"))
                {
                    let _ = tx.send((url, admin));
                }
                log.lock().unwrap().push(line);
            }
        });
        let url = tokio::task::spawn_blocking(move || rx.recv_timeout(DEADLINE))
            .await
            .unwrap();
        match url {
            Ok((url, admin)) => (self.url, self.admin_url) = (url, admin),
            Err(_) => panic!(
                "natterd {:?} did not start:\n{}",
                self.args,
                self.log_text()
            ),
        }
        self.child = Some(child);
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill natterd");
            child.wait().expect("reap natterd");
        }
    }

    async fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
        let waited =
            tokio::time::timeout(DEADLINE, tokio::task::spawn_blocking(move || child.wait()))
                .await
                .expect("natterd did not exit after SIGTERM");
        waited.unwrap().expect("wait for natterd")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) struct TestNode {
    /// The process with the store: all-in-one or core.
    main: Proc,
    gateways: Vec<Proc>,
    pub nats: Option<NatsServer>,
    /// Where clients connect (the all-in-one process, or the first gateway).
    pub url: String,
    pub data: PathBuf,
    pub admin_token: String,
    next_gateway: AtomicUsize,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl TestNode {
    pub(crate) async fn start(topology: Topology) -> Self {
        Self::with_config(topology, BASE_CONFIG).await
    }

    /// Starts a node with `config` as the TOML file of every natterd process.
    pub(crate) async fn with_config(topology: Topology, config: &str) -> Self {
        let nats = (topology != Topology::Embedded).then(NatsServer::start);
        Self::with_nats(topology, config, nats).await
    }

    /// Starts a node on `nats` (none for `Embedded`). On a server with the
    /// shipped accounts, every process logs in as its user (`core`, `gw1`,
    /// `gw2`) through `NATTER_NATS_USER`/`NATTER_NATS_PASSWORD`, and `config`
    /// must name the node the accounts are written for.
    pub(crate) async fn with_nats(
        topology: Topology,
        config: &str,
        nats: Option<NatsServer>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::in_dir(dir, topology, config, nats, &[]).await
    }

    /// [`Self::with_nats`] with `env` in every natterd process's environment
    /// (as a deployment gives it, e.g. examples/compose's S3 credentials).
    pub(crate) async fn with_env(
        topology: Topology,
        config: &str,
        nats: Option<NatsServer>,
        env: &[(String, String)],
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::in_dir(dir, topology, config, nats, env).await
    }

    /// Starts an all-in-one node (no NATS) on a copy of the data folder
    /// `data` (a fixture written by an earlier natterd).
    pub(crate) async fn on_copy_of(data: &std::path::Path, config: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        copy_dir(data, &dir.path().join("data"));
        Self::in_dir(dir, Topology::Embedded, config, None, &[]).await
    }

    /// Starts a node in `topology` (on a fresh nats-server unless embedded)
    /// on the data folder `dir/data` made beforehand (a restored backup).
    pub(crate) async fn on_restored(
        dir: tempfile::TempDir,
        topology: Topology,
        config: &str,
    ) -> Self {
        let nats = (topology != Topology::Embedded).then(NatsServer::start);
        Self::in_dir(dir, topology, config, nats, &[]).await
    }

    /// Starts a node whose data folder is `dir/data` (made if missing).
    async fn in_dir(
        dir: tempfile::TempDir,
        topology: Topology,
        config: &str,
        nats: Option<NatsServer>,
        env: &[(String, String)],
    ) -> Self {
        let data = dir.path().join("data");
        let config_path = dir.path().join("natter.toml");
        std::fs::write(&config_path, config).expect("write config");
        let login = |user: &str| -> Vec<(String, String)> {
            let mut vars = env.to_vec();
            if nats.as_ref().is_some_and(NatsServer::has_accounts) {
                vars.push(("NATTER_NATS_USER".to_owned(), user.to_owned()));
                vars.push((
                    "NATTER_NATS_PASSWORD".to_owned(),
                    super::nats::password(user),
                ));
            }
            vars
        };
        let common = |role: &str| {
            let mut args = vec![
                role.to_owned(),
                "--config".to_owned(),
                config_path.display().to_string(),
                "--listen".to_owned(),
                "127.0.0.1:0".to_owned(),
                "--admin-listen".to_owned(),
                "127.0.0.1:0".to_owned(),
            ];
            if let Some(nats) = &nats {
                args.push("--nats".to_owned());
                args.push(nats.url());
            }
            args
        };
        let main_role = if topology == Topology::Split {
            "core"
        } else {
            "serve"
        };
        let mut main_args = common(main_role);
        main_args.extend(["--data".to_owned(), data.display().to_string()]);
        main_args.extend(["--gateway-id".to_owned(), "main".to_owned()]);
        let mut main = Proc::new(main_args, login("core"));
        main.spawn().await;
        let mut gateways = Vec::new();
        if topology == Topology::Split {
            for i in 1..=2 {
                let mut args = common("gateway");
                args.extend(["--gateway-id".to_owned(), format!("gw{i}")]);
                let mut gateway = Proc::new(args, login(&format!("gw{i}")));
                gateway.spawn().await;
                gateways.push(gateway);
            }
        }
        let url = gateways.first().map_or(main.url.clone(), |g| g.url.clone());
        let admin_token = std::fs::read_to_string(data.join("admin.token"))
            .expect("admin token file")
            .trim()
            .to_owned();
        let node = Self {
            main,
            gateways,
            nats,
            url,
            data,
            admin_token,
            next_gateway: AtomicUsize::new(0),
            _dir: dir,
            http: reqwest::Client::new(),
        };
        node.wait_ready().await;
        node
    }

    /// Waits until every process says it is ready (NATS connected, streams made).
    async fn wait_ready(&self) {
        let urls: Vec<String> = std::iter::once(&self.main)
            .chain(&self.gateways)
            .map(|p| p.url.clone())
            .collect();
        for url in urls {
            let http = self.http.clone();
            super::eventually("natterd to be ready", || {
                let http = http.clone();
                let url = url.clone();
                async move {
                    let r = http.get(format!("{url}/readyz")).send().await.ok()?;
                    (r.status() == 200).then_some(())
                }
            })
            .await;
        }
    }

    /// The client URL of the next gateway (round robin), or of the one process.
    pub(crate) fn client_url(&self) -> String {
        if self.gateways.is_empty() {
            return self.main.url.clone();
        }
        let i = self.next_gateway.fetch_add(1, Ordering::Relaxed);
        self.gateways[i % self.gateways.len()].url.clone()
    }

    pub(crate) fn ws_url(&self) -> String {
        format!("{}/v1/ws", self.client_url().replacen("http", "ws", 1))
    }

    /// The WebSocket URL of a given gateway (split topology), or of the node.
    pub(crate) fn ws_url_of(&self, gateway: usize) -> String {
        let url = self
            .gateways
            .get(gateway)
            .map_or(self.main.url.clone(), |g| g.url.clone());
        format!("{}/v1/ws", url.replacen("http", "ws", 1))
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// A sample of the Prometheus `/metrics` at `base` (a process's admin URL:
    /// [`Self::main_admin_url`], [`Self::admin_url_of`]), by the start of its
    /// line (`name` or `name{labels}`).
    pub(crate) async fn metric(&self, base: &str, name: &str) -> Option<f64> {
        let url = format!("{base}/metrics");
        let text = self.http.get(url).send().await.ok()?.text().await.ok()?;
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// Everything every process of the node has logged so far.
    pub(crate) fn logs(&self) -> String {
        std::iter::once(&self.main)
            .chain(&self.gateways)
            .map(Proc::log_text)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The base URL of the process that owns the store (and speaks federation).
    pub(crate) fn main_url(&self) -> &str {
        &self.main.url
    }

    /// The admin listener of the process that owns the store.
    pub(crate) fn main_admin_url(&self) -> &str {
        &self.main.admin_url
    }

    /// The admin listener of a given gateway (split topology), or of the node.
    pub(crate) fn admin_url_of(&self, gateway: usize) -> &str {
        self.gateways
            .get(gateway)
            .map_or(&self.main.admin_url, |g| &g.admin_url)
    }

    /// Makes `other` a peer of this node, with the key its well-known document
    /// names (as `natter peer add NODE URL --fetch-key --yes` does).
    pub(crate) async fn add_peer(&self, other: &TestNode) {
        let known: Value = self
            .http
            .get(format!("{}/.well-known/natter/node", other.main_url()))
            .send()
            .await
            .expect("well-known request")
            .json()
            .await
            .expect("well-known JSON");
        let body = json!({
            "node": known["node"],
            "url": other.main_url(),
            "publicKey": known["keys"][0]["publicKey"],
        });
        let (status, answer) = self
            .admin(reqwest::Method::POST, "/peers", Some(body))
            .await;
        assert_eq!(status, 201, "{answer}");
    }

    /// `kill -9` of the process with the store (all-in-one or core).
    pub(crate) fn kill9(&mut self) {
        self.main.kill9();
    }

    /// `kill -9` of gateway `i` (split topology).
    pub(crate) fn kill9_gateway(&mut self, i: usize) {
        self.gateways[i].kill9();
    }

    /// SIGTERM to the process clients are connected to (the all-in-one
    /// process, or every gateway), then waits for its exit status.
    pub(crate) async fn terminate_clients_side(&mut self) -> Vec<ExitStatus> {
        if self.gateways.is_empty() {
            vec![self.main.terminate().await]
        } else {
            let mut statuses = Vec::new();
            for gateway in &mut self.gateways {
                statuses.push(gateway.terminate().await);
            }
            statuses
        }
    }

    /// Starts the stopped store-owning process again on the port it had (peers
    /// know a node by its URL).
    pub(crate) async fn restart_same_port(&mut self) {
        let addr = self.main.url.trim_start_matches("http://").to_owned();
        if let Some(listen) = self.main.args.iter().position(|a| a == "--listen") {
            self.main.args[listen + 1] = addr;
        }
        self.restart().await;
    }

    /// Starts every stopped process again (same data, new ports).
    pub(crate) async fn restart(&mut self) {
        if self.main.child.is_none() {
            self.main.spawn().await;
        }
        for gateway in &mut self.gateways {
            if gateway.child.is_none() {
                gateway.spawn().await;
            }
        }
        self.url = self
            .gateways
            .first()
            .map_or(self.main.url.clone(), |g| g.url.clone());
        self.wait_ready().await;
    }

    // ------------------------------------------------------------ HTTP

    pub(crate) async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.client_url()))
            .json(&body)
            .send()
            .await
            .expect("http request");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub(crate) async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}/admin/v1{path}", self.main.admin_url))
            .bearer_auth(&self.admin_token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("admin request");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Creates a user (through the admin API) with password `password123`.
    pub(crate) async fn add_user(&self, name: &str) -> String {
        let (status, body) = self
            .admin(
                reqwest::Method::POST,
                "/users",
                Some(json!({"username": name, "password": "password123"})),
            )
            .await;
        assert_eq!(status, 201, "add user {name}: {body}");
        body["userId"].as_str().unwrap().to_owned()
    }

    /// Logs in: a new device of `name`.
    pub(crate) async fn login(&self, name: &str) -> Creds {
        let (status, body) = self
            .post(
                "/v1/login",
                json!({"username": name, "password": "password123", "deviceName": "test"}),
            )
            .await;
        assert_eq!(status, 200, "login {name}: {body}");
        Creds {
            token: body["token"].as_str().unwrap().to_owned(),
            device_id: body["deviceId"].as_str().unwrap().to_owned(),
            user_id: body["userId"].as_str().unwrap().to_owned(),
        }
    }

    /// A new user with one device.
    pub(crate) async fn user(&self, name: &str) -> Creds {
        self.add_user(name).await;
        self.login(name).await
    }

    pub(crate) async fn connect(&self, creds: &Creds) -> WsClient {
        WsClient::connect(&self.ws_url(), &creds.token).await
    }

    /// Moves the node's clock forward.
    pub(crate) async fn advance_clock(&self, by: Duration) {
        let (status, body) = self
            .admin(
                reqwest::Method::POST,
                "/clock",
                Some(json!({"advanceMs": by.as_millis() as i64})),
            )
            .await;
        assert_eq!(status, 200, "advance clock: {body}");
    }

    pub(crate) async fn sweep(&self) -> Value {
        let (status, body) = self.admin(reqwest::Method::POST, "/sweep", None).await;
        assert_eq!(status, 200, "sweep: {body}");
        body
    }

    /// Devices online, as the node (the core) sees them.
    pub(crate) async fn online(&self) -> u64 {
        let (_, status) = self.admin(reqwest::Method::GET, "/status", None).await;
        status["onlineDevices"].as_u64().unwrap()
    }
}

/// Runs an `async fn(Topology)` test in every topology, as three tests.
#[macro_export]
macro_rules! in_every_topology {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use $crate::support::node::Topology;

                #[tokio::test]
                async fn embedded() {
                    super::$name(Topology::Embedded).await
                }

                #[tokio::test]
                async fn nats() {
                    super::$name(Topology::Nats).await
                }

                #[tokio::test]
                async fn split() {
                    super::$name(Topology::Split).await
                }
            }
        )*
    };
}
