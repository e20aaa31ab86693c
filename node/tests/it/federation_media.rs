//! Attachments sent by remote participants (issue 8, "Remote media"): the
//! upload stays on the sender's node (the holder), the chat's home sequences the
//! message, and every participant's device downloads the bytes from the holder
//! with a URL its own node asked for (through the home when it is a third
//! node). Real nodes, real sockets; one request is signed by the test, as a
//! peer that is not in the chat.

use base64::Engine;
use ed25519_dalek::SigningKey;
use natter::federation::keys::key_id;
use natter::federation::signing::{OutgoingRequest, sign_request};
use serde_json::{Value, json};

use crate::federation::{Pair, chat_of_two, next, node_named, two_nodes};
use crate::in_every_topology;
use crate::media::s3_config;
use crate::support::node::Topology;
use crate::support::s3::S3Server;
use crate::support::{TestNode, WsClient};

/// Asks for an upload target on `node` and uploads `bytes` there; the id.
async fn upload(node: &TestNode, client: &mut WsClient, bytes: &[u8], name: &str) -> String {
    let target = client
        .ok(json!({"type":"getAttachmentTarget","size": bytes.len(),"contentType":"image/png","name": name}))
        .await;
    let mut put = node.http().put(target["uploadUrl"].as_str().unwrap());
    for (name, value) in target["headers"].as_object().unwrap() {
        put = put.header(name.as_str(), value.as_str().unwrap());
    }
    let status = put.body(bytes.to_vec()).send().await.unwrap().status();
    assert!(status.is_success(), "{status}");
    target["attachmentId"].as_str().unwrap().to_owned()
}

/// A URL for `id` as `client` gets it, and the bytes behind it.
async fn download(client: &mut WsClient, http: &reqwest::Client, id: &str) -> (String, Vec<u8>) {
    let link = client
        .ok(json!({"type":"getAttachmentUrl","attachmentId": id}))
        .await;
    let url = link["url"].as_str().unwrap().to_owned();
    let got = http.get(&url).send().await.unwrap();
    assert_eq!(got.status(), 200, "{url}");
    (url.clone(), got.bytes().await.unwrap().to_vec())
}

fn send(chat: &str, ids: &[&str]) -> Value {
    json!({"type":"sendMessage","chatId": chat,"message":"","attachments": ids})
}

/// The attachment fields every participant's device sees, local or remote.
fn as_seen(id: &str, bytes: &[u8], name: &str) -> Value {
    json!([{"attachmentId": id, "contentType": "image/png", "size": bytes.len(), "name": name}])
}

