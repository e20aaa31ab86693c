//! *Extension* `chatRead`: a read position that moves on one device reaches the
//! user's other devices through their inboxes, and nobody else.

use serde_json::{Value, json};

use crate::federation::{next, two_nodes};
use crate::in_every_topology;
use crate::support::node::Topology;
use crate::support::{TestNode, WsClient};

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

/// Drains `client` and checks it got no `chatRead`.
async fn no_read_event(client: &mut WsClient, who: &str) {
    let events = client.drain().await;
    assert!(of_type(&events, "chatRead").is_empty(), "{who}: {events:?}");
    client.ack_events(&events).await;
}

/// The only pending event of `client` is `chatRead` of `chat` at `seq`; acks it.
async fn read_event(client: &mut WsClient, chat: &str, seq: u64) {
    let events = client.drain().await;
    assert_eq!(
        events.len(),
        1,
        "exactly one event expected, got {events:?}"
    );
    let event = &events[0];
    assert_eq!(event["type"], "chatRead", "{event}");
    assert_eq!(event["chatId"], chat, "{event}");
    assert_eq!(event["seq"], seq, "{event}");
    assert_eq!(event.as_object().unwrap().len(), 4, "{event}");
    client.ack_events(&events).await;
}

async fn start(t: Topology) -> TestNode {
    TestNode::start(t).await
}

async fn reading_on_one_device_reaches_the_others(t: Topology) {
    let node = start(t).await;
    let alice_a = node.user("alice").await;
    let alice_b = node.login("alice").await;
    let alice_c = node.login("alice").await;
    let bob = node.user("bob").await;
    let mut a = node.connect(&alice_a).await;
    let mut b = node.connect(&alice_b).await;
    let mut bo = node.connect(&bob).await;

    let chat = a
        .ok(json!({"type":"createChat","participants":["bob"]}))
        .await["chatId"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 1..=3 {
        bo.ok(json!({"type":"sendMessage","chatId":chat,"message":format!("m{i}")}))
            .await;
    }
    for client in [&mut a, &mut b, &mut bo] {
        let events = client.drain().await;
        client.ack_events(&events).await;
    }

    // A reads up to 2: B learns it; A (which gets the result) and bob do not.
    a.ok(json!({"type":"markRead","chatId":chat,"seq":2})).await;
    read_event(&mut b, &chat, 2).await;
    no_read_event(&mut a, "the acting device").await;
    no_read_event(&mut bo, "another user").await;

    // Reads that do not move the position forward send nothing.
    a.ok(json!({"type":"markRead","chatId":chat,"seq":2})).await;
    a.ok(json!({"type":"markRead","chatId":chat,"seq":1})).await;
    b.ok(json!({"type":"markRead","chatId":chat,"seq":2})).await;
    no_read_event(&mut a, "A after no move").await;
    no_read_event(&mut b, "B after no move").await;

    // Past the end is clamped to the last seq, and that is what others learn.
    b.ok(json!({"type":"markRead","chatId":chat,"seq":99}))
        .await;
    read_event(&mut a, &chat, 3).await;
    no_read_event(&mut b, "the acting device").await;
    a.ok(json!({"type":"markRead","chatId":chat,"seq":3})).await;
    no_read_event(&mut b, "B after no move").await;

    // The device that was offline gets both, in order, after its backlog.
    let mut c = node.connect(&alice_c).await;
    let events = c.drain().await;
    let reads: Vec<u64> = of_type(&events, "chatRead")
        .iter()
        .map(|e| {
            assert_eq!(e["chatId"], chat.as_str());
            e["seq"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(reads, vec![2, 3], "{events:?}");
    assert_eq!(events.last().unwrap()["type"], "chatRead");
    c.ack_events(&events).await;
    // Acked: gone, also on the next connection.
    drop(c);
    let mut c = node.connect(&alice_c).await;
    assert!(c.drain().await.is_empty());
    let listed = c.ok(json!({"type":"listChats"})).await;
    assert_eq!(listed["chats"][0]["unread"], 0);
}

/// For a chat homed on a peer, the read position is the reader's node's: its
/// other devices learn it there, and nothing about it reaches the home.
async fn a_read_in_a_remote_chat_stays_on_the_readers_node(t: Topology) {
    let (alpha, beta) = two_nodes(t).await;
    let bob = beta.user("bob").await;
    let alice1 = alpha.user("alice").await;
    let alice2 = alpha.login("alice").await;
    let mut b = beta.connect(&bob).await;
    let mut a1 = alpha.connect(&alice1).await;
    let mut a2 = alpha.connect(&alice2).await;

    // Homed on beta.
    let chat = b
        .ok(json!({"type":"createChat","participants":["alice@alpha.test"]}))
        .await["chatId"]
        .as_str()
        .unwrap()
        .to_owned();
    next(&mut b, "chatUpdate").await;
    next(&mut a1, "chatUpdate").await;
    next(&mut a2, "chatUpdate").await;
    b.ok(json!({"type":"sendMessage","chatId":chat,"message":"hi"}))
        .await;
    next(&mut a1, "newMessage").await;
    next(&mut a2, "newMessage").await;

    a1.ok(json!({"type":"markRead","chatId":chat,"seq":1}))
        .await;
    read_event(&mut a2, &chat, 1).await;
    no_read_event(&mut a1, "the acting device").await;
    // The home learns nothing of it: bob's stream has alice's next message and
    // no `chatRead`, and bob's unread count is his own.
    a1.ok(json!({"type":"sendMessage","chatId":chat,"message":"back"}))
        .await;
    next(&mut b, "newMessage").await;
    no_read_event(&mut b, "a user of the home").await;
    let listed = b.ok(json!({"type":"listChats"})).await;
    assert_eq!(listed["chats"][0]["unread"], 1, "alice's message, unread");
    // Alice's devices: read up to her own message.
    let listed = a2.ok(json!({"type":"listChats"})).await;
    assert_eq!(listed["chats"][0]["unread"], 0);
}

in_every_topology!(
    reading_on_one_device_reaches_the_others,
    a_read_in_a_remote_chat_stays_on_the_readers_node
);
