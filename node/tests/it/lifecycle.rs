//! Retention, device expiry, displacement, dead and slow clients, shutdown.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::node::BASE_CONFIG;
use crate::support::node::Topology;
use crate::support::ws::Closed;
use crate::support::{TestNode, eventually};

const HOUR: Duration = Duration::from_secs(3600);

async fn retention_drops_old_events_and_tells_the_device(t: Topology) {
    let node =
        TestNode::with_config(t, &format!("{BASE_CONFIG}\n[retention]\ninbox = \"1h\"\n")).await;
    let alice = node.user("alice").await;
    let bob = node.user("bob").await;
    let mut a = node.connect(&alice).await;
    let mut b = node.connect(&bob).await;
    let chat = a
        .ok(json!({"type":"createChat","participants":["bob"]}))
        .await["chatId"]
        .clone();
    for client in [&mut a, &mut b] {
        let update = client.event().await;
        client.ack_events(&[update]).await;
    }
    b.close().await;
    for i in 0..3 {
        a.ok(json!({"type":"sendMessage","chatId":chat,"message":format!("old {i}")}))
            .await;
    }
    // Not old enough yet: the sweep keeps them.
    node.advance_clock(HOUR / 2).await;
    assert_eq!(node.sweep().await["entriesExpired"], 0);
    node.advance_clock(HOUR).await;
    a.ok(json!({"type":"sendMessage","chatId":chat,"message":"fresh"}))
        .await;
    let report = node.sweep().await;
    assert_eq!(report["entriesExpired"], 3, "{report}");
    assert_eq!(report["devicesNotified"], 1, "{report}");

    let mut b = node.connect(&bob).await;
    let events = b.drain().await;
    assert_eq!(events.len(), 2, "{events:?}");
    // The fresh message was queued before the notice; both arrive, oldest first.
    assert_eq!(events[0]["message"], "fresh");
    let notice = &events[1];
    assert_eq!(notice["type"], "expired");
    assert_eq!(notice["count"], 3);
    assert!(notice["oldestAt"].as_str().unwrap() <= notice["newestAt"].as_str().unwrap());
    b.ack_events(&events).await;
    b.close().await;
    let mut b = node.connect(&bob).await;
    assert!(b.drain().await.is_empty());
    // History still has every message.
    let history = b.ok(json!({"type":"getHistory","chatId":chat})).await;
    assert_eq!(history["messages"].as_array().unwrap().len(), 4);
}

async fn the_sweep_pages_through_every_old_key(t: Topology) {
    // Four rows per step: eleven idempotency keys, six updates and bob's
    // seventeen queued events take several steps, and every one is looked at.
    let config = format!("{BASE_CONFIG}\n[retention]\ninbox = \"1h\"\nsweep_step_rows = 4\n");
    let node = TestNode::with_config(t, &config).await;
    let alice = node.user("alice").await;
    let bob = node.user("bob").await;
    let mut a = node.connect(&alice).await;
    let chat = a
        .ok(json!({"type":"createChat","participants":["bob"]}))
        .await["chatId"]
        .clone();
    for i in 0..5 {
        a.ok(json!({"type":"renameChat","chatId":chat,"name":format!("name {i}")}))
            .await;
    }
    let send = |i: usize| json!({"type":"sendMessage","chatId":chat,"message":"x","clientMsgId":format!("k{i}")});
    for i in 0..11 {
        a.ok(send(i)).await;
    }
    let events = a.drain().await;
    a.ack_events(&events).await;
    node.advance_clock(2 * HOUR).await;
    let report = node.sweep().await;
    assert_eq!(report["idempotencyKeysRemoved"], 11, "{report}");
    assert_eq!(report["updatesRemoved"], 6, "{report}");
    assert_eq!(report["entriesExpired"], 17, "{report}");
    assert_eq!(report["devicesNotified"], 1, "{report}");
    // Bob's device gets one notice for all of them.
    let mut b = node.connect(&bob).await;
    let events = b.drain().await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "expired");
    assert_eq!(events[0]["count"], 17);
    // The key is gone: the same clientMsgId is a new message now.
    assert_eq!(a.ok(send(0)).await["seq"], 12);
    let report = node.sweep().await;
    assert_eq!(report["idempotencyKeysRemoved"], 0, "{report}");
}