async fn a_remote_user_sends_an_attachment_its_node_holds(t: Topology) {
    let (a, b) = two_nodes(t).await;
    let Pair {
        mut alice,
        mut bob,
        chat,
        ..
    } = chat_of_two(&a, &b).await;
    let mut bob2 = b.connect(&b.login("bob").await).await;
    let mut carol = b.connect(&b.user("carol").await).await;

    let bytes = b"a picture uploaded to beta, never copied to alpha".to_vec();
    let id = upload(&b, &mut bob, &bytes, "cat.png").await;
    let sent = bob
        .ok(json!({"type":"sendMessage","chatId": chat,"message":"a cat","attachments":[id],"clientMsgId":"c1"}))
        .await;
    assert_eq!(sent["seq"], 1, "the home sequences it");
    for client in [&mut alice, &mut bob2] {
        let message = next(client, "newMessage").await;
        assert_eq!(message["attachments"], as_seen(&id, &bytes, "cat.png"));
        assert_eq!(message["messageId"], sent["messageId"]);
    }
    let history = alice.ok(json!({"type":"getHistory","chatId": chat})).await;
    assert_eq!(
        history["messages"][0]["attachments"],
        as_seen(&id, &bytes, "cat.png")
    );

    // Every device downloads the bytes from the holder, beta: alice's URL is
    // one alpha asked beta for.
    for (client, http) in [
        (&mut alice, a.http()),
        (&mut bob, b.http()),
        (&mut bob2, b.http()),
    ] {
        let (url, got) = download(client, http, &id).await;
        assert!(url.starts_with(b.main_url()), "served by beta: {url}");
        assert_eq!(got, bytes);
    }
    // carol, on beta but not in the chat, may not.
    assert_eq!(
        carol
            .error_code(json!({"type":"getAttachmentUrl","attachmentId": id}))
            .await,
        "forbidden"
    );
    // A retry is the same message, delivered once.
    let again = bob
        .ok(json!({"type":"sendMessage","chatId": chat,"message":"a cat","attachments":[id],"clientMsgId":"c1"}))
        .await;
    assert_eq!(again["messageId"], sent["messageId"]);

    // Refused as locally, with nothing delivered: an upload never made, another
    // user's upload, and an attachment alpha holds (bob saw it in the chat).
    let target = bob
        .ok(json!({"type":"getAttachmentTarget","size": 3,"contentType":"image/png"}))
        .await;
    let never = target["attachmentId"].as_str().unwrap().to_owned();
    let carols = upload(&b, &mut carol, b"carol's", "c.png").await;
    let alices = upload(&a, &mut alice, b"alice's", "a.png").await;
    alice.ok(send(&chat, &[&alices])).await;
    next(&mut bob, "newMessage").await;
    next(&mut bob2, "newMessage").await;
    for foreign in [&never, &carols, &alices] {
        assert_eq!(
            bob.error_code(send(&chat, &[foreign])).await,
            "unknown_attachment",
            "{foreign}"
        );
    }
    assert_eq!(alice.drain().await, Vec::<Value>::new(), "nothing sent");
    assert_eq!(bob2.drain().await, Vec::<Value>::new(), "nothing sent");

    non_participant_nodes_are_refused(&b, &id).await;

    // beta marked its upload sent: a day later the orphan sweep removes only
    // the two uploads never sent, and the sent one is still there.
    b.advance_clock(std::time::Duration::from_secs(25 * 3600))
        .await;
    let report = b.sweep().await;
    assert_eq!(report["orphanUploadsRemoved"], 2, "{report}");
    let (_, got) = download(&mut bob2, b.http(), &id).await;
    assert_eq!(got, bytes);
}

/// evil.test, a peer of beta with a key the test holds, is in no chat: beta
/// refuses it a URL, whoever it asks for.
async fn non_participant_nodes_are_refused(b: &TestNode, id: &str) {
    let key = SigningKey::from_bytes(&[0xE5; 32]);
    let public = base64::engine::general_purpose::STANDARD.encode(key.verifying_key().as_bytes());
    let peer = json!({"node": "evil.test", "url": "http://127.0.0.1:9", "publicKey": public});
    let (status, answer) = b.admin(reqwest::Method::POST, "/peers", Some(peer)).await;
    assert_eq!(status, 201, "{answer}");
    let unknown = "01JD3VA0C5V2B7N1M4Q8W3E6R9";
    for (user, attachment, expected) in [
        ("x@evil.test", id, (403, "forbidden")),
        ("alice@alpha.test", id, (403, "forbidden")),
        ("bob@beta.test", id, (403, "forbidden")),
        ("x@evil.test", unknown, (404, "unknown_attachment")),
    ] {
        let body = json!({"user": user, "attachmentId": attachment}).to_string();
        let (status, answer) = signed_post(b, &key, "/federation/v1/attachment-url", body).await;
        assert_eq!(
            (status, answer["code"].as_str().unwrap_or_default()),
            expected,
            "{user}: {answer}"
        );
    }
}

