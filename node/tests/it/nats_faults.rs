//! Several processes on one NATS: gateways, moving devices, and faults (a gateway
//! killed, the NATS server restarted, NATS away), with nothing acknowledged lost.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

use crate::support::node::{Creds, Topology};
use crate::support::ws::Closed;
use crate::support::{TestNode, WsClient, eventually};

/// Collects `newMessage` events until every id in `want` has arrived, acking as
/// it goes; reconnects (through `url()`) whenever the connection drops.
async fn receive_all(
    node: &TestNode,
    creds: &Creds,
    mut client: Option<WsClient>,
    want: &HashSet<String>,
) -> HashMap<String, u64> {
    let mut got: HashMap<String, u64> = HashMap::new();
    while !want.iter().all(|id| got.contains_key(id)) {
        let mut c = match client.take() {
            Some(c) => c,
            None => node.connect(creds).await,
        };
        let mut batch = Vec::new();
        let dropped = loop {
            let frame = match c.recv_or_close().await {
                Ok(frame) => frame,
                Err(_) => break true,
            };
            if frame["type"] == "newMessage" {
                got.insert(
                    frame["messageId"].as_str().unwrap().to_owned(),
                    frame["seq"].as_u64().unwrap(),
                );
            }
            if frame.get("deliveryId").is_some() {
                batch.push(frame["deliveryId"].clone());
            }
            if batch.len() >= 100 || want.iter().all(|id| got.contains_key(id)) {
                let ack = json!({"type":"ack","deliveryIds": batch});
                c.send(&ack).await;
                batch = Vec::new();
            }
            if want.iter().all(|id| got.contains_key(id)) {
                break false;
            }
        };
        if !dropped {
            client = Some(c);
        }
    }
    got
}

async fn chat(a: &mut WsClient, b: &mut WsClient, with: &str) -> String {
    let chat = a
        .ok(json!({"type":"createChat","participants":[with]}))
        .await["chatId"]
        .as_str()
        .unwrap()
        .to_owned();
    for client in [a, b] {
        let update = client.event().await;
        assert_eq!(update["type"], "chatUpdate");
        client.ack_events(&[update]).await;
    }
    chat
}

#[tokio::test]
async fn devices_on_two_gateways_chat_and_a_device_moves_with_its_backlog() {
    let node = TestNode::start(Topology::Split).await;
    let alice = node.user("alice").await;
    let bob = node.user("bob").await;
    let mut a = WsClient::connect(&node.ws_url_of(0), &alice.token).await;
    let mut b = WsClient::connect(&node.ws_url_of(1), &bob.token).await;
    let chat = chat(&mut a, &mut b, "bob").await;
    a.ok(json!({"type":"sendMessage","chatId":chat,"message":"from gateway 1"}))
        .await;
    let first = b.event().await;
    assert_eq!(first["message"], "from gateway 1");
    b.ack_events(&[first]).await;
    b.ok(json!({"type":"sendMessage","chatId":chat,"message":"from gateway 2"}))
        .await;
    assert_eq!(a.event().await["message"], "from gateway 2");
    let seen = b.drain().await;
    b.ack_events(&seen).await;
    b.close().await;
    for i in 0..3 {
        a.ok(json!({"type":"sendMessage","chatId":chat,"message":format!("away {i}")}))
            .await;
    }
    // Bob comes back on the other gateway and gets his backlog there.
    let mut b = WsClient::connect(&node.ws_url_of(0), &bob.token).await;
    let backlog = b.drain().await;
    let texts: Vec<&str> = backlog
        .iter()
        .filter(|e| e["type"] == "newMessage")
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["away 0", "away 1", "away 2"]);
    // A second connection on another gateway displaces the first.
    let mut moved = WsClient::connect(&node.ws_url_of(1), &bob.token).await;
    assert_eq!(b.closed().await, Closed::Code(4409));
    a.ok(json!({"type":"sendMessage","chatId":chat,"message":"follow me"}))
        .await;
    let events = moved.drain().await;
    assert!(
        events.iter().any(|e| e["message"] == "follow me"),
        "{events:?}"
    );
}

/// With the core gone (NATS up, nobody on the core's subject), NATS answers a
/// gateway's request at once with an empty "no responders" status: the client
/// gets `unavailable` (retry), not `internal`.
#[tokio::test]
async fn a_request_nobody_answers_is_unavailable() {
    let mut node = TestNode::start(Topology::Split).await;
    let alice = node.user("alice").await;
    let mut a = node.connect(&alice).await;
    let chat = a.ok(json!({"type":"createChat","participants":[]})).await["chatId"].clone();
    node.kill9();
    let send = json!({"type":"sendMessage","chatId":chat,"message":"x","clientMsgId":"n1"});
    let answer = a.request(send).await;
    assert_eq!(answer["code"], "unavailable", "{answer}");
}

