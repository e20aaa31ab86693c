//! What a node refuses from its peers (issue 8), each case with a request the
//! test builds and signs itself: a key the test controls is trusted as the
//! peer `evil.test`, and every request is signed with
//! `natter::federation::signing::sign_request` and sent with reqwest, so the
//! test decides every header, timestamp, nonce and byte of the body.
//!
//! Every refusal is checked for its status, its JSON `code`, and that nothing
//! was applied: the local user's device got nothing, and the peer's first event
//! number (1) is still unused, so a valid batch numbered 1 is applied after it.

use base64::Engine;
use ed25519_dalek::SigningKey;
use natter::federation::events::{
    Action, ActionRequest, Attachment, Event, EventBatch, Numbered, Reason,
};
use natter::federation::keys::key_id;
use natter::federation::signing::{OutgoingRequest, SignedHeaders, sign_request};
use natter::ids::{ChatId, NodeName, UserRef};
use serde_json::{Value, json};

use crate::support::node::{BASE_CONFIG, Topology};
use crate::support::{TestNode, WsClient};

/// The node under test.
const HOME: &str = "home.test";
/// The peer the test plays, with a key it controls.
const EVIL: &str = "evil.test";

/// evil.test's key, from a fixed seed.
fn evil_key() -> SigningKey {
    SigningKey::from_bytes(&[0xE5; 32])
}

/// A key nobody gave the node.
fn stranger_key() -> SigningKey {
    SigningKey::from_bytes(&[0x5A; 32])
}

fn now_s() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.expect("clock after 1970").as_secs() as i64
}

fn now_ms() -> i64 {
    now_s() * 1000
}

/// 16 random bytes, base64url without padding, as natter sends.
fn fresh_nonce() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("random nonce");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A batch of one event numbered `seq`.
fn batch(seq: u64, event: Event) -> Vec<u8> {
    let batch = EventBatch {
        events: vec![Numbered { seq, event }],
        after: None,
    };
    serde_json::to_vec(&batch).unwrap()
}

/// A batch of one event numbered `seq`, sent while the batch ending at
/// `after` may still be on its way.
fn batch_after(seq: u64, after: u64, event: Event) -> Vec<u8> {
    let batch = EventBatch {
        events: vec![Numbered { seq, event }],
        after: Some(after),
    };
    serde_json::to_vec(&batch).unwrap()
}

/// A message from `x@evil.test` in `chat`, the chat's `seq`.
fn message_in(chat: ChatId, seq: u64, text: &str) -> Event {
    Event::Message {
        chat_id: chat,
        seq,
        message_id: natter::ids::MessageId::generate(),
        from: format!("x@{EVIL}"),
        sent_at: now_ms(),
        text: text.into(),
        attachments: Vec::new(),
        sender_device: None,
    }
}

/// A chat created at evil.test by `x@evil.test`, with `participants`.
fn created_chat(chat_id: ChatId, participants: &[&str]) -> Event {
    let mut participants: Vec<String> = participants.iter().map(|p| (*p).to_owned()).collect();
    participants.sort();
    Event::Chat {
        chat_id,
        name: Some("from evil".into()),
        creator: format!("x@{EVIL}"),
        created_at: now_ms(),
        participants,
        reason: Reason::Created,
        at: now_ms(),
        last_seq: 0,
    }
}

/// The positive control's batch: a chat of evil.test with alice of this node.
fn chat_with_alice(seq: u64, chat_id: ChatId) -> Vec<u8> {
    batch(
        seq,
        created_chat(chat_id, &[&format!("alice@{HOME}"), &format!("x@{EVIL}")]),
    )
}

fn action(actor: &str, action: Action) -> Vec<u8> {
    let home = NodeName::parse(HOME).unwrap();
    let request = ActionRequest {
        actor: UserRef::parse(actor, &home).expect("name@node"),
        action,
    };
    serde_json::to_vec(&request).unwrap()
}

fn send_message(chat_id: ChatId, text: &str) -> Action {
    Action::SendMessage {
        chat_id,
        message: text.into(),
        client_msg_id: None,
        device: None,
        attachments: Vec::new(),
    }
}

