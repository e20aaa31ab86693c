//! The outbox per peer: on fjall without NATS; with NATS a JetStream stream
//! with one durable consumer per peer. What `natter peer list` says about it,
//! dead letters and their replay, and a removed peer's consumer going away.

use std::time::Duration;

use async_nats::jetstream;
use serde_json::{Value, json};

use crate::federation::{Pair, chat_of_two, receive, two_nodes};
use crate::in_every_topology;
use crate::support::node::{BASE_CONFIG, Topology};
use crate::support::{TestNode, eventually};

/// `alpha.test`'s outbox stream and its consumer for `beta.test`
/// (docs/federation.md, "The outbox").
const STREAM: &str = "NATTER_ALPHA_TEST_FED";
const CONSUMER: &str = "fed_beta_test";
const SUBJECT: &str = "natter.alpha_test.fed.beta_test";

/// `node`'s view of `peer` in `natter peer list --json`.
pub(crate) async fn peer_info(node: &TestNode, peer: &str) -> Value {
    let (status, list) = node.admin(reqwest::Method::GET, "/peers", None).await;
    assert_eq!(status, 200, "{list}");
    list["peers"]
        .as_array()
        .and_then(|peers| peers.iter().find(|p| p["node"] == peer).cloned())
        .unwrap_or(Value::Null)
}

/// Waits until `node`'s outbox for `peer` holds `depth` events.
pub(crate) async fn outbox_depth_is(node: &TestNode, peer: &str, depth: u64) -> Value {
    eventually(&format!("an outbox depth of {depth}"), || async {
        let info = peer_info(node, peer).await;
        (info["outboxDepth"] == depth).then_some(info)
    })
    .await
}

/// Messages of the peer's consumer not yet acked (pending and in flight),
/// or `None` if there is no such consumer.
async fn consumer_backlog(js: &jetstream::Context) -> Option<u64> {
    let stream = js.get_stream(STREAM).await.ok()?;
    let info = stream.consumer_info(CONSUMER).await.ok()?;
    assert_eq!(info.config.filter_subject, SUBJECT, "one consumer per peer");
    Some(info.num_pending + info.num_ack_pending as u64)
}

async fn queued_events_wait_in_one_consumer_per_peer(t: Topology) {
    let (a, mut b) = two_nodes(t).await;
    let nats = async_nats::connect(a.nats.as_ref().expect("NATS").url())
        .await
        .expect("connect to alpha's NATS");
    let js = jetstream::new(nats);
    // The consumer is made when the peer is added, before any event.
    eventually("beta's consumer", || async { consumer_backlog(&js).await }).await;

    let Pair {
        mut alice,
        bob,
        chat,
        bob_creds,
        ..
    } = chat_of_two(&a, &b).await;
    bob.close().await;
    b.kill9();
    let sent: Vec<String> = (0..50).map(|i| format!("q{i}")).collect();
    for text in &sent {
        alice
            .ok(json!({"type":"sendMessage","chatId": chat,"message": text}))
            .await;
    }
    // All 50 are queued for beta, and handed to its consumer (relayed from
    // fjall to JetStream).
    outbox_depth_is(&a, "beta.test", 50).await;
    eventually("the events in beta's consumer", || async {
        consumer_backlog(&js).await.filter(|n| *n > 0)
    })
    .await;
    a.advance_clock(Duration::from_secs(600)).await;
    let info = peer_info(&a, "beta.test").await;
    assert!(
        info["oldestQueuedAgeMs"].as_i64().unwrap() >= 600_000,
        "the oldest queued event is as old as the clock says: {info}"
    );
    assert_eq!(info["outboxDepth"], 50, "{info}");

    // Back: everything arrives once, in order; the queue empties.
    b.restart_same_port().await;
    // Clocks agree again (signatures are checked against the time).
    b.advance_clock(Duration::from_secs(600)).await;
    let mut bob = b.connect(&bob_creds).await;
    assert_eq!(receive(&mut bob, 50).await, sent, "all, in order");
    assert!(bob.drain().await.is_empty(), "once");
    let info = outbox_depth_is(&a, "beta.test", 0).await;
    assert!(info["oldestQueuedAgeMs"].is_null(), "{info}");
    eventually("beta's consumer to be empty", || async {
        (consumer_backlog(&js).await == Some(0)).then_some(())
    })
    .await;

    // Removing the peer deletes its consumer and what was queued for it.
    bob.close().await;
    b.kill9();
    for i in 0..5 {
        alice
            .ok(json!({"type":"sendMessage","chatId": chat,"message": format!("late {i}")}))
            .await;
    }
    outbox_depth_is(&a, "beta.test", 5).await;
    let (status, body) = a
        .admin(reqwest::Method::DELETE, "/peers/beta.test", None)
        .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(consumer_backlog(&js).await, None, "the consumer is gone");
    let mut stream = js.get_stream(STREAM).await.expect("the outbox stream");
    let state = stream.info().await.expect("stream info").state.clone();
    assert_eq!(state.messages, 0, "nothing stays queued for a removed peer");
    assert!(peer_info(&a, "beta.test").await.is_null());
}

