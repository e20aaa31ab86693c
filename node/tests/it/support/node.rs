//! A `natterd` process on a free port with its own data folder.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use super::{DEADLINE, WsClient};

/// One device of one user: what a login returns.
#[derive(Clone, Debug)]
pub struct Creds {
    pub token: String,
    pub device_id: String,
    pub user_id: String,
}

pub struct TestNode {
    child: Option<Child>,
    pub url: String,
    pub data: PathBuf,
    config: PathBuf,
    pub admin_token: String,
    log: Arc<Mutex<Vec<String>>>,
    _dir: Option<tempfile::TempDir>,
    http: reqwest::Client,
}

/// Settings tests commonly change; the rest are the node's defaults.
pub const BASE_CONFIG: &str = r#"
registration = "open"
[testing]
adjustable_clock = true
[limits]
send_rate = 100000.0
send_burst = 100000
"#;

impl TestNode {
    pub async fn start() -> Self {
        Self::with_config(BASE_CONFIG).await
    }

    /// Starts a node with `config` as its TOML file.
    pub async fn with_config(config: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let config_path = dir.path().join("natter.toml");
        std::fs::write(&config_path, config).expect("write config");
        let mut node = Self {
            child: None,
            url: String::new(),
            data,
            config: config_path,
            admin_token: String::new(),
            log: Arc::default(),
            _dir: Some(dir),
            http: reqwest::Client::new(),
        };
        node.spawn().await;
        node
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_natterd"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config)
            .arg("--data")
            .arg(&self.data)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .env_remove("RUST_LOG")
            .env("NATTER_LOG_FORMAT", "human")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    async fn spawn(&mut self) {
        let mut child = self.command().spawn().expect("start natterd");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let log = self.log.clone();
        // Drains natterd's log so it never blocks on a full pipe, and spots the
        // address it listens on.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening")
                    && let Some(url) = line.split("url=").nth(1)
                {
                    let _ = tx.send(url.split_whitespace().next().unwrap_or("").to_owned());
                }
                log.lock().unwrap().push(line);
            }
        });
        let url = tokio::task::spawn_blocking(move || rx.recv_timeout(DEADLINE))
            .await
            .unwrap();
        let url = match url {
            Ok(url) => url,
            Err(_) => panic!("natterd did not start:\n{}", self.log_text()),
        };
        self.child = Some(child);
        self.url = url;
        self.admin_token = std::fs::read_to_string(self.data.join("admin.token"))
            .expect("admin token file")
            .trim()
            .to_owned();
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn ws_url(&self) -> String {
        format!("{}/v1/ws", self.url.replacen("http", "ws", 1))
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `kill -9`: no shutdown, no flush.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill natterd");
            child.wait().expect("reap natterd");
        }
    }

    /// SIGTERM, then waits for the exit status.
    pub async fn terminate(&mut self) -> ExitStatus {
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

    /// Starts natterd again on the same data folder (a new port).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the node first");
        self.spawn().await;
    }

    // ------------------------------------------------------------ HTTP

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .expect("http request");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}/admin/v1{path}", self.url))
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
    pub async fn add_user(&self, name: &str) -> String {
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
    pub async fn login(&self, name: &str) -> Creds {
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
    pub async fn user(&self, name: &str) -> Creds {
        self.add_user(name).await;
        self.login(name).await
    }

    pub async fn connect(&self, creds: &Creds) -> WsClient {
        WsClient::connect(&self.ws_url(), &creds.token).await
    }

    /// Moves the node's clock forward.
    pub async fn advance_clock(&self, by: Duration) {
        let (status, body) = self
            .admin(
                reqwest::Method::POST,
                "/clock",
                Some(json!({"advanceMs": by.as_millis() as i64})),
            )
            .await;
        assert_eq!(status, 200, "advance clock: {body}");
    }

    pub async fn sweep(&self) -> Value {
        let (status, body) = self.admin(reqwest::Method::POST, "/sweep", None).await;
        assert_eq!(status, 200, "sweep: {body}");
        body
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
