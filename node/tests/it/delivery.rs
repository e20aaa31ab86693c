//! Fan-out to every device, offline delivery, acks and replay.

use serde_json::{Value, json};

use crate::support::node::Topology;
use crate::support::{TestNode, WsClient};

fn ids(events: &[Value], field: &str) -> Vec<Value> {
    events.iter().map(|e| e[field].clone()).collect()
}

/// Creates a chat from `creator` with `others` and acks the chatUpdate on each client.
async fn chat_with(
    creator: &mut WsClient,
    others: &[&str],
    clients: &mut [&mut WsClient],
) -> String {
    let created = creator
        .ok(json!({"type":"createChat","participants": others, "name":"Study Group"}))
        .await;
    let chat = created["chatId"].as_str().unwrap().to_owned();
    for client in clients.iter_mut() {
        let update = client.event().await;
        assert_eq!(update["type"], "chatUpdate");
        assert_eq!(update["chatId"], chat.as_str());
        client.ack_events(&[update]).await;
    }
    chat
}

async fn every_device_of_every_participant_gets_every_event(t: Topology) {
    let node = TestNode::start(t).await;
    let alice1 = node.user("alice").await;
    let alice2 = node.login("alice").await;
    let bob1 = node.user("bob").await;
    let bob2 = node.login("bob").await;
    let carol = node.user("carol").await;
    let mut a1 = node.connect(&alice1).await;
    let mut a2 = node.connect(&alice2).await;
    let mut b1 = node.connect(&bob1).await;
    let mut b2 = node.connect(&bob2).await;
    let mut c = node.connect(&carol).await;
    assert_eq!(a1.ready["userId"], alice1.user_id.as_str());
    assert_eq!(a1.ready["deviceId"], alice1.device_id.as_str());
    assert_eq!(a1.ready["protocol"], 1);

    let created = a1
        .ok(json!({"type":"createChat","participants":["bob","carol@localhost"],"name":"Study Group"}))
        .await;
    let chat = created["chatId"].as_str().unwrap().to_owned();
    // chatUpdate reaches every device of every participant, the acting one included.
    for client in [&mut a1, &mut a2, &mut b1, &mut b2, &mut c] {
        let update = client.event().await;
        assert_eq!(update["type"], "chatUpdate");
        assert_eq!(update["chatId"], chat.as_str());
        assert_eq!(update["reason"], "created");
        assert_eq!(update["name"], "Study Group");
        assert_eq!(
            update["participants"],
            json!(["alice@localhost", "bob@localhost", "carol@localhost"])
        );
        client.ack_events(&[update]).await;
    }

    let sent = a1
        .ok(json!({"type":"sendMessage","chatId":chat,"message":"hi"}))
        .await;
    assert_eq!(sent["seq"], 1);
    let message_id = sent["messageId"].clone();
    for client in [&mut a2, &mut b1, &mut b2, &mut c] {
        let event = client.event().await;
        assert_eq!(event["type"], "newMessage");
        assert_eq!(event["messageId"], message_id);
        assert_eq!(event["chatId"], chat.as_str());
        assert_eq!(event["seq"], 1);
        assert_eq!(event["from"], "alice@localhost");
        assert_eq!(event["message"], "hi");
        assert_eq!(event["attachments"], json!([]));
        client.ack_events(&[event]).await;
    }
    // The sending device got its result, and no event.
    assert!(a1.drain().await.is_empty());
    for client in [&mut a2, &mut b1, &mut b2, &mut c] {
        assert!(client.drain().await.is_empty());
    }
}

async fn an_offline_device_gets_its_backlog_in_order_until_it_acks(t: Topology) {
    let node = TestNode::start(t).await;
    let alice = node.user("alice").await;
    let bob = node.user("bob").await;
    let mut a = node.connect(&alice).await;
    let mut b = node.connect(&bob).await;
    let chat = chat_with(&mut a, &["bob"], &mut [&mut b]).await;
    a.drain().await;
    b.close().await;

    let mut sent = Vec::new();
    for i in 1..=5 {
        let result = a
            .ok(json!({"type":"sendMessage","chatId":chat,"message":format!("m{i}")}))
            .await;
        sent.push(result["messageId"].clone());
    }

    let mut b = node.connect(&bob).await;
    let backlog = b.drain().await;
    assert_eq!(ids(&backlog, "messageId"), sent);
    assert_eq!(
        ids(&backlog, "seq"),
        (1..=5).map(|s| json!(s)).collect::<Vec<_>>()
    );
    b.ack_events(&backlog[..3]).await;
    b.close().await;

    let mut b = node.connect(&bob).await;
    let rest = b.drain().await;
    assert_eq!(ids(&rest, "deliveryId"), ids(&backlog[3..], "deliveryId"));
    assert_eq!(ids(&rest, "messageId"), sent[3..].to_vec());
    b.ack_events(&rest).await;
    b.close().await;

    let mut b = node.connect(&bob).await;
    assert!(b.drain().await.is_empty());
}