#[tokio::test]
async fn queued_events_wait_in_one_consumer_per_peer_nats() {
    queued_events_wait_in_one_consumer_per_peer(Topology::Nats).await;
}

#[tokio::test]
async fn queued_events_wait_in_one_consumer_per_peer_split() {
    queued_events_wait_in_one_consumer_per_peer(Topology::Split).await;
}

/// NATS away at the home: sends are still answered (each event is queued on
/// fjall with its change) and reach the peer, in order and once, when
/// JetStream is back.
#[tokio::test]
async fn events_queued_while_nats_is_away_are_relayed_when_it_returns() {
    let (mut a, b) = two_nodes(Topology::Nats).await;
    let Pair {
        mut alice,
        mut bob,
        chat,
        ..
    } = chat_of_two(&a, &b).await;
    alice
        .ok(json!({"type":"sendMessage","chatId": chat,"message":"before"}))
        .await;
    assert_eq!(receive(&mut bob, 1).await, ["before"]);
    a.nats.as_mut().expect("NATS").stop();
    let sent: Vec<String> = (0..20).map(|i| format!("w{i}")).collect();
    for text in &sent {
        alice
            .ok(json!({"type":"sendMessage","chatId": chat,"message": text}))
            .await;
    }
    // Queued on fjall (the relay to JetStream fails meanwhile), not sent.
    outbox_depth_is(&a, "beta.test", 20).await;
    assert!(bob.drain().await.is_empty(), "nothing went past NATS");
    a.nats.as_mut().expect("NATS").restart();
    let got = receive(&mut bob, 20).await;
    assert_eq!(got, sent, "all, in order");
    assert!(bob.drain().await.is_empty(), "once");
    outbox_depth_is(&a, "beta.test", 0).await;
}

async fn dead_letters_are_kept_shown_and_replayed_in_order(t: Topology) {
    let config = |name: &str| {
        format!(
            "name = \"{name}\"\n{BASE_CONFIG}\n[federation]\nmax_backoff = \"1s\"\ndead_letter_after = \"1h\"\n"
        )
    };
    let a = TestNode::with_config(t, &config("alpha.test")).await;
    let mut b = TestNode::with_config(t, &config("beta.test")).await;
    a.add_peer(&b).await;
    b.add_peer(&a).await;
    let Pair {
        mut alice,
        bob,
        chat,
        bob_creds,
        ..
    } = chat_of_two(&a, &b).await;
    bob.close().await;
    b.kill9();
    let sent = ["d0", "d1", "d2"];
    for text in sent {
        alice
            .ok(json!({"type":"sendMessage","chatId": chat,"message": text}))
            .await;
    }
    outbox_depth_is(&a, "beta.test", 3).await;
    // Two hours later they are older than dead_letter_after: dead letters,
    // kept on the home, not sent.
    a.advance_clock(Duration::from_secs(2 * 3600)).await;
    let dead = eventually("three dead letters", || async {
        let (status, body) = a
            .admin(reqwest::Method::GET, "/peers/beta.test/outbox", None)
            .await;
        assert_eq!(status, 200, "{body}");
        (body["deadLetters"].as_array()?.len() == 3).then_some(body)
    })
    .await;
    let texts: Vec<&str> = dead["deadLetters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["event"]["text"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(texts, sent, "{dead}");
    let seqs: Vec<u64> = dead["deadLetters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {dead}");
    let info = outbox_depth_is(&a, "beta.test", 0).await;
    assert_eq!(info["deadLetters"], 3, "{info}");

    b.restart_same_port().await;
    // Clocks agree again (signatures are checked against the time).
    b.advance_clock(Duration::from_secs(2 * 3600)).await;
    let mut bob = b.connect(&bob_creds).await;
    assert!(bob.drain().await.is_empty(), "dead letters are not sent");
    let (status, body) = a
        .admin(
            reqwest::Method::POST,
            "/peers/beta.test/outbox/replay",
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["replayed"], true);
    assert_eq!(receive(&mut bob, 3).await, sent, "replayed, in order");
    assert!(bob.drain().await.is_empty(), "once");
    let info = outbox_depth_is(&a, "beta.test", 0).await;
    assert_eq!(info["deadLetters"], 0, "{info}");
}

in_every_topology!(dead_letters_are_kept_shown_and_replayed_in_order);
