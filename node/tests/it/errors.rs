//! Every error code and limit of the WebSocket protocol, and that refused input
//! leaves the session usable and no trace behind.

use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::TestNode;
use crate::support::node::Topology;
use crate::support::ws::Closed;

async fn new_chat(a: &mut crate::support::WsClient, others: &[&str]) -> String {
    let created = a
        .ok(json!({"type":"createChat","participants": others}))
        .await;
    created["chatId"].as_str().unwrap().to_owned()
}

async fn malformed_frames_get_errors_and_the_session_stays_open(t: Topology) {
    let node = TestNode::start(t).await;
    let alice = node.user("alice").await;
    let mut a = node.connect(&alice).await;

    a.send_text("{not json".into()).await;
    let err = a.recv().await;
    assert_eq!(err["type"], "error");
    assert_eq!(err["code"], "bad_request");
    assert!(err.get("id").is_none());

    a.send_text(r#"{"id":"x1"}"#.into()).await;
    let err = a.recv().await;
    assert_eq!(
        (err["id"].as_str(), err["code"].as_str()),
        (Some("x1"), Some("bad_request"))
    );

    assert_eq!(
        a.error_code(json!({"type":"teleport"})).await,
        "unknown_type"
    );
    assert_eq!(
        a.error_code(json!({"type":"sendMessage","chatId":"x"}))
            .await,
        "bad_request"
    );
    a.send_message(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(a.recv().await["code"], "bad_request");
    // Still open and working.
    a.ok(json!({"type":"listChats"})).await;
}

async fn frames_over_64_kib_close_the_socket_with_1009(t: Topology) {
    let node = TestNode::start(t).await;
    let alice = node.user("alice").await;
    let mut a = node.connect(&alice).await;
    // Exactly at the limit is fine (a refused command, but the session lives).
    let pad = 64 * 1024 - r#"{"type":"listChats","id":"a","pad":""}"#.len();
    let at_limit = format!(
        r#"{{"type":"listChats","id":"a","pad":"{}"}}"#,
        "x".repeat(pad)
    );
    assert_eq!(at_limit.len(), 64 * 1024);
    a.send_text(at_limit).await;
    assert_eq!(a.recv().await["type"], "result");
    let over = format!(
        r#"{{"type":"listChats","id":"b","pad":"{}"}}"#,
        "x".repeat(pad + 1)
    );
    a.send_text(over).await;
    assert_eq!(a.closed().await, Closed::Code(1009));
}

async fn message_and_participant_limits(t: Topology) {
    let node = TestNode::start(t).await;
    let alice = node.user("alice").await;
    let bob = node.user("bob").await;
    let mut a = node.connect(&alice).await;
    let chat = new_chat(&mut a, &["bob"]).await;

    let exact = "x".repeat(16 * 1024);
    a.ok(json!({"type":"sendMessage","chatId":chat,"message":exact}))
        .await;
    let over = "x".repeat(16 * 1024 + 1);
    assert_eq!(
        a.error_code(json!({"type":"sendMessage","chatId":chat,"message":over}))
            .await,
        "message_too_large"
    );
    let eleven: Vec<String> = (0..11).map(|i| format!("att{i}")).collect();
    assert_eq!(
        a.error_code(
            json!({"type":"sendMessage","chatId":chat,"message":"x","attachments":eleven})
        )
        .await,
        "bad_request"
    );
    assert_eq!(
        a.error_code(
            json!({"type":"sendMessage","chatId":chat,"message":"x","attachments":["nope"]})
        )
        .await,
        "unknown_attachment"
    );
    // Refused sends left nothing: only the first message exists.
    let history = a.ok(json!({"type":"getHistory","chatId":chat})).await;
    assert_eq!(history["messages"].as_array().unwrap().len(), 1);

    // 100 participants counting the creator is the limit.
    let mut names = Vec::new();
    for i in 0..100 {
        let name = format!("u{i:03}");
        node.add_user(&name).await;
        names.push(name);
    }
    assert_eq!(
        a.error_code(json!({"type":"createChat","participants": names}))
            .await,
        "too_many_participants"
    );
    let full = new_chat(
        &mut a,
        &names[..99].iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(
        a.error_code(
            json!({"type":"modifyChatParticipants","chatId":full,"userId":"bob","operation":"ADD"})
        )
        .await,
        "too_many_participants"
    );
    assert_eq!(
        a.error_code(json!({"type":"createChat","participants":["nobody"]}))
            .await,
        "unknown_user"
    );
    assert_eq!(
        a.error_code(json!({"type":"createChat","participants":["bob@elsewhere.example"]}))
            .await,
        "unknown_user"
    );
    let _ = bob;
}

async fn participants_and_permissions(t: Topology) {
    let node = TestNode::start(t).await;
    let alice = node.user("alice").await;
    let bob = node.user("bob").await;
    let carol = node.user("carol").await;
    node.add_user("dave").await;
    let mut a = node.connect(&alice).await;
    let mut b = node.connect(&bob).await;
    let mut c = node.connect(&carol).await;
    let chat = new_chat(&mut a, &["bob"]).await;
    let unknown = "01J00000000000000000000000";

    // Outsiders can do nothing with the chat.
    for command in [
        json!({"type":"sendMessage","chatId":chat,"message":"let me in"}),
        json!({"type":"getHistory","chatId":chat}),
        json!({"type":"markRead","chatId":chat,"seq":1}),
        json!({"type":"modifyChatParticipants","chatId":chat,"userId":"carol","operation":"ADD"}),
    ] {
        assert_eq!(c.error_code(command).await, "not_participant");
    }
    assert_eq!(
        a.error_code(json!({"type":"sendMessage","chatId":unknown,"message":"?"}))
            .await,
        "unknown_chat"
    );
    assert_eq!(
        a.error_code(json!({"type":"getHistory","chatId":"not-an-id"}))
            .await,
        "unknown_chat"
    );

    // Any participant may add.
    let added = b
        .ok(json!({"type":"modifyChatParticipants","chatId":chat,"userId":"carol","operation":"ADD"}))
        .await;
    assert_eq!(
        added["participants"],
        json!(["alice@localhost", "bob@localhost", "carol@localhost"])
    );
    // Only the creator removes others.
    assert_eq!(
        b.error_code(json!({"type":"modifyChatParticipants","chatId":chat,"userId":"carol","operation":"REMOVE"}))
            .await,
        "forbidden"
    );
    assert_eq!(
        a.error_code(json!({"type":"modifyChatParticipants","chatId":chat,"userId":"dave","operation":"REMOVE"}))
            .await,
        "not_participant"
    );
    assert_eq!(
        a.error_code(json!({"type":"modifyChatParticipants","chatId":chat,"userId":"ghost","operation":"ADD"}))
            .await,
        "unknown_user"
    );
    c.drain().await;
    b.drain().await;

    // The creator removes carol: she gets a last chatUpdate, then nothing.
    a.ok(json!({"type":"modifyChatParticipants","chatId":chat,"userId":"carol","operation":"REMOVE"}))
        .await;
    let last = c.event().await;
    assert_eq!(last["type"], "chatUpdate");
    assert_eq!(last["reason"], "removed");
    assert_eq!(
        last["participants"],
        json!(["alice@localhost", "bob@localhost"])
    );
    c.ack_events(&[last]).await;
    a.ok(json!({"type":"sendMessage","chatId":chat,"message":"after carol left"}))
        .await;
    assert!(c.drain().await.is_empty());
    assert_eq!(
        c.error_code(json!({"type":"sendMessage","chatId":chat,"message":"hello?"}))
            .await,
        "not_participant"
    );
    let chats = c.ok(json!({"type":"listChats"})).await;
    assert_eq!(chats["chats"], json!([]));

    // A user may remove itself.
    b.ok(
        json!({"type":"modifyChatParticipants","chatId":chat,"userId":"bob","operation":"REMOVE"}),
    )
    .await;
}

async fn client_msg_id_makes_sends_idempotent(t: Topology) {
    let node = TestNode::start(t).await;
    let alice = node.user("alice").await;
    let bob = node.user("bob").await;
    let mut a = node.connect(&alice).await;
    let mut b = node.connect(&bob).await;
    let chat = new_chat(&mut a, &["bob"]).await;
    b.drain().await;
    let send = json!({"type":"sendMessage","chatId":chat,"message":"once","clientMsgId":"c-1"});
    let first = a.ok(send.clone()).await;
    let retry = a.ok(send).await;
    assert_eq!(first["messageId"], retry["messageId"]);
    assert_eq!(first["seq"], retry["seq"]);
    assert_eq!(first["sentAt"], retry["sentAt"]);
    let events = b.drain().await;
    assert_eq!(events.len(), 1, "{events:?}");
    // Another id is another message.
    let other = a
        .ok(json!({"type":"sendMessage","chatId":chat,"message":"twice","clientMsgId":"c-2"}))
        .await;
    assert_eq!(other["seq"], 2);
}

async fn sends_over_the_rate_limit_are_refused(t: Topology) {
    let node = TestNode::with_config(
        t,
        "registration = \"open\"\n[limits]\nsend_rate = 0.001\nsend_burst = 3\n",
    )
    .await;
    let alice = node.user("alice").await;
    let mut a = node.connect(&alice).await;
    let chat = new_chat(&mut a, &[]).await;
    for _ in 0..3 {
        a.ok(json!({"type":"sendMessage","chatId":chat,"message":"x"}))
            .await;
    }
    let refused = a
        .request(json!({"type":"sendMessage","chatId":chat,"message":"x"}))
        .await;
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    // The connection's bucket refills one token in 1000 s.
    let retry = refused["retryAfterMs"].as_u64().expect("retryAfterMs");
    assert!((900_000..=1_000_000).contains(&retry), "{refused}");
}

async fn any_participant_may_rename_a_chat(t: Topology) {
    let node = TestNode::start(t).await;
    let alice = node.user("alice").await;
    let bob = node.user("bob").await;
    let carol = node.user("carol").await;
    let mut a = node.connect(&alice).await;
    let mut b = node.connect(&bob).await;
    let mut c = node.connect(&carol).await;
    let chat = new_chat(&mut a, &["bob"]).await;
    a.drain().await;
    b.drain().await;
    b.ok(json!({"type":"renameChat","chatId":chat,"name":"Exam Prep"}))
        .await;
    for client in [&mut a, &mut b] {
        let update = client.event().await;
        assert_eq!(update["type"], "chatUpdate");
        assert_eq!(update["reason"], "renamed");
        assert_eq!(update["name"], "Exam Prep");
    }
    let chats = a.ok(json!({"type":"listChats"})).await;
    assert_eq!(chats["chats"][0]["name"], "Exam Prep");
    assert_eq!(
        c.error_code(json!({"type":"renameChat","chatId":chat,"name":"mine"}))
            .await,
        "not_participant"
    );
    assert_eq!(
        a.error_code(json!({"type":"renameChat","chatId":chat,"name":"x".repeat(129)}))
            .await,
        "bad_request"
    );
}

crate::in_every_topology!(any_participant_may_rename_a_chat);

crate::in_every_topology!(
    malformed_frames_get_errors_and_the_session_stays_open,
    frames_over_64_kib_close_the_socket_with_1009,
    message_and_participant_limits,
    participants_and_permissions,
    client_msg_id_makes_sends_idempotent,
    sends_over_the_rate_limit_are_refused
);
