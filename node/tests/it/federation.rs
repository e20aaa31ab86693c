//! Federation between real nodes: chats shared across nodes, every request
//! signed, and the outbox that carries events across outages.

use serde_json::{Value, json};

use crate::in_every_topology;
use crate::support::node::{BASE_CONFIG, Creds, Topology};
use crate::support::{TestNode, WsClient};

pub(crate) async fn node_named(name: &str, t: Topology) -> TestNode {
    // Retries of an unreachable peer back off to at most a second here, so a
    // test waits for a restarted peer within its deadline.
    let config = format!("name = \"{name}\"\n{BASE_CONFIG}\n[federation]\nmax_backoff = \"1s\"\n");
    TestNode::with_config(t, &config).await
}

/// Two nodes, each a peer of the other.
pub(crate) async fn two_nodes(t: Topology) -> (TestNode, TestNode) {
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
pub(crate) async fn next(client: &mut WsClient, kind: &str) -> Value {
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

/// alice@alpha (the home) and bob@beta in one chat, both connected.
pub(crate) struct Pair {
    pub alice: WsClient,
    pub bob: WsClient,
    pub chat: String,
    pub alice_creds: Creds,
    pub bob_creds: Creds,
}

pub(crate) async fn chat_of_two(a: &TestNode, b: &TestNode) -> Pair {
    let alice_creds = a.user("alice").await;
    let bob_creds = b.user("bob").await;
    let mut alice = a.connect(&alice_creds).await;
    let mut bob = b.connect(&bob_creds).await;
    let created = alice
        .ok(json!({"type":"createChat","participants":["bob@beta.test"]}))
        .await;
    let chat = created["chatId"].as_str().unwrap().to_owned();
    next(&mut alice, "chatUpdate").await;
    next(&mut bob, "chatUpdate").await;
    Pair {
        alice,
        bob,
        chat,
        alice_creds,
        bob_creds,
    }
}

/// Receives `n` messages, acking as it goes; returns their texts.
pub(crate) async fn receive(client: &mut WsClient, n: usize) -> Vec<String> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let event = client.event().await;
        assert_eq!(event["type"], "newMessage", "{event}");
        got.push(event);
        if got.len() % 100 == 0 || got.len() == n {
            client
                .ack_events(&got[got.len() - got.len().min(100)..])
                .await;
        }
    }
    texts(&got)
}

async fn a_stopped_peer_catches_up_on_everything_in_order(t: Topology) {
    let (mut a, mut b) = two_nodes(t).await;
    let Pair {
        mut alice,
        bob,
        chat,
        bob_creds,
        ..
    } = chat_of_two(&a, &b).await;
    bob.close().await;
    b.kill9();
    let sent: Vec<String> = (0..1000).map(|i| format!("m{i}")).collect();
    for text in &sent {
        alice
            .ok(json!({"type":"sendMessage","chatId": chat,"message": text}))
            .await;
    }
    b.restart_same_port().await;
    // The home's outbox sender retries until beta is back.
    let mut bob = b.connect(&bob_creds).await;
    assert_eq!(receive(&mut bob, 1000).await, sent, "all, in order");
    assert!(bob.drain().await.is_empty(), "once");
    let history = bob
        .ok(json!({"type":"getHistory","chatId": chat,"limit": 1}))
        .await;
    assert_eq!(history["messages"][0]["seq"], 1000);
    a.kill9();
}