/// A request to `node` signed by evil.test; the status and JSON answer.
async fn signed_post(node: &TestNode, key: &SigningKey, path: &str, body: String) -> (u16, Value) {
    let authority = node.main_url().strip_prefix("http://").unwrap();
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).unwrap();
    let nonce = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(nonce);
    let outgoing = OutgoingRequest {
        origin: "evil.test",
        destination: "beta.test",
        method: "POST",
        authority,
        path,
        query: None,
        body: body.as_bytes(),
    };
    let headers = sign_request(
        key,
        &key_id(&key.verifying_key()),
        &outgoing,
        created,
        &nonce,
    )
    .expect("sign");
    let mut request = node
        .http()
        .post(format!("{}{path}", node.main_url()))
        .header("content-type", "application/json")
        .body(body);
    for (name, value) in headers.fields() {
        request = request.header(name, value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn a_third_node_downloads_from_the_holder_through_the_home(t: Topology) {
    // alpha is the home and peers with both; beta (the holder) and gamma do
    // not know each other.
    let (a, mut b) = two_nodes(t).await;
    let c = node_named("gamma.test", t).await;
    a.add_peer(&c).await;
    c.add_peer(&a).await;
    let mut alice = a.connect(&a.user("alice").await).await;
    let mut bob = b.connect(&b.user("bob").await).await;
    let mut carol = c.connect(&c.user("carol").await).await;
    let created = alice
        .ok(json!({"type":"createChat","participants":["bob@beta.test","carol@gamma.test"]}))
        .await;
    let chat = created["chatId"].as_str().unwrap().to_owned();
    for client in [&mut alice, &mut bob, &mut carol] {
        next(client, "chatUpdate").await;
    }
    let bytes = b"three nodes, one copy of the bytes".to_vec();
    let id = upload(&b, &mut bob, &bytes, "dog.png").await;
    bob.ok(send(&chat, &[&id])).await;
    for client in [&mut alice, &mut carol] {
        let message = next(client, "newMessage").await;
        assert_eq!(message["attachments"], as_seen(&id, &bytes, "dog.png"));
    }
    // gamma asks alpha, alpha asks beta; carol fetches from beta directly.
    for (client, http) in [(&mut carol, c.http()), (&mut alice, a.http())] {
        let (url, got) = download(client, http, &id).await;
        assert!(url.starts_with(b.main_url()), "served by beta: {url}");
        assert_eq!(got, bytes);
    }
    // The holder away: unavailable, not forbidden or unknown.
    b.kill9();
    for client in [&mut carol, &mut alice] {
        assert_eq!(
            client
                .error_code(json!({"type":"getAttachmentUrl","attachmentId": id}))
                .await,
            "unavailable"
        );
    }
}

/// beta keeps its media in S3 and holds bob's upload, sent in alpha's chat:
/// alice (through alpha) downloads the sealed copy, presented as beta's
/// record says (an HTML page: an attachment of opaque bytes under its name,
/// never rendered on the bucket's origin), and a second PUT to bob's
/// still-valid upload URL changes nothing she gets.
#[tokio::test]
async fn a_holder_in_s3_serves_what_was_sent() {
    let t = Topology::Split;
    let server = S3Server::start().await;
    let a = node_named("alpha.test", t).await;
    let config = format!(
        "name = \"beta.test\"\n{}[federation]\nmax_backoff = \"1s\"\n",
        s3_config(&server, "")
    );
    let b = TestNode::with_config(t, &config).await;
    a.add_peer(&b).await;
    b.add_peer(&a).await;
    let Pair {
        mut alice,
        mut bob,
        chat,
        ..
    } = chat_of_two(&a, &b).await;
    let bytes = b"<script>alert('held in beta's bucket')</script>".to_vec();
    let target = bob
        .ok(json!({"type":"getAttachmentTarget","size": bytes.len(),"contentType":"text/html","name":"page.html"}))
        .await;
    let id = target["attachmentId"].as_str().unwrap().to_owned();
    let put = |body: Vec<u8>| {
        let mut put = b.http().put(target["uploadUrl"].as_str().unwrap());
        for (name, value) in target["headers"].as_object().unwrap() {
            put = put.header(name.as_str(), value.as_str().unwrap());
        }
        put.body(body).send()
    };
    assert!(put(bytes.clone()).await.unwrap().status().is_success());
    bob.ok(send(&chat, &[&id])).await;
    next(&mut alice, "newMessage").await;
    let (url, got) = download(&mut alice, a.http(), &id).await;
    assert!(
        url.starts_with(&server.endpoint),
        "served from beta's bucket: {url}"
    );
    assert_eq!(got, bytes);
    let answer = a.http().get(&url).send().await.unwrap();
    assert_eq!(answer.headers()["content-type"], "application/octet-stream");
    assert_eq!(
        answer.headers()["content-disposition"],
        "attachment; filename*=UTF-8''page.html"
    );

    let mut other = bytes.clone();
    other.reverse();
    assert!(
        put(other).await.unwrap().status().is_success(),
        "S3 takes it"
    );
    assert_eq!(download(&mut alice, a.http(), &id).await.1, bytes);
    assert_eq!(download(&mut bob, b.http(), &id).await.1, bytes);
}

in_every_topology!(
    a_remote_user_sends_an_attachment_its_node_holds,
    a_third_node_downloads_from_the_holder_through_the_home,
);