/// A request as the test signs it; [`Fed::request`] fills in a valid one.
#[derive(Clone)]
struct Req {
    method: &'static str,
    path: String,
    query: Option<String>,
    body: Vec<u8>,
    origin: String,
    destination: String,
    created_s: i64,
    nonce: String,
}

/// A node named home.test that trusts evil.test, with alice (a local user)
/// connected.
struct Fed {
    node: TestNode,
    alice: WsClient,
    http: reqwest::Client,
}

impl Fed {
    async fn start() -> Self {
        let config = format!("name = \"{HOME}\"\n{BASE_CONFIG}");
        let node = TestNode::with_config(Topology::Embedded, &config).await;
        trust(&node, EVIL, &evil_key()).await;
        let creds = node.user("alice").await;
        let alice = node.connect(&creds).await;
        let http = node.http().clone();
        Self { node, alice, http }
    }

    /// `127.0.0.1:PORT`: the `Host` reqwest sends, hence `@authority`.
    fn authority(&self) -> &str {
        let url = self.node.main_url();
        url.strip_prefix("http://").expect("an http URL")
    }

    /// A valid request from evil.test to this node.
    fn request(&self, path: &str, body: Vec<u8>) -> Req {
        Req {
            method: "POST",
            path: path.to_owned(),
            query: None,
            body,
            origin: EVIL.to_owned(),
            destination: HOME.to_owned(),
            created_s: now_s(),
            nonce: fresh_nonce(),
        }
    }

    fn sign(&self, key: &SigningKey, req: &Req) -> SignedHeaders {
        let outgoing = OutgoingRequest {
            origin: &req.origin,
            destination: &req.destination,
            method: req.method,
            authority: self.authority(),
            path: &req.path,
            query: req.query.as_deref(),
            body: &req.body,
        };
        let id = key_id(&key.verifying_key());
        sign_request(key, &id, &outgoing, req.created_s, &req.nonce).expect("sign")
    }

