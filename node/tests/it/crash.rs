//! Crash safety: what a sender was told is stored survives `kill -9`.

use std::collections::HashSet;

use serde_json::json;

use crate::support::TestNode;
use crate::support::node::Topology;

async fn every_answered_send_survives_kill_9(t: Topology) {
    let mut node = TestNode::start(t).await;
    let alice = node.user("alice").await;
    let bob = node.user("bob").await;
    let mut a = node.connect(&alice).await;
    let chat = a
        .ok(json!({"type":"createChat","participants":["bob"]}))
        .await["chatId"]
        .clone();
    // 200 sends pipelined, then all 200 answers.
    for i in 0..200 {
        a.send(&json!({"type":"sendMessage","id":format!("s{i}"),"chatId":chat,"message":format!("n{i}")}))
            .await;
    }
    let mut answered = HashSet::new();
    for i in 0..200 {
        let answer = a.answer(&format!("s{i}")).await;
        assert_eq!(answer["type"], "result", "{answer}");
        answered.insert(answer["messageId"].as_str().unwrap().to_owned());
    }
    // Right after the last answer: no shutdown, no flush.
    node.kill9();
    node.restart().await;

    let mut b = node.connect(&bob).await;
    let events = b.drain().await;
    let delivered: HashSet<String> = events
        .iter()
        .filter(|e| e["type"] == "newMessage")
        .map(|e| e["messageId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(delivered, answered);
    let seqs: Vec<u64> = events
        .iter()
        .filter(|e| e["type"] == "newMessage")
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
}

crate::in_every_topology!(every_answered_send_survives_kill_9);
