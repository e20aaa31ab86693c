//! Federation between real nodes: chats shared across nodes, every request
//! signed, and the outbox that carries events across outages.

use serde_json::{Value, json};

use crate::in_every_topology;
use crate::support::node::{BASE_CONFIG, Topology};
use crate::support::{TestNode, WsClient};

async fn node_named(name: &str, t: Topology) -> TestNode {
    TestNode::with_config(t, &format!("name = \"{name}\"\n{BASE_CONFIG}")).await
}

/// Two nodes, each a peer of the other.
async fn two_nodes(t: Topology) -> (TestNode, TestNode) {
    let a = node_named("alpha.test", t).await;
    let b = node_named("beta.test", t).await;
    a.add_peer(&b).await;
    b.add_peer(&a).await;
    (a, b)
}

fn texts(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "newMessage")
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Waits for the next event of `kind` on `client`, acks it, and returns it.
async fn next(client: &mut WsClient, kind: &str) -> Value {
    let event = client.event().await;
    assert_eq!(event["type"], kind, "{event}");
    client.ack_events(std::slice::from_ref(&event)).await;
    event
}

async fn a_chat_spans_two_nodes(t: Topology) {
    let (a, b) = two_nodes(t).await;
    let alice = a.user("alice").await;
    let alice2 = a.login("alice").await;
    let bob = b.user("bob").await;
    let bob2 = b.login("bob").await;
    let carol = b.user("carol").await;
    let mut a1 = a.connect(&alice).await;
    let mut a2 = a.connect(&alice2).await;
    let mut b1 = b.connect(&bob).await;
    let mut b2 = b.connect(&bob2).await;
    let mut c = b.connect(&carol).await;

    let created = a1
        .ok(json!({"type":"createChat","participants":["bob@beta.test"],"name":"Across"}))
        .await;
    let chat = created["chatId"].as_str().unwrap().to_owned();
    for client in [&mut a1, &mut a2, &mut b1, &mut b2] {
        let update = next(client, "chatUpdate").await;
        assert_eq!(update["chatId"], chat.as_str());
        assert_eq!(update["reason"], "created");
        assert_eq!(
            update["participants"],
            json!(["alice@alpha.test", "bob@beta.test"])
        );
    }

    // Sends from both sides; the home orders them.
    let sent = a1
        .ok(json!({"type":"sendMessage","chatId": chat,"message":"from alpha"}))
        .await;
    assert_eq!(sent["seq"], 1);
    let sent = b1
        .ok(json!({"type":"sendMessage","chatId": chat,"message":"from beta","clientMsgId":"m1"}))
        .await;
    assert_eq!(sent["seq"], 2, "the home sequences a remote send");
    // A retry with the same clientMsgId is the same message.
    let again = b1
        .ok(json!({"type":"sendMessage","chatId": chat,"message":"from beta","clientMsgId":"m1"}))
        .await;
    assert_eq!(again["messageId"], sent["messageId"]);

    for (client, expected) in [
        (&mut a1, vec!["from beta"]),
        (&mut a2, vec!["from alpha", "from beta"]),
        (&mut b1, vec!["from alpha"]),
        (&mut b2, vec!["from alpha", "from beta"]),
    ] {
        let mut got = Vec::new();
        while got.len() < expected.len() {
            let event = next(client, "newMessage").await;
            assert_eq!(event["chatId"], chat.as_str());
            got.push(event);
        }
        assert_eq!(texts(&got), expected);
        let seqs: Vec<u64> = got.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "in seq order: {seqs:?}"
        );
        assert!(client.drain().await.is_empty(), "nothing twice");
    }

    // History and chat lists agree on both sides.
    for client in [&mut a1, &mut b1] {
        let history = client
            .ok(json!({"type":"getHistory","chatId": chat, "afterSeq": 0}))
            .await;
        let messages: Vec<&str> = history["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["message"].as_str().unwrap())
            .collect();
        assert_eq!(messages, ["from alpha", "from beta"]);
        let chats = client.ok(json!({"type":"listChats"})).await;
        assert_eq!(chats["chats"][0]["chatId"], chat.as_str());
        assert_eq!(chats["chats"][0]["lastSeq"], 2);
        assert_eq!(chats["chats"][0]["name"], "Across");
    }

    // A remote participant is added, renames the chat, and is removed.
    let added = b1
        .ok(json!({"type":"modifyChatParticipants","chatId": chat,"userId":"carol@beta.test","operation":"ADD"}))
        .await;
    assert_eq!(
        added["participants"],
        json!(["alice@alpha.test", "bob@beta.test", "carol@beta.test"])
    );
    for client in [&mut a1, &mut b1, &mut c] {
        assert_eq!(next(client, "chatUpdate").await["reason"], "added");
    }
    c.ok(json!({"type":"renameChat","chatId": chat,"name":"Renamed"}))
        .await;
    for client in [&mut a1, &mut b1, &mut c] {
        let update = next(client, "chatUpdate").await;
        assert_eq!(update["reason"], "renamed");
        assert_eq!(update["name"], "Renamed");
    }
    a1.ok(json!({"type":"modifyChatParticipants","chatId": chat,"userId":"carol@beta.test","operation":"REMOVE"}))
        .await;
    for client in [&mut a1, &mut b1, &mut c] {
        assert_eq!(next(client, "chatUpdate").await["reason"], "removed");
    }
    a1.ok(json!({"type":"sendMessage","chatId": chat,"message":"after carol left"}))
        .await;
    assert_eq!(
        texts(&[next(&mut b1, "newMessage").await]),
        ["after carol left"]
    );
    assert!(
        c.drain().await.is_empty(),
        "a removed participant gets nothing more"
    );
    assert_eq!(
        c.error_code(json!({"type":"getHistory","chatId": chat}))
            .await,
        "not_participant"
    );
}

in_every_topology!(a_chat_spans_two_nodes);
