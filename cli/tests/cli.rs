//! The `natter` CLI against a real node (run in-process on a free port).

use std::path::Path;
use std::process::{Command, Output};

use natter::config::{Config, ServeArgs};
use natter::core::Registration;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

struct Node {
    /// Clients and peers.
    url: String,
    /// The admin API, which the CLI talks to.
    admin_url: String,
    dir: tempfile::TempDir,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Node {
    async fn start() -> Self {
        Self::start_named("localhost").await
    }

    /// A node named `name` (users are `user@name`).
    async fn start_named(name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::resolve(ServeArgs {
            data: Some(dir.path().join("data")),
            name: Some(name.to_owned()),
            registration: Some(Registration::Invite),
            ..ServeArgs::default()
        })
        .unwrap();
        let free: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        let config = Config {
            listen: free,
            admin_listen: free,
            ..config
        };
        let listeners = natter::server::Listeners::bind(&config).unwrap();
        let url = format!("http://{}", listeners.public.local_addr().unwrap());
        let admin_url = format!("http://{}", listeners.admin.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                natter::server::run(config, listeners, shutdown)
                    .await
                    .unwrap();
            }
        });
        let node = Self {
            url,
            admin_url,
            dir,
            shutdown,
            task,
        };
        // The listener is bound already, so requests wait in its backlog until the
        // node serves; poll /readyz (every 20 ms, up to 15 s) for the go-ahead.
        let mut poll = tokio::time::interval(std::time::Duration::from_millis(20));
        for _ in 0..750 {
            poll.tick().await;
            let ready = reqwest::get(format!("{}/readyz", node.url)).await;
            if ready.is_ok_and(|r| r.status() == 200) {
                return node;
            }
        }
        panic!("node did not become ready");
    }

    fn data(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// Runs the CLI against this node (on the blocking pool: it is a child process).
    async fn cli(&self, args: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_natter"));
        command
            .arg("--node")
            .arg(&self.admin_url)
            .arg("--data")
            .arg(self.data())
            .args(args)
            .env_remove("NATTER_ADMIN_TOKEN");
        tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }
}

/// The JSON a `--json` command printed.
fn json_out(output: &Output) -> Value {
    serde_json::from_str(&stdout(output)).unwrap()
}