async fn a_device_that_was_off_catches_up_on_what_another_device_saw(t: Topology) {
    let node = TestNode::start(t).await;
    let alice = node.user("alice").await;
    let phone = node.user("bob").await;
    let laptop = node.login("bob").await;
    let mut a = node.connect(&alice).await;
    let mut p = node.connect(&phone).await;
    let chat = chat_with(&mut a, &["bob"], &mut [&mut p]).await;
    for i in 0..3 {
        a.ok(json!({"type":"sendMessage","chatId":chat,"message":format!("x{i}")}))
            .await;
    }
    let seen = p.drain().await;
    assert_eq!(seen.len(), 3);
    p.ack_events(&seen).await;
    // The laptop was off the whole time: it gets the chat and all three.
    let mut l = node.connect(&laptop).await;
    let caught_up = l.drain().await;
    assert_eq!(caught_up[0]["type"], "chatUpdate");
    assert_eq!(ids(&caught_up[1..], "messageId"), ids(&seen, "messageId"));
}

async fn unacked_events_are_resent_on_the_same_connection(t: Topology) {
    let node = TestNode::with_config(
        t,
        &format!(
            "{}\n[websocket]\nresend_after = \"200ms\"\n",
            crate::support::node::BASE_CONFIG
        ),
    )
    .await;
    let alice = node.user("alice").await;
    let bob = node.user("bob").await;
    let mut a = node.connect(&alice).await;
    let mut b = node.connect(&bob).await;
    let chat = chat_with(&mut a, &["bob"], &mut [&mut b]).await;
    a.ok(json!({"type":"sendMessage","chatId":chat,"message":"again?"}))
        .await;
    let first = b.event().await;
    // Not acked: the same delivery comes again, with the same ids.
    let again = b.event().await;
    assert_eq!(again["deliveryId"], first["deliveryId"]);
    assert_eq!(again["messageId"], first["messageId"]);
    b.ack_events(&[again]).await;
    assert!(b.drain().await.is_empty());
}

