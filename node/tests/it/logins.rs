//! Logins and registrations under attack: failed-login throttling per (address,
//! user) and per address, the per-address attempt rate, which address counts
//! behind a reverse proxy, and sessions that ended while their close order was
//! lost. Client addresses are real: each request binds a loopback address of
//! its own (all of 127.0.0.0/8 is loopback).

use std::net::IpAddr;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::TestNode;
use crate::support::node::{BASE_CONFIG, Topology, with_logins};
use crate::support::ws::Closed;

const RIGHT: &str = "password123";
const WRONG: &str = "guess-guess";

/// An HTTP answer, with its `Retry-After`.
struct Answer {
    status: u16,
    body: Value,
    retry_after: Option<String>,
}

impl Answer {
    /// `retryAfterMs` of a 429, checked against `Retry-After` (whole seconds,
    /// rounded up).
    fn wait_ms(&self) -> u64 {
        assert_eq!(
            (self.status, self.body["code"].as_str()),
            (429, Some("rate_limited")),
            "{}",
            self.body
        );
        let ms = self.body["retryAfterMs"]
            .as_u64()
            .unwrap_or_else(|| panic!("retryAfterMs in {}", self.body));
        assert!(ms > 0);
        assert_eq!(
            self.retry_after.as_deref(),
            Some(ms.div_ceil(1000).to_string().as_str()),
            "Retry-After for {ms} ms"
        );
        ms
    }
}

