//! `natter key rotate` between real nodes (issue 8): a chat keeps working
//! across a rotation, the peer learns the new key from the announcement, and
//! the old key verifies during the overlap only (the peer's clock is moved,
//! never slept on). Requests with the old key are built and signed by the test
//! from the seed in the rotating node's data folder.

use std::time::Duration;

use base64::Engine;
use ed25519_dalek::SigningKey;
use natter::federation::keys::key_id;
use natter::federation::signing::{OutgoingRequest, sign_request};
use reqwest::Method;
use serde_json::{Value, json};

use crate::federation::{Pair, chat_of_two, next, receive, two_nodes};
use crate::support::node::Topology;
use crate::support::{TestNode, eventually};

/// The default `federation.key_overlap`.
const OVERLAP: Duration = Duration::from_secs(7 * 24 * 3600);

/// The node's current key, from `node.key` in its data folder.
fn node_key(node: &TestNode) -> SigningKey {
    let hex = std::fs::read_to_string(node.data.join("node.key")).expect("node.key");
    SigningKey::from_bytes(&decode_hex32(hex.trim()))
}

fn decode_hex32(hex: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex");
    }
    out
}

/// Rotates `node`'s key through the admin API; its answer.
async fn rotate(node: &TestNode) -> Value {
    let (status, rotated) = node.admin(Method::POST, "/key/rotate", None).await;
    assert_eq!(status, 200, "{rotated}");
    rotated
}

/// Waits until `node` lists `peer` with `fingerprint` (the announcement was
/// applied).
async fn wait_for_peer_key(node: &TestNode, peer: &str, fingerprint: &str) -> Value {
    eventually("the peer to learn the new key", || async {
        let (_, list) = node.admin(Method::GET, "/peers", None).await;
        let peers = list["peers"].as_array()?;
        let found = peers.iter().find(|p| p["node"] == peer)?;
        (found["fingerprint"] == fingerprint).then(|| found.clone())
    })
    .await
}

/// POSTs `body` to `to`'s `path` as `from` → `to_name`, signed with `key`
/// and `created_s`.
async fn signed_post(
    to: &TestNode,
    (from, to_name): (&str, &str),
    key: &SigningKey,
    (path, body): (&str, &Value),
    created_s: i64,
) -> (u16, Value) {
    let body = serde_json::to_vec(body).unwrap();
    let authority = to.main_url().strip_prefix("http://").expect("http URL");
    let request = OutgoingRequest {
        origin: from,
        destination: to_name,
        method: "POST",
        authority,
        path,
        query: None,
        body: &body,
    };
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).expect("random nonce");
    let nonce = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(nonce);
    let id = key_id(&key.verifying_key());
    let signed = sign_request(key, &id, &request, created_s, &nonce).expect("sign");
    let mut builder = to
        .http()
        .post(format!("{}{path}", to.main_url()))
        .header("content-type", "application/json")
        .body(body);
    for (name, value) in signed.fields() {
        builder = builder.header(name, value);
    }
    let response = builder.send().await.expect("federation request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn now_s() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.expect("clock after 1970").as_secs() as i64
}