#[tokio::test]
async fn killing_a_gateway_mid_burst_loses_nothing() {
    let mut node = TestNode::start(Topology::Split).await;
    let alice = node.user("alice").await;
    let bob = node.user("bob").await;
    let mut a = WsClient::connect(&node.ws_url_of(1), &alice.token).await;
    let mut b = WsClient::connect(&node.ws_url_of(0), &bob.token).await;
    let chat = chat(&mut a, &mut b, "bob").await;
    for i in 0..1000 {
        a.send(&json!({"type":"sendMessage","id":format!("s{i}"),"chatId":chat,"message":format!("m{i}")}))
            .await;
    }
    let mut sent = HashSet::new();
    for i in 0..1000 {
        if i == 200 {
            // Bob's gateway dies with deliveries in flight to him.
            node.kill9_gateway(0);
        }
        let answer = a.answer(&format!("s{i}")).await;
        assert_eq!(answer["type"], "result", "{answer}");
        sent.insert(answer["messageId"].as_str().unwrap().to_owned());
    }
    drop(b);
    // Bob reconnects to the surviving gateway; every message arrives.
    let b = WsClient::connect(&node.ws_url_of(1), &bob.token).await;
    let got = receive_all(&node, &bob, Some(b), &sent).await;
    let mut seqs: Vec<u64> = got.values().copied().collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=1000).collect::<Vec<_>>());
}

/// Sends `count` messages pipelined with clientMsgIds; returns (clientMsgId, frame)
/// for each, retrying those refused as `unavailable` until they are accepted.
async fn send_burst_with_retries(
    a: &mut WsClient,
    chat: &str,
    prefix: &str,
    count: usize,
    mut midway: impl FnMut(),
) -> HashSet<String> {
    let send = |i: usize| {
        json!({"type":"sendMessage","id":format!("{prefix}{i}"),"chatId":chat,
               "message":format!("{prefix}{i}"),"clientMsgId":format!("{prefix}{i}")})
    };
    for i in 0..count {
        a.send(&send(i)).await;
    }
    let mut accepted = HashSet::new();
    let mut retry = Vec::new();
    for i in 0..count {
        if i == count / 3 {
            midway();
        }
        let answer = a.answer(&format!("{prefix}{i}")).await;
        match answer["type"].as_str() {
            Some("result") => {
                accepted.insert(answer["messageId"].as_str().unwrap().to_owned());
            }
            _ => {
                assert_eq!(answer["code"], "unavailable", "{answer}");
                retry.push(i);
            }
        }
    }
    for i in retry {
        // Retried with the same clientMsgId: never sent twice.
        let answer = until_accepted(a, send(i)).await;
        accepted.insert(answer["messageId"].as_str().unwrap().to_owned());
    }
    accepted
}

/// Sends `command` until it gets a `result` (while the node answers
/// `unavailable`), re-trying every 50 ms up to the deadline.
async fn until_accepted(a: &mut WsClient, command: Value) -> Value {
    let deadline = tokio::time::Instant::now() + crate::support::DEADLINE;
    let mut poll = tokio::time::interval(std::time::Duration::from_millis(50));
    loop {
        poll.tick().await;
        let answer = a.request(command.clone()).await;
        if answer["type"] == "result" {
            return answer;
        }
        assert_eq!(answer["code"], "unavailable", "{answer}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "never accepted: {command}"
        );
    }
}

async fn nats_restart_mid_burst(t: Topology) {
    let mut node = TestNode::start(t).await;
    let alice = node.user("alice").await;
    let bob = node.user("bob").await;
    let mut a = node.connect(&alice).await;
    let mut b = node.connect(&bob).await;
    let chat = chat(&mut a, &mut b, "bob").await;
    let mut nats = node.nats.take().expect("a NATS topology");
    let accepted = send_burst_with_retries(&mut a, &chat, "n", 1000, || nats.restart()).await;
    node.nats = Some(nats);
    assert!(accepted.len() == 1000, "{} accepted", accepted.len());
    let got = receive_all(&node, &bob, Some(b), &accepted).await;
    assert_eq!(got.len(), 1000);
}

mod nats_restart_mid_burst_loses_nothing {
    use super::*;

    #[tokio::test]
    async fn nats() {
        nats_restart_mid_burst(Topology::Nats).await
    }

    #[tokio::test]
    async fn split() {
        nats_restart_mid_burst(Topology::Split).await
    }
}

#[tokio::test]
async fn without_nats_the_node_stays_up_says_so_and_recovers() {
    let mut node = TestNode::start(Topology::Split).await;
    let alice = node.user("alice").await;
    let bob = node.user("bob").await;
    let mut a = node.connect(&alice).await;
    let mut b = node.connect(&bob).await;
    let chat = chat(&mut a, &mut b, "bob").await;
    let http = node.http().clone();
    let ready = move |url: String| {
        let http = http.clone();
        async move {
            http.get(format!("{url}/readyz"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    node.nats.as_mut().unwrap().stop();
    let url = node.url.clone();
    eventually("the gateway to report not ready", || {
        let f = ready(url.clone());
        async move { (f.await == 503).then_some(()) }
    })
    .await;
    // Commands fail with a clear, retryable error instead of hanging.
    let answer = a
        .request(json!({"type":"sendMessage","chatId":chat,"message":"into the void","clientMsgId":"v1"}))
        .await;
    assert_eq!(answer["code"], "unavailable", "{answer}");
    node.nats.as_mut().unwrap().restart();
    eventually("the gateway to be ready again", || {
        let f = ready(url.clone());
        async move { (f.await == 200).then_some(()) }
    })
    .await;
    let sent = until_accepted(
        &mut a,
        json!({"type":"sendMessage","chatId":chat,"message":"back","clientMsgId":"v1"}),
    )
    .await;
    let want: HashSet<String> = [sent["messageId"].as_str().unwrap().to_owned()].into();
    let got = receive_all(&node, &bob, Some(b), &want).await;
    assert_eq!(got.len(), 1);
}