/// POSTs `body` to `path` from the loopback address `from`, with `headers`.
async fn post_from(
    node: &TestNode,
    from: &str,
    path: &str,
    body: Value,
    headers: &[(&str, &str)],
) -> Answer {
    let client = reqwest::Client::builder()
        .local_address(from.parse::<IpAddr>().unwrap())
        .build()
        .unwrap();
    let mut request = client
        .post(format!("{}{path}", node.client_url()))
        .json(&body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("http request");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = response.text().await.unwrap_or_default();
    Answer {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        retry_after,
    }
}

async fn login(node: &TestNode, from: &str, user: &str, password: &str) -> Answer {
    login_via(node, from, user, password, &[]).await
}

async fn login_via(
    node: &TestNode,
    from: &str,
    user: &str,
    password: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let body = json!({"username": user, "password": password});
    post_from(node, from, "/v1/login", body, headers).await
}

/// Login and registration attempts the login limits refused, by the limit.
async fn throttled(node: &TestNode, limit: &str) -> u64 {
    let name = format!("natter_logins_throttled_total{{reason=\"{limit}\"}}");
    node.metric(node.main_admin_url(), &name)
        .await
        .unwrap_or(0.0) as u64
}

/// How many argon2 hashes the process that owns the store has done.
async fn password_hashes(node: &TestNode) -> u64 {
    node.metric(node.main_admin_url(), "natter_password_hashes_total")
        .await
        .expect("the password hash counter") as u64
}

async fn a_stranger_cannot_lock_a_user_out(t: Topology) {
    let config = with_logins(
        r#"free_failures = 3
free_failures_per_address = 100
delay = "1m"
max_delay = "1h"
forget_after = "2h""#,
    );
    let node = TestNode::with_config(t, &config).await;
    node.add_user("alice").await;
    let (guesser, alice_at) = ("127.0.0.1", "127.0.0.2");
    for _ in 0..3 {
        assert_eq!(login(&node, guesser, "alice", WRONG).await.status, 401);
    }
    // The guesser now waits, even with the right password...
    let first_wait = login(&node, guesser, "alice", RIGHT).await.wait_ms();
    assert!(first_wait <= 60_000, "{first_wait}");
    // ...while alice, elsewhere, logs in as usual.
    assert_eq!(login(&node, alice_at, "alice", RIGHT).await.status, 200);

    // Each further failure doubles the wait.
    node.advance_clock(Duration::from_secs(61)).await;
    assert_eq!(login(&node, guesser, "alice", WRONG).await.status, 401);
    let second_wait = login(&node, guesser, "alice", WRONG).await.wait_ms();
    assert!(
        (60_000..=120_000).contains(&second_wait),
        "{second_wait} after {first_wait}"
    );
    // After the wait the right password logs in, and the pair starts over.
    node.advance_clock(Duration::from_secs(121)).await;
    assert_eq!(login(&node, guesser, "alice", RIGHT).await.status, 200);
    for _ in 0..3 {
        assert_eq!(login(&node, guesser, "alice", WRONG).await.status, 401);
    }
    login(&node, guesser, "alice", WRONG).await.wait_ms();
}

crate::in_every_topology!(
    a_stranger_cannot_lock_a_user_out,
    trusted_proxies_name_the_client
);

#[tokio::test]
async fn an_address_guessing_many_names_waits_for_all_of_them() {
    let config = with_logins(
        r#"free_failures = 3
free_failures_per_address = 5
delay = "1m""#,
    );
    let node = TestNode::with_config(Topology::Embedded, &config).await;
    node.add_user("alice").await;
    for name in ["u1", "u2", "u3", "u4", "alice"] {
        assert_eq!(login(&node, "127.0.0.3", name, WRONG).await.status, 401);
    }
    assert_eq!(throttled(&node, "address_failures").await, 0);
    let answer = login(&node, "127.0.0.3", "bob", RIGHT).await;
    answer.wait_ms();
    let message = answer.body["message"].as_str().unwrap();
    assert!(message.contains("from this address"), "{message}");
    assert_eq!(throttled(&node, "address_failures").await, 1);
    assert_eq!(throttled(&node, "user_failures").await, 0);
    assert_eq!(login(&node, "127.0.0.2", "alice", RIGHT).await.status, 200);
}

#[tokio::test]
async fn parallel_guesses_do_not_multiply_the_budget() {
    // A wait of an hour: however slow this machine, no guess gets through by
    // waiting it out.
    let config = with_logins(
        r#"free_failures = 3
free_failures_per_address = 100
delay = "1h"
max_delay = "1h""#,
    );
    let node = TestNode::with_config(Topology::Embedded, &config).await;
    node.add_user("alice").await;
    let hashes_before = password_hashes(&node).await;
    let guesses = (0..24).map(|_| login(&node, "127.0.0.1", "alice", WRONG));
    let answers = futures_util::future::join_all(guesses).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    let wrong = statuses.iter().filter(|s| **s == 401).count();
    let waited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((wrong, waited), (3, 21), "{statuses:?}");
    assert_eq!(throttled(&node, "user_failures").await, 21);
    assert_eq!(throttled(&node, "attempts").await, 0);
    assert_eq!(
        password_hashes(&node).await,
        hashes_before + 3,
        "only the guesses within the budget were hashed"
    );
}

#[tokio::test]
async fn attempts_are_limited_per_address_before_any_hashing() {
    let config = with_logins(
        r#"attempt_rate = 0.001
attempt_burst = 3"#,
    );
    let node = TestNode::with_config(Topology::Embedded, &config).await;
    node.add_user("alice").await;
    let hashes_before = password_hashes(&node).await;
    let flood = "127.0.0.4";
    let register = |body: Value| post_from(&node, flood, "/v1/register", body, &[]);
    let weak = json!({"username": "mallory", "password": "short"});
    assert_eq!(register(weak).await.status, 400);
    assert_eq!(login(&node, flood, "alice", WRONG).await.status, 401);
    assert_eq!(login(&node, flood, "alice", WRONG).await.status, 401);
    // Three attempts were the burst; the next ones wait ~1000 s (0.001/s).
    let wait = login(&node, flood, "alice", RIGHT).await.wait_ms();
    assert!((990_000..=1_000_000).contains(&wait), "{wait}");
    let valid = json!({"username": "mallory", "password": RIGHT});
    register(valid.clone()).await.wait_ms();
    assert_eq!(
        password_hashes(&node).await,
        hashes_before + 2,
        "refused attempts cost no hashing"
    );
    assert_eq!(
        throttled(&node, "attempts").await,
        2,
        "a login and a registration"
    );
    // Other addresses are not affected; the flooder's bucket refills.
    assert_eq!(login(&node, "127.0.0.5", "alice", RIGHT).await.status, 200);
    node.advance_clock(Duration::from_secs(1000)).await;
    assert_eq!(register(valid).await.status, 201);
}

async fn trusted_proxies_name_the_client(t: Topology) {
    let logins = with_logins(
        r#"free_failures = 1
free_failures_per_address = 100
delay = "1h"
max_delay = "1h""#,
    );
    let config = format!("trusted_proxies = [\"127.0.0.1\"]\n{logins}");
    let node = TestNode::with_config(t, &config).await;
    node.add_user("alice").await;
    let proxy = "127.0.0.1";
    let xff = |client| [("x-forwarded-for", client)];
    // The proxy passes on a guess from 198.51.100.7: that client waits...
    let from_7 = xff("198.51.100.7");
    assert_eq!(
        login_via(&node, proxy, "alice", WRONG, &from_7)
            .await
            .status,
        401
    );
    for headers in [
        from_7,
        [("forwarded", "for=198.51.100.7;proto=https")],
        // What the client wrote itself (the left part) is not believed.
        xff("203.0.113.9, 198.51.100.7"),
    ] {
        login_via(&node, proxy, "alice", RIGHT, &headers)
            .await
            .wait_ms();
    }
    // ...not the proxy's other clients.
    let answer = login_via(&node, proxy, "alice", RIGHT, &xff("198.51.100.8")).await;
    assert_eq!(answer.status, 200, "{}", answer.body);

    // From anyone else the header is ignored: 127.0.0.2 is the client.
    let direct = "127.0.0.2";
    let claims = xff("198.51.100.8");
    assert_eq!(
        login_via(&node, direct, "alice", WRONG, &claims)
            .await
            .status,
        401
    );
    login_via(&node, direct, "alice", RIGHT, &xff("198.51.100.9"))
        .await
        .wait_ms();
    login_via(&node, proxy, "alice", RIGHT, &xff(direct))
        .await
        .wait_ms();
    assert_eq!(login(&node, "127.0.0.3", "alice", RIGHT).await.status, 200);
}

/// A logout and a disable whose orders to close the connection are lost: the
/// core refuses the connection's commands itself, and the gateway then closes
/// the connection with 4401 at once.
///
/// The orders are lost for real: the core restarts (kill -9) while the
/// gateways keep their connections, and with hour-long heartbeats its presence
/// table does not learn where those devices are, so it has nowhere to send the
/// orders. Each kind of command is tried on a connection of its own (a
/// refusal ends the connection): alice's phones each log out, carol's devices
/// are all ended by one disable.
#[tokio::test]
async fn ended_sessions_are_refused_by_the_core_when_the_close_order_is_lost() {
    assert!(BASE_CONFIG.contains("heartbeat = \"1s\""));
    let config = BASE_CONFIG.replace("heartbeat = \"1s\"", "heartbeat = \"1h\"");
    let mut node = TestNode::with_config(Topology::Split, &config).await;
    let alice = node.user("alice").await;
    let bob = node.user("bob").await;
    node.add_user("carol").await;
    let mut a = node.connect(&alice).await;
    let chat = a
        .ok(json!({"type":"createChat","participants":["bob","carol"]}))
        .await["chatId"]
        .clone();
    let send = |text: &str| json!({"type":"sendMessage","chatId":chat,"message":text});
    let history = json!({"type":"getHistory","chatId":chat});
    let commands = |who: &str| {
        [
            send(who),
            history.clone(),
            json!({"type":"listChats"}),
            json!({"type":"markRead","chatId":chat,"seq":0}),
            json!({"type":"getAttachmentTarget","size":1,"contentType":"text/plain"}),
        ]
    };
    let mut phones = Vec::new();
    let mut carols = Vec::new();
    for _ in commands("") {
        let phone = node.login("alice").await;
        phones.push((node.connect(&phone).await, phone));
        carols.push(node.connect(&node.login("carol").await).await);
    }
    let mut b = node.connect(&bob).await;
    // Nothing left unacknowledged: no resend reads the inbox meanwhile (that
    // path is the next test's).
    for client in phones.iter_mut().map(|(c, _)| c).chain(&mut carols) {
        let events = client.drain().await;
        client.ack_events(&events).await;
    }

    node.kill9();
    node.restart().await;

    // The phones log out (through a gateway) and carol is disabled (admin).
    for (_, phone) in &phones {
        let response = node
            .http()
            .post(format!("{}/v1/logout", node.client_url()))
            .bearer_auth(&phone.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 204);
    }
    let (status, _) = node
        .admin(reqwest::Method::POST, "/users/carol/disable", None)
        .await;
    assert_eq!(status, 204);

    // Their connections are still open; what they send is refused, and the
    // refusal closes the connection.
    let phones = phones.into_iter().map(|(c, _)| (c, "phone"));
    let carols = carols.into_iter().map(|c| (c, "carol"));
    let sockets: Vec<_> = phones.chain(carols).collect();
    let tries = commands("phone").into_iter().chain(commands("carol"));
    for ((mut client, who), command) in sockets.into_iter().zip(tries) {
        assert_eq!(
            client.error_code(command.clone()).await,
            "unauthorized",
            "{who}: {command}"
        );
        assert_eq!(
            client.closed().await,
            Closed::Code(4401),
            "{who}: {command}"
        );
    }
    // Live sessions carry on, and nothing of the refused ones was stored.
    b.ok(send("bob's")).await;
    a.ok(send("alice's")).await;
    let messages = b.ok(history).await["messages"].clone();
    let texts: Vec<&str> = messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["bob's", "alice's"]);
}