/// A command that must fail; its stderr.
fn refused(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "natter succeeded: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "natter failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

async fn login(url: &str, name: &str, password: &str) -> reqwest::StatusCode {
    reqwest::Client::new()
        .post(format!("{url}/v1/login"))
        .json(&json!({"username": name, "password": password}))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_invites_through_the_cli() {
    let node = Node::start().await;

    let added = stdout(
        &node
            .cli(&["user", "add", "alice", "--password", "password123"])
            .await,
    );
    assert!(added.contains("added alice@localhost"), "{added}");
    assert_eq!(login(&node.url, "alice", "password123").await, 200);

    // Without --password the node makes one and the CLI prints it.
    let added = stdout(&node.cli(&["user", "add", "bob"]).await);
    let password = added
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .expect("a generated password");
    assert_eq!(login(&node.url, "bob", password).await, 200);

    let listed = stdout(&node.cli(&["user", "list"]).await);
    assert!(
        listed.contains("alice@localhost") && listed.contains("bob@localhost"),
        "{listed}"
    );
    let json_list: Value =
        serde_json::from_str(&stdout(&node.cli(&["--json", "user", "list"]).await)).unwrap();
    assert_eq!(json_list["users"].as_array().unwrap().len(), 2);

    let invite: Value = serde_json::from_str(&stdout(
        &node
            .cli(&["--json", "invite", "create", "--uses", "1"])
            .await,
    ))
    .unwrap();
    let code = invite["code"].as_str().unwrap();
    let registered = reqwest::Client::new()
        .post(format!("{}/v1/register", node.url))
        .json(&json!({"username":"carol","password":"password123","invite":code}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 201);

    stdout(&node.cli(&["user", "disable", "bob"]).await);
    assert_eq!(login(&node.url, "bob", password).await, 403);
    stdout(&node.cli(&["user", "enable", "bob"]).await);
    assert_eq!(login(&node.url, "bob", password).await, 200);

    let status = stdout(&node.cli(&["status"]).await);
    assert!(status.contains("node localhost"), "{status}");

    // Errors are explained and fail the command.
    let taken = node
        .cli(&["user", "add", "alice", "--password", "password123"])
        .await;
    assert!(!taken.status.success());
    assert!(String::from_utf8_lossy(&taken.stderr).contains("username_taken"));
    let wrong = node.cli(&["--token", "nope", "user", "list"]).await;
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("unauthorized"));
    node.stop().await;
}

#[test]
fn a_missing_token_says_where_to_find_one() {
    let output = Command::new(env!("CARGO_BIN_EXE_natter"))
        .arg("--data")
        .arg(Path::new("/nonexistent/natter-data"))
        .args(["user", "list"])
        .env_remove("NATTER_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("NATTER_ADMIN_TOKEN"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_peers_through_the_cli() {
    let alpha = Node::start_named("alpha").await;
    let beta = Node::start_named("beta").await;

    let alpha_key = json_out(&alpha.cli(&["--json", "key", "show"]).await);
    let beta_key = json_out(&beta.cli(&["--json", "key", "show"]).await);
    assert_eq!(alpha_key["node"], "alpha");
    assert_eq!(beta_key["node"], "beta");
    for key in [&alpha_key, &beta_key] {
        let fingerprint = key["fingerprint"].as_str().unwrap();
        assert!(fingerprint.starts_with("ed25519-"), "{key}");
        assert!(key["publicKey"].as_str().is_some_and(|k| !k.is_empty()));
    }
    assert_ne!(alpha_key["publicKey"], beta_key["publicKey"]);
    let shown = stdout(&alpha.cli(&["key", "show"]).await);
    assert!(
        shown.contains(alpha_key["fingerprint"].as_str().unwrap()) && shown.contains(&alpha.url),
        "{shown}"
    );

    // A document of another node is refused, whatever --yes says.
    let wrong = refused(
        &alpha
            .cli(&["peer", "add", "gamma", &beta.url, "--fetch-key", "--yes"])
            .await,
    );
    assert!(wrong.contains("\"beta\", not gamma"), "{wrong}");
    // A fetched key needs a confirmation: no terminal (the test's stdin is
    // null) and no --yes is a refusal.
    let unconfirmed = refused(
        &alpha
            .cli(&["peer", "add", "beta", &beta.url, "--fetch-key"])
            .await,
    );
    assert!(unconfirmed.contains("--yes"), "{unconfirmed}");
    assert!(unconfirmed.contains(beta_key["fingerprint"].as_str().unwrap()));
    let none = json_out(&alpha.cli(&["--json", "peer", "list"]).await);
    assert_eq!(none["peers"], json!([]), "nothing was added: {none}");

    let added = stdout(
        &alpha
            .cli(&["peer", "add", "beta", &beta.url, "--fetch-key", "--yes"])
            .await,
    );
    assert!(
        added.contains(beta_key["fingerprint"].as_str().unwrap()),
        "{added}"
    );
    let added = json_out(
        &beta
            .cli(&[
                "--json",
                "peer",
                "add",
                "alpha",
                &alpha.url,
                alpha_key["publicKey"].as_str().unwrap(),
            ])
            .await,
    );
    assert_eq!(added["fingerprint"], alpha_key["fingerprint"]);

    for (node, peer, key) in [(&alpha, &beta, &beta_key), (&beta, &alpha, &alpha_key)] {
        let list = json_out(&node.cli(&["--json", "peer", "list"]).await);
        let peers = list["peers"].as_array().unwrap();
        assert_eq!(peers.len(), 1, "{list}");
        assert_eq!(peers[0]["node"], key["node"]);
        assert_eq!(peers[0]["url"], peer.url.as_str());
        assert_eq!(peers[0]["fingerprint"], key["fingerprint"]);
        let table = stdout(&node.cli(&["peer", "list"]).await);
        assert!(table.starts_with("NODE"), "{table}");
        assert!(
            table.contains(key["fingerprint"].as_str().unwrap()),
            "{table}"
        );
    }

    let outbox = json_out(&alpha.cli(&["--json", "peer", "outbox", "beta"]).await);
    assert_eq!(outbox["node"], "beta");
    assert_eq!(outbox["deadLetters"], json!([]));
    assert_eq!(outbox["replayed"], false);
    let replayed = stdout(&alpha.cli(&["peer", "outbox", "beta", "--replay"]).await);
    assert!(replayed.contains("beta: 0 dead letter(s)"), "{replayed}");

    let removed = stdout(&alpha.cli(&["peer", "remove", "beta"]).await);
    assert!(removed.contains("removed peer beta"), "{removed}");
    let list = json_out(&alpha.cli(&["--json", "peer", "list"]).await);
    assert_eq!(list["peers"], json!([]), "{list}");
    // The other side is untouched.
    let list = json_out(&beta.cli(&["--json", "peer", "list"]).await);
    assert_eq!(list["peers"].as_array().unwrap().len(), 1, "{list}");

    alpha.stop().await;
    beta.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotate_through_the_cli() {
    let node = Node::start_named("alpha").await;
    let before = json_out(&node.cli(&["--json", "key", "show"]).await);
    assert!(before.get("previousKeys").is_none(), "{before}");

    let rotated = json_out(&node.cli(&["key", "rotate", "--json"]).await);
    assert_eq!(rotated["node"], "alpha");
    assert_ne!(rotated["fingerprint"], before["fingerprint"]);
    assert_ne!(rotated["publicKey"], before["publicKey"]);
    let previous = rotated["previousKeys"].as_array().unwrap();
    assert_eq!(previous.len(), 1, "{rotated}");
    assert_eq!(previous[0]["keyId"], before["fingerprint"]);
    let until = previous[0]["notAfter"].as_str().unwrap();
    assert!(until.ends_with('Z'), "RFC 3339: {until}");

    // The node signs with and shows the new key; the file on disk is it too.
    let after = json_out(&node.cli(&["--json", "key", "show"]).await);
    assert_eq!(after["fingerprint"], rotated["fingerprint"]);
    assert!(node.data().join("node.key.previous").is_file());

    let text = stdout(&node.cli(&["key", "rotate"]).await);
    assert!(text.contains("new key ed25519-"), "{text}");
    assert!(
        text.contains(&format!(
            "the old key {} verifies until",
            rotated["fingerprint"].as_str().unwrap()
        )),
        "{text}"
    );
    node.stop().await;
}