async fn sends_to_a_stopped_home_are_unavailable_then_applied_once(t: Topology) {
    let (mut a, b) = two_nodes(t).await;
    let Pair {
        alice,
        mut bob,
        chat,
        alice_creds,
        ..
    } = chat_of_two(&a, &b).await;
    alice.close().await;
    a.kill9();
    let send = |text: &str, id: &str| json!({"type":"sendMessage","chatId": chat,"message": text,"clientMsgId": id});
    for i in 0..3 {
        let answer = bob.request(send(&format!("r{i}"), &format!("c{i}"))).await;
        assert_eq!(answer["code"], "unavailable", "{answer}");
    }
    a.restart_same_port().await;
    // Retries with the same clientMsgIds until the home answers; then once more.
    let mut seqs = Vec::new();
    for i in 0..3 {
        let first = loop {
            let answer = bob.request(send(&format!("r{i}"), &format!("c{i}"))).await;
            if answer["type"] == "result" {
                break answer;
            }
            assert_eq!(answer["code"], "unavailable", "{answer}");
        };
        let again = bob.ok(send(&format!("r{i}"), &format!("c{i}"))).await;
        assert_eq!(again["messageId"], first["messageId"], "applied once");
        seqs.push(first["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs, [1, 2, 3]);
    let mut alice = a.connect(&alice_creds).await;
    assert_eq!(receive(&mut alice, 3).await, ["r0", "r1", "r2"]);
    assert!(alice.drain().await.is_empty(), "each once");
}

async fn a_home_killed_mid_burst_loses_nothing_it_answered(t: Topology) {
    let (mut a, b) = two_nodes(t).await;
    let Pair {
        mut alice,
        mut bob,
        chat,
        ..
    } = chat_of_two(&a, &b).await;
    for i in 0..400 {
        let frame = json!({"type":"sendMessage","id": format!("s{i}"),"chatId": chat,"message": format!("m{i}")});
        alice.send(&frame).await;
    }
    let mut answered = Vec::new();
    for i in 0..200 {
        let answer = alice.answer(&format!("s{i}")).await;
        assert_eq!(answer["type"], "result", "{answer}");
        answered.push(format!("m{i}"));
    }
    a.kill9();
    a.restart_same_port().await;
    // Everything alice was told is stored reaches beta, in order, once.
    let got = receive(&mut bob, answered.len()).await;
    assert_eq!(got, answered);
    let rest = bob.drain().await;
    let seqs: Vec<u64> = rest.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.iter().enumerate().all(|(i, s)| *s == 201 + i as u64),
        "whatever else was stored follows in order: {seqs:?}"
    );
}

/// Devices on both nodes pipeline sends into a chat whose home is alpha: each
/// device's results carry seqs in the order it sent, and every device sees
/// every other device's message once, in seq order.
async fn pipelined_sends_from_both_nodes_keep_each_devices_order(t: Topology) {
    const N: usize = 20;
    let (a, b) = two_nodes(t).await;
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    let bob2 = b.login("bob").await;
    let carol = b.user("carol").await;
    let mut devices = [
        a.connect(&alice).await,
        b.connect(&bob).await,
        b.connect(&bob2).await,
        b.connect(&carol).await,
    ];
    let created = devices[0]
        .ok(json!({"type":"createChat","participants":["bob@beta.test","carol@beta.test"]}))
        .await;
    let chat = created["chatId"].as_str().unwrap().to_owned();
    for client in devices.iter_mut() {
        next(client, "chatUpdate").await;
    }
    // Every frame is sent before any answer is read: beta's three devices
    // have up to N sends each in flight to alpha at once.
    for i in 0..N {
        for (d, client) in devices.iter_mut().enumerate() {
            let text = format!("d{d}-{i}");
            let frame = json!({"type":"sendMessage","id": text,"chatId": chat,"message": text,"clientMsgId": text});
            client.send(&frame).await;
        }
    }
    let mut seq_of = std::collections::HashMap::new();
    for (d, client) in devices.iter_mut().enumerate() {
        let mut seqs = Vec::new();
        for i in 0..N {
            let text = format!("d{d}-{i}");
            let answer = client.answer(&text).await;
            assert_eq!(answer["type"], "result", "{answer}");
            let seq = answer["seq"].as_u64().unwrap();
            seqs.push(seq);
            seq_of.insert(text, seq);
        }
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "device {d}'s seqs follow its send order: {seqs:?}"
        );
    }
    let mut all: Vec<u64> = seq_of.values().copied().collect();
    all.sort_unstable();
    assert_eq!(all, (1..=4 * N as u64).collect::<Vec<_>>(), "one seq each");
    for (d, client) in devices.iter_mut().enumerate() {
        let got = receive(client, 3 * N).await;
        let seqs: Vec<u64> = got.iter().map(|text| seq_of[text]).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "device {d} gets messages once, in seq order: {seqs:?}"
        );
        assert!(
            got.iter().all(|text| !text.starts_with(&format!("d{d}-"))),
            "device {d} gets no echo of its own sends"
        );
        assert!(client.drain().await.is_empty(), "device {d}: nothing more");
    }
}

