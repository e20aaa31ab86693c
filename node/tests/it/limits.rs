//! Per-user rate limits and quotas (docs/protocol.md, "Rates and quotas"): held
//! by the core, so across a user's connections, reconnects and gateways; refused
//! commands leave nothing behind; other users are unaffected. Refill is shown
//! by moving the node's clock, never by waiting.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::node::{BASE_CONFIG, Topology};
use crate::support::ws::Closed;
use crate::support::{TestNode, WsClient};

/// The test nodes' settings with `limits` appended to `[limits]` (later keys
/// of a TOML table may not repeat, so the base's lifted rates are dropped for
/// the keys given here).
fn config(limits: &str) -> String {
    let given: Vec<&str> = limits
        .lines()
        .filter_map(|l| l.split('=').next())
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .collect();
    let mut out = String::new();
    for line in BASE_CONFIG.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        if given.contains(&key) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if line.trim() == "[limits]" {
            out.push_str(limits);
            out.push('\n');
        }
    }
    out
}

async fn new_chat(c: &mut WsClient, others: &[&str]) -> String {
    let created = c
        .ok(json!({"type":"createChat","participants": others}))
        .await;
    created["chatId"].as_str().unwrap().to_owned()
}

fn send(chat: &str, text: &str) -> Value {
    json!({"type":"sendMessage","chatId":chat,"message":text})
}

/// Expects `rate_limited` with a `retryAfterMs` in `range`.
async fn refused(c: &mut WsClient, command: Value, range: std::ops::RangeInclusive<u64>) -> u64 {
    let answer = c.request(command.clone()).await;
    assert_eq!(answer["code"], "rate_limited", "{command} → {answer}");
    let retry = answer["retryAfterMs"]
        .as_u64()
        .unwrap_or_else(|| panic!("no retryAfterMs: {answer}"));
    assert!(
        range.contains(&retry),
        "retryAfterMs {retry} not in {range:?}"
    );
    retry
}

/// One send per 100 s, bursts of 3: real time refills nothing during the test.
const SLOW_SENDS: &str = "user_send_rate = 0.01\nuser_send_burst = 3";

async fn the_send_limit_is_per_user_across_connections_gateways_and_reconnects(t: Topology) {
    let node = TestNode::with_config(t, &config(SLOW_SENDS)).await;
    node.add_user("alice").await;
    let (phone, laptop) = (node.login("alice").await, node.login("alice").await);
    let bob = node.user("bob").await;
    // In split mode the two devices are on different gateways.
    let mut a1 = WsClient::connect(&node.ws_url_of(0), &phone.token).await;
    let mut a2 = WsClient::connect(&node.ws_url_of(1), &laptop.token).await;
    let chat = new_chat(&mut a1, &["bob"]).await;
    a1.ok(send(&chat, "1")).await;
    a2.ok(send(&chat, "2")).await;
    a1.ok(send(&chat, "3")).await;
    // The user's burst is spent, whichever connection asks.
    let retry = refused(&mut a2, send(&chat, "4"), 90_000..=100_000).await;
    refused(&mut a1, send(&chat, "5"), 90_000..=retry).await;
    // A new connection of the same device does not reset it.
    a1.close().await;
    let mut a1 = WsClient::connect(&node.ws_url_of(1), &phone.token).await;
    refused(&mut a1, send(&chat, "6"), 90_000..=retry).await;
    // Another kind of command and another user have their own budgets.
    new_chat(&mut a1, &[]).await;
    let mut b = node.connect(&bob).await;
    for i in 0..3 {
        b.ok(send(&chat, &format!("bob {i}"))).await;
    }
    // Refused sends stored nothing: seq 1-3 are alice's, 4-6 bob's.
    let history = b.ok(json!({"type":"getHistory","chatId":chat})).await;
    let texts: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["1", "2", "3", "bob 0", "bob 1", "bob 2"]);
    // Once the retry time has passed (on the node's clock), one send is allowed.
    node.advance_clock(Duration::from_millis(retry)).await;
    a2.ok(send(&chat, "after")).await;
    refused(&mut a1, send(&chat, "again"), 90_000..=100_000).await;
}

