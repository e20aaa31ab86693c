//! The admin API's toolbox (what the `natter` CLI calls) against real nodes
//! in every topology: with NATS the API is the core's, and its orders reach
//! connections held by gateways in other processes.

use reqwest::Method;
use serde_json::json;

use crate::federation::{next, two_nodes};
use crate::in_every_topology;
use crate::support::TestNode;
use crate::support::node::Topology;
use crate::support::ws::Closed;

async fn admin_orders_reach_connections_wherever_they_are(t: Topology) {
    let node = TestNode::start(t).await;
    let alice = node.user("alice").await;
    let bob = node.user("bob").await;
    let mut a = node.connect(&alice).await;
    let mut b = node.connect(&bob).await;
    let chat = a
        .ok(json!({"type":"createChat","participants":["bob"],"name":"Ops"}))
        .await["chatId"]
        .as_str()
        .unwrap()
        .to_owned();
    a.ok(json!({"type":"sendMessage","chatId": chat,"message":"hi"}))
        .await;
    next(&mut b, "chatUpdate").await;
    next(&mut b, "newMessage").await;
    next(&mut a, "chatUpdate").await;

    // Where each device is online, as the core sees it.
    let (status, devices) = node.admin(Method::GET, "/users/bob/devices", None).await;
    assert_eq!(status, 200, "{devices}");
    assert_eq!(devices["devices"][0]["deviceId"], bob.device_id.as_str());
    assert!(devices["devices"][0]["online"].is_string(), "{devices}");
    assert_eq!(devices["devices"][0]["inboxDepth"], 0, "acked: {devices}");
    let (_, stats) = node.admin(Method::GET, "/stats", None).await;
    assert_eq!(stats["onlineDevices"], 2, "{stats}");
    assert_eq!(stats["users"], 2);
    assert_eq!(stats["chats"], 1);

    // Deleting the chat tells both participants.
    let (status, deleted) = node
        .admin(Method::DELETE, &format!("/chats/{chat}"), None)
        .await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted["messagesRemoved"], 1);
    for ws in [&mut a, &mut b] {
        let update = next(ws, "chatUpdate").await;
        assert_eq!(update["reason"], "deleted");
        assert_eq!(update["chatId"], chat.as_str());
        assert_eq!(update["participants"], json!([]));
    }
    let (status, _) = node
        .admin(Method::GET, &format!("/chats/{chat}"), None)
        .await;
    assert_eq!(status, 404);

    // Revoking bob's device closes its connection; deleting alice closes hers.
    let path = format!("/users/bob/devices/{}", bob.device_id);
    let (status, _) = node.admin(Method::DELETE, &path, None).await;
    assert_eq!(status, 204);
    assert_eq!(b.closed().await, Closed::Code(4401));
    let (status, gone) = node.admin(Method::DELETE, "/users/alice", None).await;
    assert_eq!(status, 200, "{gone}");
    assert_eq!(gone["devicesRemoved"], 1);
    assert_eq!(a.closed().await, Closed::Code(4401));
    let (status, _) = node
        .post(
            "/v1/login",
            json!({"username":"alice","password":"password123"}),
        )
        .await;
    assert_eq!(status, 401);
}

/// A chat's home deletes it on every node; a participating node refuses to
/// delete its copy; deleting a user leaves the chats homed elsewhere there.
async fn deleting_federated_chats_and_users(t: Topology) {
    let (a, b) = two_nodes(t).await;
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    let bob2 = b.login("bob").await;
    let mut a1 = a.connect(&alice).await;
    let mut b1 = b.connect(&bob).await;
    let mut b2 = b.connect(&bob2).await;
    let chat = a1
        .ok(json!({"type":"createChat","participants":["bob@beta.test"],"name":"Across"}))
        .await["chatId"]
        .as_str()
        .unwrap()
        .to_owned();
    next(&mut a1, "chatUpdate").await;
    next(&mut b1, "chatUpdate").await;
    b1.ok(json!({"type":"sendMessage","chatId": chat,"message":"from beta"}))
        .await;
    next(&mut a1, "newMessage").await;
    // Bob's other device has it once beta's copy holds it.
    next(&mut b2, "chatUpdate").await;
    next(&mut b2, "newMessage").await;

    // Beta holds a copy: it cannot delete it, and says who can.
    let (status, refused) = b
        .admin(Method::DELETE, &format!("/chats/{chat}"), None)
        .await;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(refused["code"], "forbidden");
    assert!(
        refused["message"].as_str().unwrap().contains("alpha.test"),
        "{refused}"
    );
    let (_, shown) = b.admin(Method::GET, &format!("/chats/{chat}"), None).await;
    assert_eq!(shown["home"], "alpha.test", "{shown}");
    assert_eq!(shown["messageCount"], 1, "{shown}");

    // The home deletes it: beta's user is told, beta's copy goes.
    let (status, deleted) = a
        .admin(Method::DELETE, &format!("/chats/{chat}"), None)
        .await;
    assert_eq!(status, 200, "{deleted}");
    let update = next(&mut a1, "chatUpdate").await;
    assert_eq!(update["reason"], "deleted");
    let update = next(&mut b1, "chatUpdate").await;
    assert_eq!(update["reason"], "deleted");
    assert_eq!(update["chatId"], chat.as_str());
    let (status, _) = b.admin(Method::GET, &format!("/chats/{chat}"), None).await;
    assert_eq!(status, 404, "the copy is deleted with the event");
    // Its mirrored message goes with beta's next sweep.
    let swept = b.sweep().await;
    assert_eq!(swept["deletedChatMessagesRemoved"], 1, "{swept}");

    // Deleting bob (on beta) takes him out of alpha's chat, at alpha.
    let chat = a1
        .ok(json!({"type":"createChat","participants":["bob@beta.test"]}))
        .await["chatId"]
        .as_str()
        .unwrap()
        .to_owned();
    next(&mut a1, "chatUpdate").await;
    next(&mut b1, "chatUpdate").await;
    let (status, gone) = b.admin(Method::DELETE, "/users/bob", None).await;
    assert_eq!(status, 200, "{gone}");
    assert_eq!(gone["chatsLeft"], 1);
    let update = next(&mut a1, "chatUpdate").await;
    assert_eq!(update["reason"], "removed");
    assert_eq!(update["participants"], json!(["alice@alpha.test"]));
    let (_, shown) = a.admin(Method::GET, &format!("/chats/{chat}"), None).await;
    assert_eq!(
        shown["participants"],
        json!(["alice@alpha.test"]),
        "{shown}"
    );
}

in_every_topology!(
    admin_orders_reach_connections_wherever_they_are,
    deleting_federated_chats_and_users,
);