    /// Sends `req` with `headers` (and `body` as given, which may differ from
    /// the signed one); the status and the JSON answer.
    async fn send(
        &self,
        req: &Req,
        headers: Option<&SignedHeaders>,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let mut url = format!("{}{}", self.node.main_url(), req.path);
        if let Some(query) = &req.query {
            url = format!("{url}?{query}");
        }
        let method = reqwest::Method::from_bytes(req.method.as_bytes()).unwrap();
        let mut request = self
            .http
            .request(method, url)
            .header("content-type", "application/json")
            .body(body);
        for (name, value) in headers.iter().flat_map(|h| h.fields()) {
            request = request.header(name, value);
        }
        let response = request.send().await.expect("federation request");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let answer = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, answer)
    }

    /// Signs `req` with `key` and sends it as signed.
    async fn send_signed_with(&self, key: &SigningKey, req: &Req) -> (u16, Value) {
        let headers = self.sign(key, req);
        self.send(req, Some(&headers), req.body.clone()).await
    }

    /// Signs `req` with evil.test's key and sends it.
    async fn send_signed(&self, req: &Req) -> (u16, Value) {
        self.send_signed_with(&evil_key(), req).await
    }

    /// alice's chats, by id.
    async fn alice_chats(&mut self) -> Vec<String> {
        let chats = self.alice.ok(json!({"type":"listChats"})).await;
        chats["chats"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["chatId"].as_str().unwrap().to_owned())
            .collect()
    }

    /// The texts of a chat's history, as alice reads it.
    async fn history(&mut self, chat: &str) -> Vec<String> {
        let history = self
            .alice
            .ok(json!({"type":"getHistory","chatId": chat, "afterSeq": 0}))
            .await;
        history["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["message"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Nothing reached alice, and evil.test's event number 1 is unused: a valid
    /// batch numbered 1 is applied now, and alice gets its chat.
    async fn nothing_applied(&mut self, chats_before: &[String]) {
        assert_eq!(
            self.alice.drain().await,
            Vec::<Value>::new(),
            "alice got nothing"
        );
        assert_eq!(
            self.alice_chats().await,
            chats_before,
            "alice's chats are unchanged"
        );
        let chat = ChatId::generate();
        self.applied_with_alice(1, chat).await;
    }

    /// evil.test's valid batch numbered `seq` creating `chat` with alice is
    /// applied, and alice's device gets the chat.
    async fn applied_with_alice(&mut self, seq: u64, chat: ChatId) {
        let req = self.request("/federation/v1/events", chat_with_alice(seq, chat));
        let (status, body) = self.send_signed(&req).await;
        assert_eq!(
            (status, &body),
            (200, &json!({"applied": seq, "ordered": true}))
        );
        let update = self.alice.event().await;
        assert_eq!(update["type"], "chatUpdate", "{update}");
        assert_eq!(update["chatId"], chat.to_string());
        assert_eq!(update["reason"], "created");
        assert_eq!(
            update["participants"],
            json!([format!("alice@{HOME}"), format!("x@{EVIL}")])
        );
        self.alice.ack_events(std::slice::from_ref(&update)).await;
        assert!(self.alice_chats().await.contains(&chat.to_string()));
    }

    /// A chat alice creates on this node (its home) with x@evil.test.
    async fn local_chat(&mut self) -> String {
        let created = self
            .alice
            .ok(json!({"type":"createChat","participants":[format!("x@{EVIL}")],"name":"Ours"}))
            .await;
        let update = self.alice.event().await;
        assert_eq!(update["type"], "chatUpdate", "{update}");
        self.alice.ack_events(std::slice::from_ref(&update)).await;
        created["chatId"].as_str().unwrap().to_owned()
    }
}

/// Makes `node` trust `name` with `key` (as `natter peer add` does); the URL
/// leads nowhere, the test sends the peer's requests itself.
async fn trust(node: &TestNode, name: &str, key: &SigningKey) {
    let public = base64::engine::general_purpose::STANDARD.encode(key.verifying_key().as_bytes());
    let body = json!({"node": name, "url": "http://127.0.0.1:9", "publicKey": public});
    let (status, answer) = node
        .admin(reqwest::Method::POST, "/peers", Some(body))
        .await;
    assert_eq!(status, 201, "{answer}");
}

/// The status and code of a refusal.
fn refusal(answer: &(u16, Value)) -> (u16, &str) {
    (answer.0, answer.1["code"].as_str().unwrap_or("<no code>"))
}

#[tokio::test]
async fn a_signed_batch_from_a_peer_is_applied() {
    let mut fed = Fed::start().await;
    let chat = ChatId::generate();
    fed.applied_with_alice(1, chat).await;
    assert_eq!(fed.alice_chats().await, [chat.to_string()]);
    assert_eq!(
        fed.alice.drain().await,
        Vec::<Value>::new(),
        "one chatUpdate"
    );
}

#[tokio::test]
async fn an_unsigned_request_is_refused() {
    let mut fed = Fed::start().await;
    let req = fed.request(
        "/federation/v1/events",
        chat_with_alice(1, ChatId::generate()),
    );
    let answer = fed.send(&req, None, req.body.clone()).await;
    assert_eq!(refusal(&answer), (401, "malformed_signature"), "{answer:?}");
    fed.nothing_applied(&[]).await;
}

#[tokio::test]
async fn a_request_from_an_unknown_node_is_refused() {
    let mut fed = Fed::start().await;
    let mut req = fed.request(
        "/federation/v1/events",
        chat_with_alice(1, ChatId::generate()),
    );
    req.origin = "stranger.test".into();
    let answer = fed.send_signed_with(&stranger_key(), &req).await;
    assert_eq!(refusal(&answer), (401, "unknown_peer"), "{answer:?}");
    fed.nothing_applied(&[]).await;
}

#[tokio::test]
async fn a_request_with_a_key_the_peer_does_not_have_is_refused() {
    let mut fed = Fed::start().await;
    // evil.test is a peer, but this key (and its keyid) is not one of its keys.
    let req = fed.request(
        "/federation/v1/events",
        chat_with_alice(1, ChatId::generate()),
    );
    let answer = fed.send_signed_with(&stranger_key(), &req).await;
    assert_eq!(refusal(&answer), (401, "key_not_valid"), "{answer:?}");
    fed.nothing_applied(&[]).await;
}

#[tokio::test]
async fn a_bad_signature_is_refused() {
    let mut fed = Fed::start().await;
    let req = fed.request(
        "/federation/v1/events",
        chat_with_alice(1, ChatId::generate()),
    );
    // evil.test's keyid, but the signature bytes are another key's.
    let mut headers = fed.sign(&evil_key(), &req);
    headers.signature = fed.sign(&stranger_key(), &req).signature;
    let answer = fed.send(&req, Some(&headers), req.body.clone()).await;
    assert_eq!(refusal(&answer), (401, "bad_signature"), "{answer:?}");
    fed.nothing_applied(&[]).await;
}

#[tokio::test]
async fn a_body_changed_after_signing_is_refused() {
    let mut fed = Fed::start().await;
    let signed = fed.request(
        "/federation/v1/events",
        chat_with_alice(1, ChatId::generate()),
    );
    let headers = fed.sign(&evil_key(), &signed);
    // The signature covers Content-Digest, not the body: it verifies, and the
    // digest check finds the change.
    let tampered = chat_with_alice(1, ChatId::generate());
    let answer = fed.send(&signed, Some(&headers), tampered).await;
    assert_eq!(refusal(&answer), (401, "digest_mismatch"), "{answer:?}");
    fed.nothing_applied(&[]).await;
}

#[tokio::test]
async fn a_path_changed_after_signing_is_refused() {
    let mut fed = Fed::start().await;
    let signed = fed.request(
        "/federation/v1/actions",
        chat_with_alice(1, ChatId::generate()),
    );
    let headers = fed.sign(&evil_key(), &signed);
    let sent = Req {
        path: "/federation/v1/events".into(),
        ..signed.clone()
    };
    let answer = fed.send(&sent, Some(&headers), sent.body.clone()).await;
    assert_eq!(refusal(&answer), (401, "bad_signature"), "{answer:?}");
    fed.nothing_applied(&[]).await;
}

#[tokio::test]
async fn a_request_for_another_node_is_refused() {
    let mut fed = Fed::start().await;
    let mut req = fed.request(
        "/federation/v1/events",
        chat_with_alice(1, ChatId::generate()),
    );
    req.destination = "other.test".into();
    let answer = fed.send_signed(&req).await;
    assert_eq!(refusal(&answer), (403, "wrong_destination"), "{answer:?}");
    fed.nothing_applied(&[]).await;
}

#[tokio::test]
async fn a_stale_request_is_refused() {
    let mut fed = Fed::start().await;
    let mut req = fed.request(
        "/federation/v1/events",
        chat_with_alice(1, ChatId::generate()),
    );
    req.created_s = now_s() - 10 * 60;
    let answer = fed.send_signed(&req).await;
    assert_eq!(refusal(&answer), (401, "stale_request"), "{answer:?}");
    // As far in the future is as stale.
    req.created_s = now_s() + 10 * 60;
    req.nonce = fresh_nonce();
    let answer = fed.send_signed(&req).await;
    assert_eq!(refusal(&answer), (401, "stale_request"), "{answer:?}");
    fed.nothing_applied(&[]).await;
}

#[tokio::test]
async fn a_replayed_request_is_refused() {
    let mut fed = Fed::start().await;
    let chat = ChatId::generate();
    let req = fed.request("/federation/v1/events", chat_with_alice(1, chat));
    let headers = fed.sign(&evil_key(), &req);
    let first = fed.send(&req, Some(&headers), req.body.clone()).await;
    assert_eq!(first, (200, json!({"applied": 1, "ordered": true})));
    let again = fed.send(&req, Some(&headers), req.body.clone()).await;
    assert_eq!(refusal(&again), (401, "replayed_request"), "{again:?}");
    // The same nonce with another body (signed anew) is a replay too.
    let other = Req {
        body: chat_with_alice(2, ChatId::generate()),
        ..req.clone()
    };
    let answer = fed.send_signed(&other).await;
    assert_eq!(refusal(&answer), (401, "replayed_request"), "{answer:?}");

    let updates = fed.alice.drain().await;
    assert_eq!(updates.len(), 1, "one chatUpdate: {updates:?}");
    assert_eq!(updates[0]["chatId"], chat.to_string());
    assert_eq!(fed.alice_chats().await, [chat.to_string()]);
}

#[tokio::test]
async fn every_path_under_federation_needs_a_signature() {
    let fed = Fed::start().await;
    for (method, path) in [
        ("GET", "/federation/v1/anything"),
        ("GET", "/federation/v1/"),
        ("GET", "/federation/v1/%65vents"),
        ("POST", "/federation/v1/anything/deeper"),
        ("GET", "/federation/v1/events"),
        ("POST", "/federation/v1/events"),
        ("POST", "/federation/v1/actions"),
        ("DELETE", "/federation/v1/actions"),
    ] {
        let req = Req {
            method,
            ..fed.request(path, b"{}".to_vec())
        };
        let answer = fed.send(&req, None, Vec::new()).await;
        assert_eq!(
            refusal(&answer),
            (401, "malformed_signature"),
            "{method} {path}: {answer:?}"
        );
    }
    // Signed, an unknown path is just not found.
    let req = Req {
        method: "GET",
        ..fed.request("/federation/v1/anything", Vec::new())
    };
    let answer = fed.send_signed(&req).await;
    assert_eq!(refusal(&answer), (404, "not_found"), "{answer:?}");
}

#[tokio::test]
async fn a_peer_acts_only_for_its_own_users() {
    let mut fed = Fed::start().await;
    let chat = fed.local_chat().await;
    let chat_id = ChatId::parse(&chat).unwrap();
    // A user of another node, and a user of this very node.
    for actor in ["bob@other.test".to_owned(), format!("alice@{HOME}")] {
        let body = action(&actor, send_message(chat_id, "not mine to send"));
        let req = fed.request("/federation/v1/actions", body);
        let answer = fed.send_signed(&req).await;
        assert_eq!(refusal(&answer), (403, "forbidden"), "{actor}: {answer:?}");
    }
    assert_eq!(fed.history(&chat).await, Vec::<String>::new());
    assert_eq!(fed.alice.drain().await, Vec::<Value>::new());

    // Positive control: for its own user it may.
    let body = action(&format!("x@{EVIL}"), send_message(chat_id, "mine"));
    let req = fed.request("/federation/v1/actions", body);
    let (status, answer) = fed.send_signed(&req).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["seq"], 1, "{answer}");
    let event = fed.alice.event().await;
    assert_eq!(
        (event["type"].as_str(), event["message"].as_str()),
        (Some("newMessage"), Some("mine"))
    );
    assert_eq!(fed.history(&chat).await, ["mine"]);
}