async fn every_state_changing_command_is_limited_per_user() {
    let limits = "user_chat_rate = 0.01\nuser_chat_burst = 3\n\
                  user_upload_rate = 0.01\nuser_upload_burst = 1\n\
                  user_read_rate = 0.01\nuser_read_burst = 1";
    let node = TestNode::with_config(Topology::Embedded, &config(limits)).await;
    let alice = node.user("alice").await;
    node.add_user("bob").await;
    let carol = node.user("carol").await;
    let mut a = node.connect(&alice).await;
    // The chat budget (3) is shared by createChat, renameChat and
    // modifyChatParticipants.
    let chat = new_chat(&mut a, &[]).await;
    a.ok(json!({"type":"renameChat","chatId":chat,"name":"x"}))
        .await;
    a.ok(json!({"type":"modifyChatParticipants","chatId":chat,"userId":"bob","operation":"ADD"}))
        .await;
    let slow = 90_000..=100_000;
    refused(
        &mut a,
        json!({"type":"createChat","participants":[]}),
        slow.clone(),
    )
    .await;
    refused(
        &mut a,
        json!({"type":"renameChat","chatId":chat,"name":"y"}),
        slow.clone(),
    )
    .await;
    let remove =
        json!({"type":"modifyChatParticipants","chatId":chat,"userId":"bob","operation":"REMOVE"});
    refused(&mut a, remove, slow.clone()).await;
    let upload = json!({"type":"getAttachmentTarget","size":10,"contentType":"text/plain"});
    a.ok(upload.clone()).await;
    refused(&mut a, upload.clone(), slow.clone()).await;
    a.ok(send(&chat, "hi")).await;
    a.ok(json!({"type":"markRead","chatId":chat,"seq":1})).await;
    refused(
        &mut a,
        json!({"type":"markRead","chatId":chat,"seq":1}),
        slow.clone(),
    )
    .await;
    // Reads are not limited; nothing refused changed the chat.
    let chats = a.ok(json!({"type":"listChats"})).await;
    assert_eq!(chats["chats"].as_array().unwrap().len(), 1);
    assert_eq!(chats["chats"][0]["name"], "x");
    assert_eq!(
        chats["chats"][0]["participants"].as_array().unwrap().len(),
        2
    );
    // Another user is unaffected.
    let mut c = node.connect(&carol).await;
    new_chat(&mut c, &[]).await;
    c.ok(upload).await;
}

