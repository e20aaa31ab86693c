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
        Self::start_in(tempfile::tempdir().unwrap(), name).await
    }

    /// A node on `dir/data` (made if missing: a restored backup, or new).
    async fn start_in(dir: tempfile::TempDir, name: &str) -> Self {
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

/// A user's login: its token and device id.
async fn login_device(url: &str, name: &str, password: &str) -> (String, String) {
    let response: Value = reqwest::Client::new()
        .post(format!("{url}/v1/login"))
        .json(&json!({"username": name, "password": password, "deviceName": "phone"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        response["token"].as_str().unwrap().to_owned(),
        response["deviceId"].as_str().unwrap().to_owned(),
    )
}

/// A protocol v1 client, just enough to see what the admin's commands do.
struct Ws {
    stream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next: u32,
}

const WAIT: std::time::Duration = std::time::Duration::from_secs(15);

impl Ws {
    async fn connect(url: &str, token: &str) -> Self {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = format!("{}/v1/ws", url.replacen("http", "ws", 1))
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let (stream, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        let mut ws = Self { stream, next: 0 };
        let ready = ws.frame().await.expect("ready");
        assert_eq!(ready["type"], "ready", "{ready}");
        ws
    }

    /// The next text frame; `None` once the socket closed (with its close code
    /// in `Err`).
    async fn next_message(&mut self) -> Result<Value, Option<u16>> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            let message = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("no frame in time");
            match message {
                Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text).unwrap()),
                Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| u16::from(f.code))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(None),
            }
        }
    }

    async fn frame(&mut self) -> Option<Value> {
        self.next_message().await.ok()
    }

    /// Sends a command and returns its answer (events in between are skipped).
    async fn command(&mut self, mut command: Value) -> Value {
        use futures_util::SinkExt;
        self.next += 1;
        let id = format!("r{}", self.next);
        command["id"] = json!(id);
        self.stream
            .send(tokio_tungstenite::tungstenite::Message::text(
                command.to_string(),
            ))
            .await
            .unwrap();
        loop {
            let frame = self.frame().await.expect("socket closed");
            if frame["id"] == json!(id) {
                return frame;
            }
        }
    }

    /// Waits for an event matching `want`.
    async fn event(&mut self, want: impl Fn(&Value) -> bool) -> Value {
        loop {
            let frame = self.frame().await.expect("socket closed");
            if frame.get("deliveryId").is_some() && want(&frame) {
                return frame;
            }
        }
    }

    /// Waits for the socket to close; its close code.
    async fn closed(&mut self) -> Option<u16> {
        loop {
            if let Err(code) = self.next_message().await {
                return code;
            }
        }
    }
}

