//! Upgrades: a data folder written by an earlier store format opens with
//! this natterd, and a folder of a newer format is refused.
//!
//! `tests/fixtures/store-v1/` is a data folder written by store format 1
//! (users, a chat, history, read positions, pending inboxes), made by
//! `write_store_v1_fixture` below:
//!
//! ```sh
//! NATTER_WRITE_FIXTURE=1 cargo test -p natter --test it -- --ignored --exact upgrade::write_store_v1_fixture
//! ```
//!
//! Never rewrite it when the format changes: it stands for the folders
//! operators have, which every later natterd must open (migrating them).
//! Add a `store-v<N>` fixture for each new format instead.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::support::node::{BASE_CONFIG, copy_dir};
use crate::support::{TestNode, WsClient};

pub(crate) fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v1")
}

/// The fixture's node: its name is in every userId it stored.
pub(crate) fn fixture_config() -> String {
    format!("name = \"fixture.example\"\n{BASE_CONFIG}")
}

/// What the fixture holds that a test checks after opening it.
const TOKENS: &str = "tokens.json";

#[tokio::test]
#[ignore = "writes tests/fixtures/store-v1; run by hand (see the module doc)"]
async fn write_store_v1_fixture() {
    assert!(
        std::env::var_os("NATTER_WRITE_FIXTURE").is_some(),
        "set NATTER_WRITE_FIXTURE=1 to rewrite the fixture"
    );
    let mut node =
        TestNode::with_config(crate::support::node::Topology::Embedded, &fixture_config()).await;
    let alice = node.user("alice").await;
    let bob = node.user("bob").await;
    let carol = node.user("carol").await;
    let mut a = node.connect(&alice).await;
    let chat = a
        .ok(json!({"type":"createChat","name":"fixture","participants":[bob.user_id, carol.user_id]}))
        .await["chatId"]
        .clone();
    for text in ["one", "two", "three"] {
        a.ok(json!({"type":"sendMessage","chatId":chat,"message":text}))
            .await;
    }
    // Bob takes everything and has read up to "two"; Carol never connects.
    let mut b = node.connect(&bob).await;
    let events = b.drain().await;
    b.ack_events(&events).await;
    b.ok(json!({"type":"markRead","chatId":chat,"seq":2})).await;
    a.close().await;
    b.close().await;
    let statuses = node.terminate_clients_side().await;
    assert!(statuses.iter().all(|s| s.success()));
    let target = fixture();
    let _ = std::fs::remove_dir_all(&target);
    copy_dir(&node.data, &target);
    trim_journals(&target.join("store"));
    let tokens =
        json!({"chat": chat, "alice": alice.token, "bob": bob.token, "carol": carol.token});
    std::fs::write(target.join(TOKENS), format!("{tokens:#}\n")).unwrap();
}

/// fjall preallocates each journal (64 MiB, sparse) and cuts it to its last
/// valid batch when it recovers; the fixture keeps what was written and 1 KiB
/// of the zeros after it, so it stays small in the repository.
fn trim_journals(store: &Path) {
    for entry in std::fs::read_dir(store).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jnl") {
            let bytes = std::fs::read(&path).unwrap();
            let used = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
            let keep = (used + 1024).min(bytes.len());
            std::fs::write(&path, &bytes[..keep]).unwrap();
        }
    }
}

fn fixture_tokens() -> Value {
    let text = std::fs::read_to_string(fixture().join(TOKENS)).expect("fixture tokens");
    serde_json::from_str(&text).unwrap()
}

fn texts(history: &Value) -> Vec<&str> {
    history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_store_v1_folder_opens_with_its_users_history_and_inboxes() {
    let node = TestNode::on_copy_of(&fixture(), &fixture_config()).await;
    let tokens = fixture_tokens();
    let chat = tokens["chat"].clone();

    // Passwords work: a new device of Alice sees the history.
    let alice = node.login("alice").await;
    let mut a = node.connect(&alice).await;
    let history = a.ok(json!({"type":"getHistory","chatId":chat})).await;
    assert_eq!(texts(&history), ["one", "two", "three"]);

    // Stored device tokens work; Bob's read position is kept.
    let mut b = WsClient::connect(&node.ws_url(), tokens["bob"].as_str().unwrap()).await;
    let chats = b.ok(json!({"type":"listChats"})).await;
    let listed = &chats["chats"][0];
    assert_eq!(listed["chatId"], chat);
    assert_eq!(listed["name"], "fixture");
    assert_eq!(listed["lastSeq"], 3);
    assert_eq!(listed["unread"], 1);
    assert!(
        b.drain().await.is_empty(),
        "Bob had acknowledged everything"
    );

    // Carol's device gets what was pending for it: the chat, then its messages.
    let mut c = WsClient::connect(&node.ws_url(), tokens["carol"].as_str().unwrap()).await;
    let events = c.drain().await;
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["chatUpdate", "newMessage", "newMessage", "newMessage"],
        "{events:?}"
    );
    assert_eq!(events[3]["message"], "three", "{}", events[3]);

    // And the node goes on: a new message takes seq 4.
    let sent = a
        .ok(json!({"type":"sendMessage","chatId":chat,"message":"four"}))
        .await;
    assert_eq!(sent["seq"], 4);
}

#[tokio::test]
async fn natterd_refuses_a_folder_of_a_newer_store_format() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    copy_dir(&fixture(), &data);
    let newer = natter::store_format::CURRENT + 1;
    natter::store_format::stamp(&data.join("store"), newer).unwrap();
    let config = dir.path().join("natter.toml");
    std::fs::write(&config, fixture_config()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_natterd"))
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--data")
        .arg(&data)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .env_remove("RUST_LOG")
        .output()
        .expect("run natterd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let expected = format!(
        "has format {newer}, written by a newer natterd; this natterd ({}) reads store format {}",
        env!("CARGO_PKG_VERSION"),
        natter::store_format::CURRENT
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(!stderr.contains("listening"), "{stderr}");
    // Nothing was migrated or backed up.
    let entries: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        !entries
            .iter()
            .any(|n| n.to_string_lossy().contains("backup")),
        "{entries:?}"
    );
}

#[test]
fn version_names_the_release_revision_and_store_format() {
    let out = Command::new(env!("CARGO_BIN_EXE_natterd"))
        .arg("--version")
        .output()
        .expect("run natterd");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let expected = format!(
        "natterd {} (git {}, store format {})",
        env!("CARGO_PKG_VERSION"),
        natter::GIT_REVISION,
        natter::store_format::CURRENT
    );
    assert_eq!(text.trim(), expected);
    assert_ne!(natter::GIT_REVISION, "", "{text}");
}