async fn chat_names(c: &mut WsClient) -> Vec<String> {
    let chats = c.ok(json!({"type":"listChats"})).await;
    chats["chats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap_or("").to_owned())
        .collect()
}

async fn the_chats_quota_refuses_creating_and_being_added(t: Topology) {
    let node = TestNode::with_config(t, &config("chats_per_user = 2")).await;
    let alice = node.user("alice").await;
    let bob = node.user("bob").await;
    let carol = node.user("carol").await;
    let mut a = node.connect(&alice).await;
    let create = |name: &str, others: &[&str]| json!({"type":"createChat","participants": others,"name": name});
    a.ok(create("one", &["bob"])).await;
    let two = a.ok(create("two", &[])).await["chatId"].clone();
    // Alice takes part in 2 chats: she can neither create a third...
    let answer = a.request(create("three", &[])).await;
    assert_eq!(answer["code"], "quota_exceeded", "{answer}");
    assert!(answer.get("retryAfterMs").is_none(), "{answer}");
    // ...nor be put in one by others; their refused commands change nothing.
    let mut c = node.connect(&carol).await;
    let answer = c.request(create("with alice", &["alice"])).await;
    assert_eq!(answer["code"], "quota_exceeded", "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("alice@"),
        "{answer}"
    );
    let mine = c.ok(create("carol's", &[])).await["chatId"].clone();
    let add =
        json!({"type":"modifyChatParticipants","chatId": mine,"userId":"alice","operation":"ADD"});
    assert_eq!(c.error_code(add.clone()).await, "quota_exceeded");
    assert_eq!(chat_names(&mut c).await, ["carol's"]);
    let history = c.ok(json!({"type":"getHistory","chatId": mine})).await;
    assert_eq!(history["messages"], json!([]));
    let mut names = chat_names(&mut a).await;
    names.sort();
    assert_eq!(names, ["one", "two"]);
    // Bob (one chat) is unaffected.
    let mut b = node.connect(&bob).await;
    b.ok(create("bob's", &["carol"])).await;
    // Leaving a chat makes room.
    a.ok(json!({"type":"modifyChatParticipants","chatId": two,"userId":"alice","operation":"REMOVE"}))
        .await;
    c.ok(add).await;
}

async fn target(c: &mut WsClient, size: u64) -> Value {
    c.request(json!({"type":"getAttachmentTarget","size": size,"contentType":"text/plain"}))
        .await
}

async fn the_pending_uploads_quota_counts_uploads_until_sent_or_swept() {
    let limits = "pending_uploads_per_user = 2
pending_upload_mb_per_user = 1";
    let node = TestNode::with_config(Topology::Embedded, &config(limits)).await;
    let alice = node.user("alice").await;
    let bob = node.user("bob").await;
    let mut a = node.connect(&alice).await;
    let first = target(&mut a, 5).await;
    assert_eq!(first["type"], "result", "{first}");
    assert_eq!(target(&mut a, 5).await["type"], "result");
    let refused = target(&mut a, 5).await;
    assert_eq!(refused["code"], "quota_exceeded", "{refused}");
    // Sending one frees its place.
    let mut put = node.http().put(first["uploadUrl"].as_str().unwrap());
    for (name, value) in first["headers"].as_object().unwrap() {
        put = put.header(name.as_str(), value.as_str().unwrap());
    }
    let status = put.body(b"hello".to_vec()).send().await.unwrap().status();
    assert!(status.is_success(), "{status}");
    let chat = new_chat(&mut a, &[]).await;
    a.ok(json!({"type":"sendMessage","chatId":chat,"message":"file","attachments":[first["attachmentId"]]}))
        .await;
    assert_eq!(target(&mut a, 5).await["type"], "result");
    assert_eq!(target(&mut a, 5).await["code"], "quota_exceeded");
    // Bytes: 1 MiB declared in all; bob's own quota is untouched by alice's.
    let mut b = node.connect(&bob).await;
    assert_eq!(target(&mut b, 1 << 20).await["type"], "result");
    let refused = target(&mut b, 1).await;
    assert_eq!(refused["code"], "quota_exceeded", "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("bytes"),
        "{refused}"
    );
    // Uploads never sent are removed by the sweep after `media.orphan_ttl`,
    // and then no longer count.
    node.advance_clock(Duration::from_secs(25 * 3600)).await;
    let report = node.sweep().await;
    assert_eq!(report["orphanUploadsRemoved"], 3, "{report}");
    assert_eq!(target(&mut b, 1 << 20).await["type"], "result");
    assert_eq!(target(&mut a, 5).await["type"], "result");
    assert_eq!(target(&mut a, 5).await["type"], "result");
}

async fn a_login_past_the_devices_quota_logs_out_the_least_recently_active_device(t: Topology) {
    let node = TestNode::with_config(t, &config("devices_per_user = 2")).await;
    let old = node.user("alice").await;
    let mut old_ws = node.connect(&old).await;
    let bob = node.user("bob").await;
    node.advance_clock(Duration::from_secs(60)).await;
    let second = node.login("alice").await;
    let third = node.login("alice").await;
    // The oldest device was logged out: its connection closes as after a
    // logout, and its token no longer works.
    assert_eq!(old_ws.closed().await, Closed::Code(4401));
    let logout = node
        .http()
        .post(format!("{}/v1/logout", node.url))
        .bearer_auth(&old.token)
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status().as_u16(), 401);
    // The two newest work; the user has 2 devices, bob still 1.
    for creds in [&second, &third] {
        let mut ws = node.connect(creds).await;
        ws.ok(json!({"type":"listChats"})).await;
    }
    let (_, users) = node.admin(reqwest::Method::GET, "/users", None).await;
    let devices = |name: &str| {
        users["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["userId"].as_str().unwrap().starts_with(name))
            .map(|u| u["devices"].clone())
    };
    assert_eq!(devices("alice@"), Some(json!(2)), "{users}");
    assert_eq!(devices("bob@"), Some(json!(1)), "{users}");
    let mut b = node.connect(&bob).await;
    b.ok(json!({"type":"listChats"})).await;
}

#[tokio::test]
async fn the_pending_uploads_quota_counts_uploads_until_sent_or_swept_embedded() {
    the_pending_uploads_quota_counts_uploads_until_sent_or_swept().await;
}

crate::in_every_topology!(
    the_chats_quota_refuses_creating_and_being_added,
    a_login_past_the_devices_quota_logs_out_the_least_recently_active_device
);

#[tokio::test]
async fn every_state_changing_command_is_limited_per_user_embedded() {
    every_state_changing_command_is_limited_per_user().await;
}

crate::in_every_topology!(the_send_limit_is_per_user_across_connections_gateways_and_reconnects);