/// A send of x@evil.test carrying one attachment, as declared by evil.test.
fn send_attachment(chat_id: ChatId, id: &str, holder: Option<&str>) -> Action {
    let Action::SendMessage {
        chat_id,
        client_msg_id,
        device,
        ..
    } = send_message(chat_id, "")
    else {
        unreachable!()
    };
    Action::SendMessage {
        chat_id,
        message: String::new(),
        client_msg_id,
        device,
        attachments: vec![Attachment {
            attachment_id: id.to_owned(),
            content_type: "image/png".into(),
            size: 5,
            name: Some("x.png".into()),
            holder: holder.map(|h| NodeName::parse(h).unwrap()),
        }],
    }
}

#[tokio::test]
async fn a_peer_sends_only_attachments_it_holds() {
    let mut fed = Fed::start().await;
    let chat = fed.local_chat().await;
    let chat_id = ChatId::parse(&chat).unwrap();
    // An upload of this node (alice's, unsent), and an id held by another node.
    let target = fed
        .alice
        .ok(json!({"type":"getAttachmentTarget","size": 5,"contentType":"image/png"}))
        .await;
    let alices = target["attachmentId"].as_str().unwrap().to_owned();
    let fresh = ChatId::generate().to_string();
    for (id, holder, expected) in [
        (alices.as_str(), Some(EVIL), (404, "unknown_attachment")),
        (alices.as_str(), None, (404, "unknown_attachment")),
        (fresh.as_str(), Some("other.test"), (403, "forbidden")),
        ("not-an-id", Some(EVIL), (404, "unknown_attachment")),
    ] {
        let body = action(&format!("x@{EVIL}"), send_attachment(chat_id, id, holder));
        let req = fed.request("/federation/v1/actions", body);
        let answer = fed.send_signed(&req).await;
        assert_eq!(refusal(&answer), expected, "{id} {holder:?}: {answer:?}");
    }
    assert_eq!(fed.alice.drain().await, Vec::<Value>::new());

    // Positive control: an attachment evil.test holds; alice sees it as a
    // local attachment, and her node asks evil.test for its URL.
    let body = action(&format!("x@{EVIL}"), send_attachment(chat_id, &fresh, None));
    let req = fed.request("/federation/v1/actions", body);
    let (status, answer) = fed.send_signed(&req).await;
    assert_eq!(status, 200, "{answer}");
    let event = fed.alice.event().await;
    assert_eq!(
        event["attachments"],
        json!([{"attachmentId": fresh, "contentType": "image/png", "size": 5, "name": "x.png"}])
    );
    // evil.test's URL leads nowhere: unavailable.
    assert_eq!(
        fed.alice
            .error_code(json!({"type":"getAttachmentUrl","attachmentId": fresh}))
            .await,
        "unavailable"
    );
}