/// Runs `natter` with `args` (no node needed) and returns its output.
fn natter(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_natter"))
        .args(args)
        .env_remove("NATTER_ADMIN_TOKEN")
        .env_remove("NATTER_NODE")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_devices_and_invites_through_the_cli() {
    let node = Node::start().await;
    for name in ["alice", "bob"] {
        stdout(
            &node
                .cli(&["user", "add", name, "--password", "password123"])
                .await,
        );
    }
    let (alice_token, _) = login_device(&node.url, "alice", "password123").await;
    let (bob_token, bob_device) = login_device(&node.url, "bob", "password123").await;
    let mut alice = Ws::connect(&node.url, &alice_token).await;
    let mut bob = Ws::connect(&node.url, &bob_token).await;
    let created = alice
        .command(json!({"type": "createChat", "participants": ["bob"], "name": "Study"}))
        .await;
    let chat = created["chatId"].as_str().unwrap().to_owned();
    for text in ["one", "two"] {
        let sent = alice
            .command(json!({"type": "sendMessage", "chatId": chat, "message": text}))
            .await;
        assert_eq!(sent["type"], "result", "{sent}");
    }
    // Bob's device has the chat's creation and two messages, unacked.
    bob.event(|e| e["message"] == "two").await;

    let shown = json_out(&node.cli(&["--json", "user", "show", "bob"]).await);
    assert_eq!(shown["userId"], "bob@localhost");
    assert_eq!(shown["devices"], 1);
    assert_eq!(shown["onlineDevices"], 1);
    assert_eq!(shown["chats"], 1);
    assert_eq!(shown["deleted"], false);
    let text = stdout(&node.cli(&["user", "show", "bob"]).await);
    assert!(text.contains("devices:  1 (1 online)"), "{text}");

    let devices = json_out(&node.cli(&["--json", "device", "list", "bob"]).await);
    let list = devices["devices"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{devices}");
    assert_eq!(list[0]["deviceId"], bob_device.as_str());
    assert_eq!(list[0]["name"], "phone");
    assert_eq!(list[0]["inboxDepth"], 3, "{devices}");
    assert!(list[0]["oldestPendingAgeMs"].as_i64().unwrap() >= 0);
    assert!(list[0]["online"].is_string(), "{devices}");
    let table = stdout(&node.cli(&["device", "list", "bob"]).await);
    assert!(table.starts_with("DEVICE"), "{table}");
    assert!(table.contains(&bob_device), "{table}");

    // An invite with two uses and a TTL; listed; revoked, it no longer registers.
    let invite = json_out(
        &node
            .cli(&["--json", "invite", "create", "--uses", "2", "--ttl", "1h"])
            .await,
    );
    let code = invite["code"].as_str().unwrap();
    let invites = json_out(&node.cli(&["--json", "invite", "list"]).await);
    let listed = invites["invites"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{invites}");
    assert_eq!(listed[0]["code"], code);
    assert_eq!(listed[0]["usesLeft"], 2);
    assert_eq!(listed[0]["expired"], false);
    let revoked = json_out(&node.cli(&["--json", "invite", "revoke", code]).await);
    assert_eq!(revoked["revoked"], true);
    let registered = reqwest::Client::new()
        .post(format!("{}/v1/register", node.url))
        .json(&json!({"username":"carol","password":"password123","invite":code}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 403);
    let again = node.cli(&["invite", "revoke", code]).await;
    assert_eq!(again.status.code(), Some(1));
    assert!(refused(&again).contains("not_found"));

    // Commands the node answers without a body print what they did.
    stdout(&node.cli(&["user", "add", "dave"]).await);
    let disabled = json_out(&node.cli(&["--json", "user", "disable", "dave"]).await);
    assert_eq!(disabled, json!({"user": "dave", "disabled": true}));
    let shown = json_out(&node.cli(&["--json", "user", "show", "dave"]).await);
    assert_eq!(shown["disabled"], true);
    let enabled = json_out(&node.cli(&["--json", "user", "enable", "dave"]).await);
    assert_eq!(enabled, json!({"user": "dave", "disabled": false}));

    // A new password: the old one stops working.
    let reset = json_out(
        &node
            .cli(&[
                "--json",
                "user",
                "reset-password",
                "alice",
                "--password",
                "another-secret",
            ])
            .await,
    );
    assert_eq!(reset["userId"], "alice@localhost");
    assert_eq!(login(&node.url, "alice", "password123").await, 401);
    assert_eq!(login(&node.url, "alice", "another-secret").await, 200);
    let generated = json_out(
        &node
            .cli(&["--json", "user", "reset-password", "alice"])
            .await,
    );
    let password = generated["password"].as_str().unwrap();
    assert_eq!(login(&node.url, "alice", password).await, 200);

    // Revoking bob's device closes its connection with 4401 and ends its token.
    let revoked = json_out(
        &node
            .cli(&["--json", "device", "revoke", "bob", &bob_device])
            .await,
    );
    assert_eq!(revoked["revoked"], true);
    assert_eq!(bob.closed().await, Some(4401));
    let devices = json_out(&node.cli(&["--json", "device", "list", "bob"]).await);
    assert_eq!(devices["devices"], json!([]));
    let gone = node.cli(&["device", "revoke", "bob", &bob_device]).await;
    assert_eq!(gone.status.code(), Some(1));

    // Deleting bob: he leaves the chat (alice is told), his messages stay,
    // his name stays taken, he cannot log in.
    let (bob_token, _) = login_device(&node.url, "bob", "password123").await;
    let mut bob = Ws::connect(&node.url, &bob_token).await;
    let sent = bob
        .command(json!({"type": "sendMessage", "chatId": chat, "message": "from bob"}))
        .await;
    assert_eq!(sent["type"], "result", "{sent}");
    let deleted = json_out(&node.cli(&["--json", "user", "delete", "bob"]).await);
    assert_eq!(deleted["userId"], "bob@localhost");
    assert_eq!(deleted["devicesRemoved"], 1);
    assert_eq!(deleted["chatsLeft"], 1);
    assert_eq!(bob.closed().await, Some(4401));
    let update = alice
        .event(|e| e["type"] == "chatUpdate" && e["reason"] == "removed")
        .await;
    assert_eq!(update["participants"], json!(["alice@localhost"]));
    let history = alice
        .command(json!({"type": "getHistory", "chatId": chat}))
        .await;
    let messages = history["messages"].as_array().unwrap();
    assert!(
        messages
            .iter()
            .any(|m| m["from"] == "bob@localhost" && m["message"] == "from bob"),
        "{history}"
    );
    assert_eq!(login(&node.url, "bob", "password123").await, 401);
    let shown = json_out(&node.cli(&["--json", "user", "show", "bob"]).await);
    assert_eq!(shown["deleted"], true);
    assert_eq!(shown["devices"], 0);
    assert_eq!(shown["chats"], 0);
    let users = json_out(&node.cli(&["--json", "user", "list"]).await);
    assert!(
        users["users"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["userId"] == "bob@localhost" && u["deleted"] == true),
        "{users}"
    );
    let taken = node
        .cli(&["user", "add", "bob", "--password", "password123"])
        .await;
    assert!(refused(&taken).contains("username_taken"));
    let twice = node.cli(&["user", "delete", "bob"]).await;
    assert!(refused(&twice).contains("unknown_user"));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chats_and_stats_through_the_cli() {
    let node = Node::start().await;
    for name in ["alice", "bob", "carol"] {
        stdout(
            &node
                .cli(&["user", "add", name, "--password", "password123"])
                .await,
        );
    }
    let (alice_token, _) = login_device(&node.url, "alice", "password123").await;
    let (bob_token, _) = login_device(&node.url, "bob", "password123").await;
    let mut alice = Ws::connect(&node.url, &alice_token).await;
    let mut bob = Ws::connect(&node.url, &bob_token).await;
    let created = alice
        .command(json!({"type": "createChat", "participants": ["bob"], "name": "Study"}))
        .await;
    let chat = created["chatId"].as_str().unwrap().to_owned();
    let other = alice
        .command(json!({"type": "createChat", "participants": ["carol"]}))
        .await;
    let other = other["chatId"].as_str().unwrap().to_owned();
    for text in ["one", "two", "three"] {
        alice
            .command(json!({"type": "sendMessage", "chatId": chat, "message": text}))
            .await;
    }

    let all = json_out(&node.cli(&["--json", "chat", "list"]).await);
    assert_eq!(all["chats"].as_array().unwrap().len(), 2, "{all}");
    assert!(all.get("nextAfter").is_none(), "{all}");
    let page = json_out(&node.cli(&["--json", "chat", "list", "--limit", "1"]).await);
    assert_eq!(page["chats"].as_array().unwrap().len(), 1, "{page}");
    let next = page["nextAfter"].as_str().unwrap();
    let rest = json_out(&node.cli(&["--json", "chat", "list", "--after", next]).await);
    assert_eq!(rest["chats"].as_array().unwrap().len(), 1, "{rest}");
    assert_ne!(rest["chats"][0]["chatId"], page["chats"][0]["chatId"]);
    let bobs = json_out(&node.cli(&["--json", "chat", "list", "--user", "bob"]).await);
    let bobs = bobs["chats"].as_array().unwrap();
    assert_eq!(bobs.len(), 1);
    assert_eq!(bobs[0]["chatId"], chat.as_str());
    assert_eq!(bobs[0]["name"], "Study");
    assert_eq!(bobs[0]["participants"], 2);
    assert_eq!(bobs[0]["lastSeq"], 3);
    let table = stdout(&node.cli(&["chat", "list"]).await);
    assert!(table.starts_with("CHAT"), "{table}");
    assert!(table.contains("Study"), "{table}");

    let shown = json_out(&node.cli(&["--json", "chat", "show", &chat]).await);
    assert_eq!(shown["name"], "Study");
    assert_eq!(shown["lastSeq"], 3);
    assert_eq!(shown["messageCount"], 3);
    assert_eq!(shown["creator"], "alice@localhost");
    assert_eq!(
        shown["participants"],
        json!(["alice@localhost", "bob@localhost"])
    );
    assert!(shown["home"].is_null());

    let stats = json_out(&node.cli(&["--json", "stats"]).await);
    assert_eq!(stats["users"], 3, "{stats}");
    assert_eq!(stats["chats"], 2);
    assert_eq!(stats["onlineDevices"], 2);
    assert_eq!(stats["messagesLastMinute"], 3, "{stats}");
    assert!(stats["messagesPerSecond"].as_f64().unwrap() > 0.0);
    assert!(stats["diskBytes"].as_u64().unwrap() > 0);
    assert_eq!(stats["inboxScanComplete"], true);
    // Bob has acked nothing: his device is the deepest (creation + 3 messages).
    let deepest = &stats["deepestInboxes"][0];
    assert_eq!(deepest["userId"], "bob@localhost", "{stats}");
    assert_eq!(deepest["depth"], 4, "{stats}");
    let text = stdout(&node.cli(&["stats"]).await);
    assert!(text.contains("deepest inboxes"), "{text}");

    // Deleting the chat: both participants are told, and it is gone.
    let deleted = json_out(&node.cli(&["--json", "chat", "delete", &chat]).await);
    assert_eq!(deleted["chatId"], chat.as_str());
    assert_eq!(deleted["participants"], 2);
    assert_eq!(deleted["messagesRemoved"], 3);
    for ws in [&mut alice, &mut bob] {
        let update = ws
            .event(|e| e["type"] == "chatUpdate" && e["reason"] == "deleted")
            .await;
        assert_eq!(update["chatId"], chat.as_str());
        assert_eq!(update["participants"], json!([]));
        assert_eq!(update["name"], "Study");
    }
    let history = alice
        .command(json!({"type": "getHistory", "chatId": chat}))
        .await;
    assert_eq!(history["code"], "unknown_chat", "{history}");
    let sent = bob
        .command(json!({"type": "sendMessage", "chatId": chat, "message": "late"}))
        .await;
    assert_eq!(sent["code"], "unknown_chat", "{sent}");
    let missing = node.cli(&["--json", "chat", "show", &chat]).await;
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(json_out_any(&missing)["error"]["code"], "unknown_chat");
    let left = json_out(&node.cli(&["--json", "chat", "list"]).await);
    let left = left["chats"].as_array().unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["chatId"], other.as_str());
    node.stop().await;
}

/// The JSON a command printed, whether it succeeded or not.
fn json_out_any(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_say_what_went_wrong() {
    let node = Node::start().await;
    // Wrong token: 4, explained, and with --json an error object.
    let wrong = node.cli(&["--token", "nope", "--json", "stats"]).await;
    assert_eq!(wrong.status.code(), Some(4));
    assert_eq!(json_out_any(&wrong)["error"]["code"], "unauthorized");
    assert_eq!(json_out_any(&wrong)["error"]["exitCode"], 4);
    assert!(refused(&wrong).contains("refused the admin token"));
    // No token at all: 4 too.
    let none = natter(&["--data", "/nonexistent/natter-data", "user", "list"]);
    assert_eq!(none.status.code(), Some(4));
    // A refusal by the node: 1.
    let unknown = node.cli(&["user", "show", "nobody"]).await;
    assert_eq!(unknown.status.code(), Some(1));
    assert!(refused(&unknown).contains("unknown_user"));
    // Nothing listening: 3.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let node_url = format!("http://127.0.0.1:{port}");
    let away = natter(&["--node", &node_url, "--token", "t", "--json", "status"]);
    assert_eq!(away.status.code(), Some(3));
    assert_eq!(json_out_any(&away)["error"]["code"], "unreachable");
    let message = String::from_utf8_lossy(&away.stderr).into_owned();
    assert!(message.contains("cannot reach the node"), "{message}");
    // Bad usage: 2, whatever the node.
    for args in [
        &["user"][..],
        &["bogus"],
        &["invite", "create", "--ttl", "soon"],
        &["invite", "create", "--uses", "0"],
        &["chat", "list", "--limit", "0"],
        &["completions", "tcsh"],
    ] {
        let output = natter(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {output:?}");
    }
    node.stop().await;
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let output = natter(&["completions", shell]);
        let script = stdout(&output);
        assert!(script.contains("natter"), "{shell}");
        // Subcommands are in it.
        assert!(script.contains("reset-password"), "{shell}: {script}");
    }
}

/// `natter backup create` while the node serves, `--json` parsed; the
/// `.sha256` file; `verify` of the file, and of a truncated and a
/// bit-flipped copy (exit 1); no overwrite; wrong token 4, no node 3; a
/// node on the restored folder knows the user and its password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_through_the_cli() {
    let node = Node::start().await;
    stdout(
        &node
            .cli(&["user", "add", "alice", "--password", "password123"])
            .await,
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.backup");
    let file_arg = file.display().to_string();
    let made = json_out(&node.cli(&["--json", "backup", "create", &file_arg]).await);
    assert_eq!(made["file"], file_arg);
    assert_eq!(made["node"], "localhost");
    assert_eq!(made["withMedia"], false);
    assert_eq!(made["storeFormat"], 2);
    assert!(made["counts"]["users"].as_u64().unwrap() >= 1, "{made}");
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(made["bytes"], bytes.len());
    assert!(!dir.path().join("node.backup.partial").exists());
    let sha = made["sha256"].as_str().unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("node.backup.sha256")).unwrap(),
        format!("{sha}  node.backup\n")
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let checked = sha256sum_check(dir.path());
    assert!(checked.status.success(), "{checked:?}");

    // Text output, and verify without a node (no token either).
    let verified = natter(&["--json", "backup", "verify", &file_arg]);
    assert_eq!(json_out(&verified)["sha256"], sha);
    let again = node.cli(&["backup", "create", &file_arg]).await;
    assert_eq!(again.status.code(), Some(1));
    assert!(refused(&again).contains("exists"));

    let damaged = dir.path().join("damaged.backup");
    std::fs::write(&damaged, &bytes[..bytes.len() - 2000]).unwrap();
    let truncated = natter(&["backup", "verify", &damaged.display().to_string()]);
    assert_eq!(truncated.status.code(), Some(1));
    assert!(refused(&truncated).contains("not a valid backup"));
    let mut flipped = bytes.clone();
    // A bit of the first store chunk's data (tar's padding is not checked).
    let name = b"store/000001";
    let header = flipped.windows(name.len()).position(|w| w == name).unwrap();
    flipped[header + 512 + 20] ^= 0x10;
    std::fs::write(&damaged, &flipped).unwrap();
    let bad = natter(&["backup", "verify", &damaged.display().to_string()]);
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");

    // A file that no longer matches its .sha256 fails too.
    let listed = dir.path().join("node.backup.sha256");
    std::fs::write(&listed, format!("{}  node.backup\n", "0".repeat(64))).unwrap();
    let mismatch = natter(&["backup", "verify", &file_arg]);
    assert_eq!(mismatch.status.code(), Some(1));
    assert!(refused(&mismatch).contains("differs"));

    let other = dir.path().join("other.backup").display().to_string();
    let wrong = node
        .cli(&["--token", "nope", "backup", "create", &other])
        .await;
    assert_eq!(wrong.status.code(), Some(4));
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let away = natter(&[
        "--node",
        &format!("http://127.0.0.1:{port}"),
        "--token",
        "t",
        "backup",
        "create",
        &other,
    ]);
    assert_eq!(away.status.code(), Some(3));
    assert!(!dir.path().join("other.backup").exists());
    assert!(!dir.path().join("other.backup.partial").exists());

    // The restored folder serves the same user.
    // Into an existing empty folder (a mount point, say): its entries move up.
    let restored = tempfile::tempdir().unwrap();
    std::fs::create_dir(restored.path().join("data")).unwrap();
    natter::backup::restore(&file, &restored.path().join("data")).unwrap();
    let entries: Vec<String> = std::fs::read_dir(restored.path().join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !entries.iter().any(|e| e.contains("restoring")),
        "{entries:?}"
    );
    let copy = Node::start_in(restored, "localhost").await;
    assert_eq!(login(&copy.url, "alice", "password123").await, 200);
    copy.stop().await;
    node.stop().await;
}

fn sha256sum_check(dir: &Path) -> Output {
    Command::new("sha256sum")
        .args(["-c", "node.backup.sha256"])
        .current_dir(dir)
        .output()
        .unwrap()
}

/// A fake admin API that answers one request with `response` (raw HTTP/1.1)
/// and closes the connection; its base URL.
async fn answer_once(response: &'static [u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = vec![0; 4096];
        let _ = socket.read(&mut request).await;
        socket.write_all(response).await.unwrap();
        socket.shutdown().await.unwrap();
    });
    url
}

/// A stream cut in the middle, or one that ends but is no archive, leaves
/// neither FILE nor FILE.partial, and fails with exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_backup_stream_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let cut: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-tar\r\ntransfer-encoding: chunked\r\nx-natter-backup-estimate: 100000\r\n\r\n400\r\nmanifest";
    let garbage: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nnot a tar";
    for (response, says) in [(cut, "cut"), (garbage, "not valid")] {
        let url = answer_once(response).await;
        let file = dir.path().join("b.backup");
        let file_arg = file.display().to_string();
        let output = tokio::task::spawn_blocking(move || {
            natter(&[
                "--node", &url, "--token", "t", "backup", "create", &file_arg,
            ])
        })
        .await
        .unwrap();
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        assert!(refused(&output).contains(says), "{output:?}");
        assert!(!file.exists());
        assert!(!dir.path().join("b.backup.partial").exists());
        assert!(!dir.path().join("b.backup.sha256").exists());
    }
}