/// A failed commit is answered (nothing of it stored) and takes the node out
/// of rotation: `/readyz` answers 503 from then on.
async fn a_failed_store_write_makes_the_node_unready(t: Topology) {
    let config = BASE_CONFIG.replace(
        "adjustable_clock = true",
        "adjustable_clock = true\nstore_faults = true",
    );
    let node = TestNode::with_config(t, &config).await;
    let alice = node.user("alice").await;
    let mut a = node.connect(&alice).await;
    let chat = a.ok(json!({"type":"createChat","participants":[]})).await["chatId"].clone();
    a.ok(json!({"type":"sendMessage","chatId":chat,"message":"stored"}))
        .await;
    let readyz = |url: String| {
        let request = node.http().get(format!("{url}/readyz"));
        async move {
            let r = request.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(readyz(node.main_url().to_owned()).await.0, 200);
    let (status, _) = node
        .admin(reqwest::Method::POST, "/store-fault", None)
        .await;
    assert_eq!(status, 204);
    let code = a
        .error_code(json!({"type":"sendMessage","chatId":chat,"message":"lost"}))
        .await;
    assert_eq!(code, "internal");
    for url in [node.main_url().to_owned(), node.main_admin_url().to_owned()] {
        let (status, body) = readyz(url).await;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("store failed a write"), "{body}");
    }
    let history = a.ok(json!({"type":"getHistory","chatId":chat})).await;
    let messages = history["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "only what was answered ok is stored");
}

/// Without `testing.store_faults` the admin API cannot break the store.
async fn store_faults_are_off_by_default(t: Topology) {
    let node = TestNode::start(t).await;
    let (status, _) = node
        .admin(reqwest::Method::POST, "/store-fault", None)
        .await;
    assert_eq!(status, 403);
}

async fn unused_devices_are_deactivated(t: Topology) {
    let node = TestNode::with_config(
        t,
        &format!("{BASE_CONFIG}\n[retention]\ndevice_ttl = \"1h\"\n"),
    )
    .await;
    let phone = node.user("bob").await;
    let old_laptop = node.login("bob").await;
    let mut p = node.connect(&phone).await;
    node.advance_clock(2 * HOUR).await;
    let report = node.sweep().await;
    // The laptop was never seen; the phone is online, so it stays.
    assert_eq!(report["devicesDeactivated"], 1, "{report}");
    p.ok(json!({"type":"listChats"})).await;
    let refused = tokio_tungstenite::connect_async({
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut r = node.ws_url().into_client_request().unwrap();
        r.headers_mut().insert(
            "authorization",
            format!("Bearer {}", old_laptop.token).parse().unwrap(),
        );
        r
    })
    .await;
    assert!(
        refused.is_err(),
        "a deactivated device's token no longer works"
    );
    let (_, users) = node.admin(reqwest::Method::GET, "/users", None).await;
    assert_eq!(users["users"][0]["devices"], 1);
}

async fn a_second_connection_of_a_device_displaces_the_first(t: Topology) {
    let node = TestNode::start(t).await;
    let alice = node.user("alice").await;
    let bob = node.user("bob").await;
    let mut a = node.connect(&alice).await;
    let mut first = node.connect(&bob).await;
    let mut second = node.connect(&bob).await;
    assert_eq!(first.closed().await, Closed::Code(4409));
    a.ok(json!({"type":"createChat","participants":["bob"]}))
        .await;
    assert_eq!(second.event().await["type"], "chatUpdate");
}

async fn a_silent_client_is_dropped_after_the_ping_timeout(t: Topology) {
    let node = TestNode::with_config(
        t,
        &format!(
            "{BASE_CONFIG}\n[websocket]\nping_interval = \"100ms\"\nping_timeout = \"500ms\"\n"
        ),
    )
    .await;
    let alice = node.user("alice").await;
    // A raw socket that completes the handshake, then never reads or answers pings.
    let addr = node.url.trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = format!(
        "GET /v1/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {}\r\n\r\n",
        alice.token
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    // Read (without answering) until the server hangs up.
    let mut buf = vec![0u8; 4096];
    let ended = tokio::time::timeout(crate::support::DEADLINE, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the server kept a dead connection open");
}

async fn pipelined_answers_a_client_does_not_read_are_bounded(t: Topology) {
    // A generous write timeout: only the byte bound can end this connection
    // within the test's deadline.
    let node = TestNode::with_config(
        t,
        &format!("{BASE_CONFIG}\n[websocket]\nwrite_timeout = \"60s\"\nsend_queue_kb = 1024\n"),
    )
    .await;
    let mut a = node.connect(&node.user("alice").await).await;
    let bob = node.user("bob").await;
    let chat = a
        .ok(json!({"type":"createChat","participants":["bob"]}))
        .await["chatId"]
        .clone();
    let big = "x".repeat(16 * 1024);
    for _ in 0..40 {
        a.ok(json!({"type":"sendMessage","chatId":chat,"message":big}))
            .await;
    }
    // Bob asks for ~500 KiB of history 400 times and reads nothing.
    let mut b = node.connect(&bob).await;
    for i in 0..400 {
        let frame = json!({"type":"getHistory","id": format!("h{i}"),"chatId":chat,"limit":200});
        if b.send_message(tungstenite::Message::text(frame.to_string()))
            .await
            .is_err()
        {
            break;
        }
    }
    eventually("the node to drop a client that does not read", || async {
        (node.online().await == 1).then_some(())
    })
    .await;
    // The node still serves everyone else.
    a.ok(json!({"type":"sendMessage","chatId":chat,"message":"still here"}))
        .await;
}

async fn a_client_that_does_not_read_is_disconnected_and_loses_nothing(t: Topology) {
    let node = TestNode::with_config(t, &format!(
        "{BASE_CONFIG}\n[websocket]\nwrite_timeout = \"500ms\"\nwindow = 2000\nsend_queue = 2100\n"
    ))
    .await;
    let alice = node.user("alice").await;
    let bob = node.user("bob").await;
    let mut a = node.connect(&alice).await;
    let chat = a
        .ok(json!({"type":"createChat","participants":["bob"]}))
        .await["chatId"]
        .clone();
    // Bob connects, then stops reading: his socket buffers fill up.
    let b = node.connect(&bob).await;
    let big = "x".repeat(16 * 1024);
    let mut sent = 0;
    while node.online().await == 2 {
        for _ in 0..50 {
            a.ok(json!({"type":"sendMessage","chatId":chat,"message":big}))
                .await;
            sent += 1;
        }
        assert!(
            sent <= 2000,
            "the server never gave up on a client that does not read"
        );
    }
    drop(b);
    // Everything is still in bob's inbox.
    let mut b = node.connect(&bob).await;
    let mut messages = 0;
    let mut batch = Vec::new();
    while messages < sent {
        let event = b.event().await;
        if event["type"] == "newMessage" {
            messages += 1;
            assert_eq!(event["seq"], messages, "in order, none missing");
        }
        batch.push(event);
        // Ack as we go, so the window keeps moving.
        if batch.len() == 100 {
            b.ack_events(&batch).await;
            batch.clear();
        }
    }
    eventually("bob online again", || async {
        (node.online().await == 2).then_some(())
    })
    .await;
}

async fn sigterm_closes_sessions_with_1001_and_keeps_data(t: Topology) {
    let mut node = TestNode::start(t).await;
    let alice = node.user("alice").await;
    let mut a = node.connect(&alice).await;
    let chat = a
        .ok(json!({"type":"createChat","participants":[],"name":"kept"}))
        .await["chatId"]
        .clone();
    a.ok(json!({"type":"sendMessage","chatId":chat,"message":"before shutdown"}))
        .await;
    let statuses = node.terminate_clients_side().await;
    assert_eq!(a.closed().await, Closed::Code(1001));
    for status in statuses {
        assert!(status.success(), "natterd exited with {status}");
    }
    node.restart().await;
    let mut a = node.connect(&alice).await;
    let history = a.ok(json!({"type":"getHistory","chatId":chat})).await;
    assert_eq!(history["messages"][0]["message"], "before shutdown");
}

async fn metrics_count_what_happened(t: Topology) {
    let node = TestNode::start(t).await;
    let alice = node.user("alice").await;
    let bob = node.user("bob").await;
    // Both on the first gateway (split), whose /metrics the test reads.
    let mut a = crate::support::WsClient::connect(&node.ws_url_of(0), &alice.token).await;
    let mut b = crate::support::WsClient::connect(&node.ws_url_of(0), &bob.token).await;
    let chat = a
        .ok(json!({"type":"createChat","participants":["bob"]}))
        .await["chatId"]
        .clone();
    a.ok(json!({"type":"sendMessage","chatId":chat,"message":"counted"}))
        .await;
    assert_eq!(
        a.error_code(json!({"type":"sendMessage","chatId":"nope","message":"x"}))
            .await,
        "unknown_chat"
    );
    let events = b.drain().await;
    assert_eq!(events.len(), 2);
    let value = async |name: &str| -> f64 {
        let v = node.metric(node.admin_url_of(0), name).await;
        v.unwrap_or_else(|| panic!("no {name} in /metrics"))
    };
    assert_eq!(
        value("natter_commands_total{command=\"sendMessage\",outcome=\"ok\"}").await,
        1.0
    );
    assert_eq!(
        value("natter_commands_total{command=\"invalid\",outcome=\"unknown_chat\"}").await,
        1.0
    );
    assert_eq!(value("natter_online_devices").await, 2.0);
    assert!(value("natter_events_sent_total").await >= 3.0);
    // Delivery latency is measured on the live hop only. Right after connecting
    // (and with JetStream, while a gateway's consumer starts) events may come
    // through the inbox instead, so send until two are delivered live.
    let mut live = 0.0;
    for i in 0..200 {
        a.ok(json!({"type":"sendMessage","chatId":chat,"message": format!("live {i}")}))
            .await;
        let event = b.event().await;
        b.ack_events(&[event]).await;
        live = value("natter_delivery_latency_seconds_count").await;
        if live >= 2.0 {
            break;
        }
    }
    assert!(live >= 2.0, "deliveries were not measured on the live hop");
}

crate::in_every_topology!(metrics_count_what_happened);

crate::in_every_topology!(
    retention_drops_old_events_and_tells_the_device,
    the_sweep_pages_through_every_old_key,
    a_failed_store_write_makes_the_node_unready,
    store_faults_are_off_by_default,
    unused_devices_are_deactivated,
    a_second_connection_of_a_device_displaces_the_first,
    a_silent_client_is_dropped_after_the_ping_timeout,
    a_client_that_does_not_read_is_disconnected_and_loses_nothing,
    pipelined_answers_a_client_does_not_read_are_bounded,
    sigterm_closes_sessions_with_1001_and_keeps_data
);

/// The store engine's routine INFO lines (recovery, table ingests) stay out
/// of the default log; an operator's `log.filter` still lets them in.
#[tokio::test]
async fn a_start_does_not_flood_the_log_with_store_engine_lines() {
    let engine_info = |logs: &str| -> Vec<String> {
        logs.lines()
            .filter(|l| l.contains(" INFO lsm_tree") || l.contains(" INFO fjall"))
            .map(str::to_owned)
            .collect()
    };
    // A folder with data: the engine recovers it on start.
    let fixture = crate::upgrade::fixture();
    let node = TestNode::on_copy_of(&fixture, &crate::upgrade::fixture_config()).await;
    let quiet = engine_info(&node.logs());
    assert!(quiet.is_empty(), "{quiet:?}");
    assert!(
        node.logs().contains("listening"),
        "the node's own INFO lines stay"
    );
    drop(node);
    let chatty = format!(
        "{}\n[log]\nfilter = \"info\"\n",
        crate::upgrade::fixture_config()
    );
    let node = TestNode::on_copy_of(&fixture, &chatty).await;
    assert!(
        !engine_info(&node.logs()).is_empty(),
        "log.filter = \"info\" lets the engine's INFO lines in:\n{}",
        node.logs()
    );
}