#[tokio::test]
async fn a_chat_keeps_working_across_a_key_rotation() {
    let (a, b) = two_nodes(Topology::Embedded).await;
    let Pair {
        mut alice,
        mut bob,
        chat,
        ..
    } = chat_of_two(&a, &b).await;
    // A second chat, whose home is beta: alpha's users act there through beta.
    let created = bob
        .ok(json!({"type":"createChat","participants":["alice@alpha.test"]}))
        .await;
    let at_beta = created["chatId"].as_str().unwrap().to_owned();
    next(&mut bob, "chatUpdate").await;
    next(&mut alice, "chatUpdate").await;

    let (_, old) = a.admin(Method::GET, "/key", None).await;
    let rotated = rotate(&a).await;
    assert_ne!(rotated["fingerprint"], old["fingerprint"]);
    assert_eq!(rotated["previousKeys"][0]["keyId"], old["fingerprint"]);

    // The well-known document lists both, the old one with its end.
    let doc: Value = a
        .http()
        .get(format!("{}/.well-known/natter/node", a.main_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys = doc["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{doc}");
    assert_eq!(keys[0]["keyId"], rotated["fingerprint"]);
    assert_eq!(keys[0]["notAfter"], Value::Null);
    assert_eq!(keys[1]["keyId"], old["fingerprint"]);
    assert_eq!(keys[1]["notAfter"], rotated["previousKeys"][0]["notAfter"]);

    // alpha's sender announces the new key to beta at once.
    let fingerprint = rotated["fingerprint"].as_str().unwrap();
    let peer = wait_for_peer_key(&b, "alpha.test", fingerprint).await;
    assert_eq!(peer["publicKeys"].as_array().unwrap().len(), 2, "{peer}");

    // Events and actions both ways, alpha signing with its new key.
    let send =
        |chat: &str, text: &str| json!({"type":"sendMessage","chatId": chat,"message": text});
    assert_eq!(alice.ok(send(&chat, "a1")).await["seq"], 1);
    assert_eq!(receive(&mut bob, 1).await, ["a1"]);
    assert_eq!(bob.ok(send(&chat, "b1")).await["seq"], 2);
    assert_eq!(receive(&mut alice, 1).await, ["b1"]);
    assert_eq!(alice.ok(send(&at_beta, "a2")).await["seq"], 1);
    assert_eq!(receive(&mut bob, 1).await, ["a2"]);
    assert_eq!(bob.ok(send(&at_beta, "b2")).await["seq"], 2);
    assert_eq!(receive(&mut alice, 1).await, ["b2"]);
    assert!(alice.drain().await.is_empty() && bob.drain().await.is_empty());
}

#[tokio::test]
async fn the_old_key_verifies_during_the_overlap_only() {
    let (mut a, b) = two_nodes(Topology::Embedded).await;
    let old_key = node_key(&a);
    let rotated = rotate(&a).await;
    let new_key = node_key(&a);
    assert_eq!(rotated["fingerprint"], key_id(&new_key.verifying_key()));
    // The old seed is kept next to node.key until its overlap ends.
    let previous = std::fs::read_to_string(a.data.join("node.key.previous")).unwrap();
    let hex: String = old_key
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(previous.contains(&hex));
    wait_for_peer_key(&b, "alpha.test", rotated["fingerprint"].as_str().unwrap()).await;
    // A restart keeps both keys.
    a.kill9();
    a.restart_same_port().await;
    let (_, shown) = a.admin(Method::GET, "/key", None).await;
    assert_eq!(shown["fingerprint"], rotated["fingerprint"]);
    assert_eq!(shown["previousKeys"], rotated["previousKeys"], "{shown}");

    let names = ("alpha.test", "beta.test");
    let empty = ("/federation/v1/events", &json!({"events": []}));
    let during = signed_post(&b, names, &old_key, empty, now_s()).await;
    assert_eq!(during.0, 200, "the old key during the overlap: {during:?}");

    let moved = OVERLAP + Duration::from_secs(3600);
    b.advance_clock(moved).await;
    let at = now_s() + moved.as_secs() as i64;
    let after = signed_post(&b, names, &old_key, empty, at).await;
    assert_eq!(after.0, 401, "{after:?}");
    assert_eq!(after.1["code"], "key_not_valid", "{after:?}");
    let new = signed_post(&b, names, &new_key, empty, at).await;
    assert_eq!(new.0, 200, "the new key after the overlap: {new:?}");
}

#[tokio::test]
async fn a_node_announces_only_its_own_keys() {
    let (a, b) = two_nodes(Topology::Embedded).await;
    let key = node_key(&a);
    let stranger = SigningKey::from_bytes(&[0x42; 32]).verifying_key();
    let announce = |node: &str, old_key_id: String| {
        json!({
            "node": node,
            "newKey": {"keyId": key_id(&stranger),
                       "publicKey": base64::engine::general_purpose::STANDARD.encode(stranger.as_bytes())},
            "oldKey": {"keyId": old_key_id, "notAfter": 0},
        })
    };
    let names = ("alpha.test", "beta.test");
    let for_other = announce("gamma.test", key_id(&key.verifying_key()));
    let answer = signed_post(
        &b,
        names,
        &key,
        ("/federation/v1/keys", &for_other),
        now_s(),
    )
    .await;
    assert_eq!(
        (answer.0, &answer.1["code"]),
        (403, &json!("forbidden")),
        "{answer:?}"
    );
    let other_old = announce("alpha.test", "ed25519-0000000000000000".into());
    let answer = signed_post(
        &b,
        names,
        &key,
        ("/federation/v1/keys", &other_old),
        now_s(),
    )
    .await;
    assert_eq!(
        (answer.0, &answer.1["code"]),
        (403, &json!("forbidden")),
        "{answer:?}"
    );
    // Nothing changed: beta still trusts alpha's one key.
    let (_, list) = b.admin(Method::GET, "/peers", None).await;
    assert_eq!(
        list["peers"][0]["publicKeys"].as_array().unwrap().len(),
        1,
        "{list}"
    );
    assert_eq!(
        list["peers"][0]["fingerprint"],
        key_id(&key.verifying_key())
    );
}