async fn history_and_chat_list_follow_the_chat(t: Topology) {
    let node = TestNode::start(t).await;
    let alice = node.user("alice").await;
    let bob = node.user("bob").await;
    let mut a = node.connect(&alice).await;
    let mut b = node.connect(&bob).await;
    let chat = chat_with(&mut a, &["bob"], &mut [&mut b]).await;
    for i in 1..=7 {
        a.ok(json!({"type":"sendMessage","chatId":chat,"message":format!("h{i}")}))
            .await;
    }
    let all = a.ok(json!({"type":"getHistory","chatId":chat})).await;
    let seqs: Vec<u64> = all["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    assert!(all["messages"][0].get("deliveryId").is_none());
    let page = a
        .ok(json!({"type":"getHistory","chatId":chat,"beforeSeq":6,"limit":2}))
        .await;
    assert_eq!(page["messages"][0]["seq"], 4);
    assert_eq!(page["messages"][1]["seq"], 5);
    let after = a
        .ok(json!({"type":"getHistory","chatId":chat,"afterSeq":5}))
        .await;
    assert_eq!(after["messages"].as_array().unwrap().len(), 2);

    let listed = b.ok(json!({"type":"listChats"})).await;
    let summary = &listed["chats"][0];
    assert_eq!(summary["chatId"], chat.as_str());
    assert_eq!(summary["lastSeq"], 7);
    assert_eq!(summary["unread"], 7);
    b.ok(json!({"type":"markRead","chatId":chat,"seq":5})).await;
    let listed = b.ok(json!({"type":"listChats"})).await;
    assert_eq!(listed["chats"][0]["unread"], 2);
    // The sender has read what it sent.
    let listed = a.ok(json!({"type":"listChats"})).await;
    assert_eq!(listed["chats"][0]["unread"], 0);
}

async fn history_of_large_messages_comes_in_pages(t: Topology) {
    let node = TestNode::start(t).await;
    let alice = node.user("alice").await;
    let mut a = node.connect(&alice).await;
    let chat = a.ok(json!({"type":"createChat","participants":[]})).await["chatId"].clone();
    let big = "x".repeat(16 * 1024);
    for _ in 0..100 {
        a.ok(json!({"type":"sendMessage","chatId":chat,"message":big}))
            .await;
    }
    // 1.6 MB of messages: more than one answer carries (or NATS' 1 MiB allows).
    let mut seqs = Vec::new();
    let mut before = 101;
    while before > 1 {
        let page = a
            .ok(json!({"type":"getHistory","chatId":chat,"beforeSeq":before,"limit":200}))
            .await;
        let messages = page["messages"].as_array().unwrap();
        assert!(
            !messages.is_empty() && messages.len() < 100,
            "{}",
            messages.len()
        );
        let page_seqs: Vec<u64> = messages
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect();
        before = page_seqs[0];
        seqs.splice(0..0, page_seqs);
    }
    assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
}

crate::in_every_topology!(history_of_large_messages_comes_in_pages);

async fn a_client_msg_id_is_scoped_to_its_chat(t: Topology) {
    let node = TestNode::start(t).await;
    let mut a = node.connect(&node.user("alice").await).await;
    node.user("bob").await;
    let mut chats = Vec::new();
    for _ in 0..2 {
        let created = a
            .ok(json!({"type":"createChat","participants":["bob"]}))
            .await;
        chats.push(created["chatId"].as_str().unwrap().to_owned());
    }
    let send = |chat: &str| json!({"type":"sendMessage","chatId": chat,"message":"hi","clientMsgId":"same"});
    let first = a.ok(send(&chats[0])).await;
    let other = a.ok(send(&chats[1])).await;
    assert_ne!(
        first["messageId"], other["messageId"],
        "another chat, another message"
    );
    assert_eq!(other["seq"], 1);
    let retry = a.ok(send(&chats[0])).await;
    assert_eq!(
        retry["messageId"], first["messageId"],
        "a retry in the same chat"
    );
    for chat in &chats {
        let history = a.ok(json!({"type":"getHistory","chatId": chat})).await;
        assert_eq!(history["messages"].as_array().unwrap().len(), 1);
    }
}

async fn the_chat_list_comes_in_pages(t: Topology) {
    let node = TestNode::start(t).await;
    let mut a = node.connect(&node.user("alice").await).await;
    node.user("bob").await;
    for i in 0..5 {
        a.ok(json!({"type":"createChat","participants":["bob"],"name": format!("c{i}")}))
            .await;
    }
    let all = a.ok(json!({"type":"listChats"})).await;
    assert!(all.get("nextCursor").is_none(), "{all}");
    let expected: Vec<Value> = all["chats"].as_array().unwrap().clone();
    assert_eq!(expected.len(), 5);
    let mut paged = Vec::new();
    let mut cursor = Value::Null;
    loop {
        let mut command = json!({"type":"listChats","limit": 2});
        if !cursor.is_null() {
            command["cursor"] = cursor.clone();
        }
        let page = a.ok(command).await;
        let chats = page["chats"].as_array().unwrap();
        assert!(chats.len() <= 2);
        paged.extend(chats.iter().cloned());
        cursor = page.get("nextCursor").cloned().unwrap_or(Value::Null);
        if cursor.is_null() {
            break;
        }
    }
    assert_eq!(paged, expected, "the pages are the list, in order");
    assert_eq!(
        a.error_code(json!({"type":"listChats","limit": 501})).await,
        "bad_request"
    );
    assert_eq!(
        a.error_code(json!({"type":"listChats","cursor":"nonsense"}))
            .await,
        "bad_request"
    );
}

crate::in_every_topology!(
    the_chat_list_comes_in_pages,
    a_client_msg_id_is_scoped_to_its_chat,
    every_device_of_every_participant_gets_every_event,
    an_offline_device_gets_its_backlog_in_order_until_it_acks,
    a_device_that_was_off_catches_up_on_what_another_device_saw,
    unacked_events_are_resent_on_the_same_connection,
    history_and_chat_list_follow_the_chat
);
