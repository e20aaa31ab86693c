//! Inbox reads run a bounded number at a time (`limits.inbox_reads_in_flight`):
//! a reconnect storm waits its turn instead of taking every blocking thread.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::node::{BASE_CONFIG, Topology};
use crate::support::{TestNode, WsClient, eventually};

/// Devices reconnecting at once, each to a deep inbox.
const DEVICES: usize = 12;
/// Messages waiting for each of them (more than one window: several reads).
const MESSAGES: usize = 600;
const BOUND: usize = 2;

/// Closes or opens the node's test gate on inbox reads.
async fn gate(node: &TestNode, closed: bool) {
    let (status, body) = node
        .admin(
            reqwest::Method::POST,
            "/inbox-read-gate",
            Some(json!({ "closed": closed })),
        )
        .await;
    assert_eq!(status, 204, "inbox read gate: {body}");
}

async fn gauge(node: &TestNode, name: &str) -> f64 {
    node.metric(node.main_admin_url(), name)
        .await
        .unwrap_or_else(|| panic!("metric {name}"))
}

/// Sends `count` messages pipelined, then waits for every answer.
async fn send_many(ws: &mut WsClient, chat: &Value, count: usize) {
    for i in 0..count {
        ws.send(&json!({"type":"sendMessage","id":format!("s{i}"),"chatId":chat,"message":format!("m{i}")}))
            .await;
    }
    for i in 0..count {
        let answer = ws.answer(&format!("s{i}")).await;
        assert_eq!(answer["type"], "result", "{answer}");
    }
}

/// Reads a reconnected device's events until it has every message, acking as
/// it goes; returns the messages' texts in the order they came.
async fn receive_all(mut ws: WsClient) -> Vec<String> {
    let mut texts = Vec::new();
    let mut unacked = Vec::new();
    while texts.len() < MESSAGES {
        let event = ws.event().await;
        if event["type"] == "newMessage" {
            texts.push(event["message"].as_str().unwrap().to_owned());
        }
        unacked.push(event["deliveryId"].clone());
        if unacked.len() == 100 {
            let ids: Vec<&Value> = unacked.iter().collect();
            ws.ack(&ids).await;
            unacked.clear();
        }
    }
    texts
}

#[tokio::test]
async fn a_reconnect_storm_reads_inboxes_a_few_at_a_time() {
    let config = BASE_CONFIG
        .replace(
            "[limits]\n",
            &format!("[limits]\ninbox_reads_in_flight = {BOUND}\n"),
        )
        .replace("[testing]\n", "[testing]\ninbox_read_gate = true\n");
    let node = TestNode::with_config(Topology::Embedded, &config).await;
    let sender = node.user("sender").await;
    let mut names = Vec::new();
    let mut devices = Vec::new();
    for i in 0..DEVICES {
        let name = format!("reader{i}");
        devices.push(node.user(&name).await);
        names.push(name);
    }
    let mut s = node.connect(&sender).await;
    let chat = s
        .ok(json!({"type":"createChat","participants": names}))
        .await["chatId"]
        .clone();
    send_many(&mut s, &chat, MESSAGES).await;

    // Two users chatting, connected (and caught up) before the storm.
    let alice = node.user("alice").await;
    let bob = node.user("bob").await;
    let mut a = node.connect(&alice).await;
    let mut b = node.connect(&bob).await;
    let pair = a
        .ok(json!({"type":"createChat","participants":["bob"]}))
        .await["chatId"]
        .clone();
    // Acked, so that no resend (an inbox read) is due during the storm.
    let seen = a.drain().await;
    a.ack_events(&seen).await;
    let seen = b.drain().await;
    b.ack_events(&seen).await;

    // The storm: every reader reconnects at once, and reads are slow.
    gate(&node, true).await;
    let mut readers = Vec::new();
    for creds in &devices {
        readers.push(node.connect(creds).await);
    }
    eventually(
        "the bound to be full and the other reads waiting",
        || async {
            let in_flight = gauge(&node, "natter_inbox_reads_in_flight").await;
            let waiting = gauge(&node, "natter_inbox_reads_waiting").await;
            (in_flight == BOUND as f64 && waiting == (DEVICES - BOUND) as f64).then_some(())
        },
    )
    .await;

    // Meanwhile the rest of the node answers.
    let answered = tokio::time::timeout(
        Duration::from_secs(5),
        a.ok(json!({"type":"sendMessage","chatId":pair,"message":"still here?"})),
    )
    .await;
    assert!(answered.is_ok(), "a send was not answered during the storm");
    let event = b.event().await;
    assert_eq!(event["message"], "still here?");

    gate(&node, false).await;
    let got = futures_util::future::join_all(readers.into_iter().map(receive_all)).await;
    let expected: Vec<String> = (0..MESSAGES).map(|i| format!("m{i}")).collect();
    for (i, texts) in got.iter().enumerate() {
        assert_eq!(texts, &expected, "reader{i}'s messages");
    }
    assert_eq!(
        gauge(&node, "natter_inbox_reads_in_flight_max").await,
        BOUND as f64,
        "inbox reads in flight at once"
    );
    assert_eq!(gauge(&node, "natter_inbox_reads_waiting").await, 0.0);
}