async fn three_nodes_share_a_chat(t: Topology) {
    let (a, b) = two_nodes(t).await;
    let c = node_named("gamma.test", t).await;
    for (x, y) in [(&a, &c), (&c, &a), (&b, &c), (&c, &b)] {
        x.add_peer(y).await;
    }
    let mut alice = a.connect(&a.user("alice").await).await;
    let mut bob = b.connect(&b.user("bob").await).await;
    let mut carol = c.connect(&c.user("carol").await).await;
    let created = bob
        .ok(json!({"type":"createChat","participants":["alice@alpha.test","carol@gamma.test"]}))
        .await;
    let chat = created["chatId"].as_str().unwrap().to_owned();
    for client in [&mut alice, &mut bob, &mut carol] {
        next(client, "chatUpdate").await;
    }
    // beta is the home; alpha's and gamma's sends go through it.
    for (i, client) in [&mut alice, &mut bob, &mut carol].into_iter().enumerate() {
        let sent = client
            .ok(json!({"type":"sendMessage","chatId": chat,"message": format!("hello {i}")}))
            .await;
        assert_eq!(sent["seq"], i + 1);
    }
    assert_eq!(receive(&mut alice, 2).await, ["hello 1", "hello 2"]);
    assert_eq!(receive(&mut bob, 2).await, ["hello 0", "hello 2"]);
    assert_eq!(receive(&mut carol, 2).await, ["hello 0", "hello 1"]);
    for client in [&mut alice, &mut bob, &mut carol] {
        assert!(client.drain().await.is_empty());
    }
}

async fn remote_participants_download_attachments_from_the_home(t: Topology) {
    let (a, b) = two_nodes(t).await;
    let Pair {
        mut alice,
        mut bob,
        chat,
        ..
    } = chat_of_two(&a, &b).await;
    let mut carol = b.connect(&b.user("carol").await).await;
    let bytes = b"not really a picture, but bytes all the same".to_vec();
    let target = alice
        .ok(json!({"type":"getAttachmentTarget","size": bytes.len(),"contentType":"image/png","name":"cat.png"}))
        .await;
    let mut put = a.http().put(target["uploadUrl"].as_str().unwrap());
    for (name, value) in target["headers"].as_object().unwrap() {
        put = put.header(name.as_str(), value.as_str().unwrap());
    }
    let status = put.body(bytes.clone()).send().await.unwrap().status();
    assert!(status.is_success(), "{status}");
    let id = target["attachmentId"].as_str().unwrap().to_owned();
    alice
        .ok(json!({"type":"sendMessage","chatId": chat,"message":"a cat","attachments":[id]}))
        .await;
    let message = next(&mut bob, "newMessage").await;
    assert_eq!(message["attachments"][0]["attachmentId"], id.as_str());
    assert_eq!(message["attachments"][0]["name"], "cat.png");

    // bob's node asks the home for a URL; the bytes come from the home's store.
    let url = bob
        .ok(json!({"type":"getAttachmentUrl","attachmentId": id}))
        .await;
    let got = b
        .http()
        .get(url["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap().to_vec(), bytes);
    // carol, on the same node but not in the chat, may not.
    assert_eq!(
        carol
            .error_code(json!({"type":"getAttachmentUrl","attachmentId": id}))
            .await,
        "forbidden"
    );
    // bob may not send alice's attachment: his node does not hold it for him.
    assert_eq!(
        bob.error_code(
            json!({"type":"sendMessage","chatId": chat,"message":"","attachments":[id]})
        )
        .await,
        "unknown_attachment"
    );
}

in_every_topology!(
    a_chat_spans_two_nodes,
    remote_participants_download_attachments_from_the_home,
    three_nodes_share_a_chat,
    pipelined_sends_from_both_nodes_keep_each_devices_order,
    a_stopped_peer_catches_up_on_everything_in_order,
    sends_to_a_stopped_home_are_unavailable_then_applied_once,
    a_home_killed_mid_burst_loses_nothing_it_answered,
);