/// The same lost orders, seen from the inbox reads a connection makes by
/// itself (here: resends of unacknowledged events): the core answers them
/// `unauthorized`, and the gateway closes the connection with 4401.
#[tokio::test]
async fn ended_sessions_close_at_their_next_inbox_read_when_the_close_order_is_lost() {
    let config = format!(
        "{}[websocket]\nresend_after = \"200ms\"\n",
        BASE_CONFIG.replace("heartbeat = \"1s\"", "heartbeat = \"1h\"")
    );
    let mut node = TestNode::with_config(Topology::Split, &config).await;
    let alice = node.user("alice").await;
    let alice_phone = node.login("alice").await;
    let carol = node.user("carol").await;
    let mut a = node.connect(&alice).await;
    a.ok(json!({"type":"createChat","participants":["carol"]}))
        .await;
    // Both get the chat's `created` event and never acknowledge it: it is
    // sent again every 200 ms, read from the inbox each time.
    let mut phone = node.connect(&alice_phone).await;
    let mut c = node.connect(&carol).await;
    phone.event().await;
    c.event().await;

    node.kill9();
    node.restart().await;
    let response = node
        .http()
        .post(format!("{}/v1/logout", node.client_url()))
        .bearer_auth(&alice_phone.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
    let (status, _) = node
        .admin(reqwest::Method::POST, "/users/carol/disable", None)
        .await;
    assert_eq!(status, 204);

    for (client, who) in [(&mut phone, "phone"), (&mut c, "carol")] {
        let closed = tokio::time::timeout(crate::support::DEADLINE, client.closed())
            .await
            .unwrap_or_else(|_| panic!("{who}'s connection stayed open"));
        assert_eq!(closed, Closed::Code(4401), "{who}");
    }
    // Alice's other device carries on.
    a.ok(json!({"type":"listChats"})).await;
}