#[tokio::test]
async fn a_chats_home_gets_urls_of_uploads_offered_to_it() {
    let mut fed = Fed::start().await;
    // A chat whose home is evil.test, mirrored here for alice.
    let chat_id = ChatId::generate();
    fed.applied_with_alice(1, chat_id).await;
    let bytes = b"offered to evil.test".to_vec();
    let target = fed
        .alice
        .ok(json!({"type":"getAttachmentTarget","size": bytes.len(),"contentType":"image/png"}))
        .await;
    let mut put = fed.http.put(target["uploadUrl"].as_str().unwrap());
    for (name, value) in target["headers"].as_object().unwrap() {
        put = put.header(name.as_str(), value.as_str().unwrap());
    }
    assert!(
        put.body(bytes.clone())
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
    let id = target["attachmentId"].as_str().unwrap().to_owned();
    let ask = |fed: &Fed, user: &str| {
        let body = json!({"user": user, "attachmentId": id}).to_string();
        fed.request("/federation/v1/attachment-url", body.into_bytes())
    };
    // Not sent anywhere yet: evil.test may not have it, for anyone.
    for user in [format!("x@{EVIL}"), format!("alice@{HOME}")] {
        let answer = fed.send_signed(&ask(&fed, &user)).await;
        assert_eq!(refusal(&answer), (403, "forbidden"), "{user}: {answer:?}");
    }
    // alice sends it in evil.test's chat; evil.test never answers (its URL
    // leads nowhere), but it may have stored the message and shown it to its
    // users before that: from now on it may ask for the URL.
    let send =
        json!({"type":"sendMessage","chatId": chat_id.to_string(),"message":"","attachments":[id]});
    assert_eq!(fed.alice.error_code(send).await, "unavailable");
    let (status, answer) = fed.send_signed(&ask(&fed, &format!("x@{EVIL}"))).await;
    assert_eq!(status, 200, "{answer}");
    let got = fed
        .http
        .get(answer["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(got.bytes().await.unwrap().to_vec(), bytes);
}

#[tokio::test]
async fn a_batch_of_actions_is_applied_in_order_each_checked() {
    let mut fed = Fed::start().await;
    let chat = fed.local_chat().await;
    let chat_id = ChatId::parse(&chat).unwrap();
    let one = |actor: &str, text: &str| -> Value {
        serde_json::from_slice(&action(actor, send_message(chat_id, text))).unwrap()
    };
    let x = format!("x@{EVIL}");
    let actions = [
        one(&x, "first"),
        one("bob@other.test", "not mine to send"),
        one(&x, "second"),
        one(&x, ""),
        one(&x, "third"),
    ];
    let body = serde_json::to_vec(&json!({ "actions": actions })).unwrap();
    let req = fed.request("/federation/v1/actions", body);
    let (status, answer) = fed.send_signed(&req).await;
    assert_eq!(status, 200, "{answer}");
    let results = answer["results"].as_array().expect("results").clone();
    assert_eq!(results.len(), 5, "{answer}");
    assert_eq!(results[0]["result"]["seq"], 1, "{answer}");
    assert_eq!(results[1]["error"]["code"], "forbidden", "{answer}");
    assert_eq!(results[2]["result"]["seq"], 2, "{answer}");
    assert_eq!(results[3]["error"]["code"], "message_too_large", "{answer}");
    assert_eq!(results[4]["result"]["seq"], 3, "{answer}");
    assert_eq!(fed.history(&chat).await, ["first", "second", "third"]);

    // More actions than a home takes in one request: refused whole.
    let many: Vec<Value> = (0..257).map(|i| one(&x, &format!("m{i}"))).collect();
    let body = serde_json::to_vec(&json!({ "actions": many })).unwrap();
    let req = fed.request("/federation/v1/actions", body);
    let answer = fed.send_signed(&req).await;
    assert_eq!(refusal(&answer), (400, "bad_request"), "{answer:?}");
    // A batch that is not one: refused whole, nothing applied.
    let req = fed.request("/federation/v1/actions", br#"{"actions": [1]}"#.to_vec());
    let answer = fed.send_signed(&req).await;
    assert_eq!(refusal(&answer), (400, "bad_request"), "{answer:?}");
    assert_eq!(fed.history(&chat).await, ["first", "second", "third"]);
}

#[tokio::test]
async fn a_peer_acts_only_in_chats_whose_home_is_this_node() {
    let mut fed = Fed::start().await;
    // A chat whose home is evil.test, mirrored here for alice.
    let chat_id = ChatId::generate();
    fed.applied_with_alice(1, chat_id).await;
    let body = action(&format!("x@{EVIL}"), send_message(chat_id, "sequence this"));
    let req = fed.request("/federation/v1/actions", body);
    let answer = fed.send_signed(&req).await;
    assert_eq!(refusal(&answer), (403, "forbidden"), "{answer:?}");
    assert_eq!(
        fed.history(&chat_id.to_string()).await,
        Vec::<String>::new()
    );
    assert_eq!(fed.alice.drain().await, Vec::<Value>::new());
}

#[tokio::test]
async fn events_for_a_chat_without_participants_here_are_refused() {
    let mut fed = Fed::start().await;
    let chat = ChatId::generate();
    let remote_only = created_chat(chat, &[&format!("x@{EVIL}"), "bob@other.test"]);
    let req = fed.request("/federation/v1/events", batch(1, remote_only));
    let answer = fed.send_signed(&req).await;
    assert_eq!(refusal(&answer), (403, "forbidden"), "{answer:?}");
    assert_eq!(answer.1["applied"], 0, "{answer:?}");
    fed.nothing_applied(&[]).await;
    // Nor was the chat stored: a message for it is for an unknown chat.
    let message = Event::Message {
        chat_id: chat,
        seq: 1,
        message_id: natter::ids::MessageId::generate(),
        from: format!("x@{EVIL}"),
        sent_at: now_ms(),
        text: "anyone?".into(),
        attachments: Vec::new(),
        sender_device: None,
    };
    let req = fed.request("/federation/v1/events", batch(2, message));
    let answer = fed.send_signed(&req).await;
    assert_eq!(refusal(&answer), (404, "unknown_chat"), "{answer:?}");
    assert_eq!(answer.1["applied"], 1, "{answer:?}");
}

#[tokio::test]
async fn a_batch_whose_predecessor_is_not_applied_is_refused_and_applies_nothing() {
    let mut fed = Fed::start().await;
    let chat = ChatId::generate();
    // Event 2 names event 1's batch, which never came: nothing of it is
    // applied, and the refusal names no refused event.
    let early = batch_after(2, 1, message_in(chat, 1, "too early"));
    let answer = fed
        .send_signed(&fed.request("/federation/v1/events", early.clone()))
        .await;
    assert_eq!(refusal(&answer), (409, "out_of_order"), "{answer:?}");
    assert_eq!(answer.1.get("applied"), None, "{answer:?}");
    assert_eq!(fed.alice.drain().await, Vec::<Value>::new());
    // Once event 1 is applied, the same batch is.
    fed.applied_with_alice(1, chat).await;
    let answer = fed
        .send_signed(&fed.request("/federation/v1/events", early))
        .await;
    assert_eq!(answer, (200, json!({"applied": 2, "ordered": true})));
    let message = fed.alice.event().await;
    assert_eq!(message["message"], "too early", "{message}");
}

#[tokio::test]
async fn batches_in_flight_together_are_applied_in_the_order_sent() {
    let mut fed = Fed::start().await;
    let chat = ChatId::generate();
    // The second batch is sent first; it waits for the one it names, which
    // follows: both are applied, in order.
    let second = fed.request(
        "/federation/v1/events",
        batch_after(2, 1, message_in(chat, 1, "second")),
    );
    let first = fed.request("/federation/v1/events", chat_with_alice(1, chat));
    let (second, first) = tokio::join!(fed.send_signed(&second), async {
        // Sent once the second one is on its way (its request started).
        tokio::task::yield_now().await;
        fed.send_signed(&first).await
    });
    assert_eq!(first, (200, json!({"applied": 1, "ordered": true})));
    assert_eq!(second, (200, json!({"applied": 2, "ordered": true})));
    let update = fed.alice.event().await;
    assert_eq!(update["type"], "chatUpdate", "{update}");
    let message = fed.alice.event().await;
    assert_eq!(message["message"], "second", "{message}");
}

#[tokio::test]
async fn only_a_chats_home_sends_its_events() {
    let mut fed = Fed::start().await;
    // alice's chat, whose home is this node; x@evil.test takes part.
    let chat = fed.local_chat().await;
    let chat_id = ChatId::parse(&chat).unwrap();
    let message = Event::Message {
        chat_id,
        seq: 1,
        message_id: natter::ids::MessageId::generate(),
        from: format!("x@{EVIL}"),
        sent_at: now_ms(),
        text: "injected".into(),
        attachments: Vec::new(),
        sender_device: None,
    };
    let req = fed.request("/federation/v1/events", batch(1, message));
    let answer = fed.send_signed(&req).await;
    assert_eq!(refusal(&answer), (403, "forbidden"), "{answer:?}");
    assert_eq!(answer.1["applied"], 0, "{answer:?}");

    // Nor may it rewrite the chat (rename it, take it over).
    let takeover = Event::Chat {
        chat_id,
        name: Some("Taken".into()),
        creator: format!("x@{EVIL}"),
        created_at: now_ms(),
        participants: vec![format!("alice@{HOME}"), format!("x@{EVIL}")],
        reason: Reason::Renamed,
        at: now_ms(),
        last_seq: 0,
    };
    let req = fed.request("/federation/v1/events", batch(1, takeover));
    let answer = fed.send_signed(&req).await;
    assert_eq!(refusal(&answer), (403, "forbidden"), "{answer:?}");

    assert_eq!(fed.history(&chat).await, Vec::<String>::new());
    let chats = fed.alice.ok(json!({"type":"listChats"})).await;
    assert_eq!(chats["chats"][0]["name"], "Ours", "{chats}");
    assert_eq!(chats["chats"][0]["lastSeq"], 0, "{chats}");
    fed.nothing_applied(&[chat]).await;
}

#[tokio::test]
async fn the_well_known_document_is_public() {
    let fed = Fed::start().await;
    let response = fed
        .http
        .get(format!("{}/.well-known/natter/node", fed.node.main_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let known: Value = response.json().await.unwrap();
    let (status, key) = fed.node.admin(reqwest::Method::GET, "/key", None).await;
    assert_eq!(status, 200, "{key}");
    assert_eq!(known["node"], HOME);
    assert_eq!(key["node"], HOME);
    assert_eq!(known["keys"][0]["publicKey"], key["publicKey"]);
    assert_eq!(known["keys"][0]["keyId"], key["fingerprint"]);
    // The key id is the one natter derives from the key.
    let public = base64::engine::general_purpose::STANDARD
        .decode(key["publicKey"].as_str().unwrap())
        .unwrap();
    let public = ed25519_dalek::VerifyingKey::from_bytes(&public.try_into().unwrap()).unwrap();
    assert_eq!(key["fingerprint"], key_id(&public));
}
