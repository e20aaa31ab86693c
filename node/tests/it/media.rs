//! Attachments in both storage modes: embedded (natterd serves signed URLs) and
//! S3 (a real S3-compatible server verifies object_store's pre-signed URLs).

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::node::BASE_CONFIG;
use crate::support::node::Topology;
use crate::support::s3::{self, S3Server};
use crate::support::slow_proxy::SlowProxy;
use crate::support::{TestNode, WsClient, eventually};

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n not really a picture, but bytes all the same";

async fn target(client: &mut WsClient, size: usize, content_type: &str) -> Value {
    client
        .ok(json!({"type":"getAttachmentTarget","size":size,"contentType":content_type,"name":"cat.png"}))
        .await
}

/// PUTs `body` to a target as a plain HTTP client would (with every header the
/// target names, the content type replaced by `content_type`); returns the status.
async fn put(http: &reqwest::Client, target: &Value, content_type: &str, body: Vec<u8>) -> u16 {
    assert_eq!(target["method"], "PUT");
    assert_eq!(target["headers"]["content-type"], "image/png");
    let mut request = http.put(target["uploadUrl"].as_str().unwrap());
    for (name, value) in target["headers"].as_object().unwrap() {
        if name != "content-type" {
            request = request.header(name.as_str(), value.as_str().unwrap());
        }
    }
    request
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn sha256_b64(bytes: &[u8]) -> String {
    use base64::Engine;
    use sha2::Digest;
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(bytes))
}

async fn get(http: &reqwest::Client, url: &str) -> (u16, Vec<u8>, Option<String>) {
    let response = http.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    let ct = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, response.bytes().await.unwrap().to_vec(), ct)
}

fn tamper(url: &str) -> String {
    // Both kinds of URL end with their signature (hex for S3, base64url for the
    // embedded store); change its last digit to another valid one.
    let (head, last) = url.split_at(url.len() - 1);
    let swapped = if last == "0" { "1" } else { "0" };
    format!("{head}{swapped}")
}

struct Chat {
    a: WsClient,
    b: WsClient,
    c: WsClient,
    chat: String,
}

async fn alice_bob_and_outsider_carol(node: &TestNode) -> Chat {
    let alice = node.user("alice").await;
    let bob = node.user("bob").await;
    let carol = node.user("carol").await;
    let mut a = node.connect(&alice).await;
    let b = node.connect(&bob).await;
    let c = node.connect(&carol).await;
    let chat = a
        .ok(json!({"type":"createChat","participants":["bob"]}))
        .await["chatId"]
        .as_str()
        .unwrap()
        .to_owned();
    Chat { a, b, c, chat }
}

/// The flow both modes share: upload, send, receive metadata, download, compare;
/// plus the refusals that do not depend on the backend.
async fn round_trip(node: &TestNode, chat: &mut Chat) -> String {
    let http = node.http();
    let t = target(&mut chat.a, PNG.len(), "image/png").await;
    let id = t["attachmentId"].as_str().unwrap().to_owned();
    // Sending before the upload is refused.
    assert_eq!(
        chat.a
            .error_code(
                json!({"type":"sendMessage","chatId":chat.chat,"message":"","attachments":[id]})
            )
            .await,
        "unknown_attachment"
    );
    assert_eq!(put(http, &t, "image/png", PNG.to_vec()).await, 200);
    let sent = chat
        .a
        .ok(json!({"type":"sendMessage","chatId":chat.chat,"message":"look","attachments":[id]}))
        .await;
    assert_eq!(sent["type"], "result");

    let events = chat.b.drain().await;
    let message = events.iter().find(|e| e["type"] == "newMessage").unwrap();
    assert_eq!(
        message["attachments"],
        json!([{"attachmentId": id, "contentType": "image/png", "size": PNG.len(), "name": "cat.png"}])
    );
    let history = chat
        .b
        .ok(json!({"type":"getHistory","chatId":chat.chat}))
        .await;
    assert_eq!(
        history["messages"][0]["attachments"][0]["attachmentId"],
        id.as_str()
    );

    let link = chat
        .b
        .ok(json!({"type":"getAttachmentUrl","attachmentId":id}))
        .await;
    let url = link["url"].as_str().unwrap();
    let (status, bytes, ct) = get(http, url).await;
    assert_eq!(status, 200);
    assert_eq!(bytes, PNG);
    assert_eq!(ct.as_deref(), Some("image/png"));
    let (status, _, _) = get(http, &tamper(url)).await;
    assert_eq!(status, 403, "a tampered URL must be refused");

    // Only participants of a chat it was sent in.
    assert_eq!(
        chat.c
            .error_code(json!({"type":"getAttachmentUrl","attachmentId":id}))
            .await,
        "forbidden"
    );
    assert_eq!(
        chat.c
            .error_code(
                json!({"type":"getAttachmentUrl","attachmentId":"01JD3VA0C5V2B7N1M4Q8W3E6R9"})
            )
            .await,
        "unknown_attachment"
    );
    // Only the uploader may send it.
    let bob_chat = chat
        .b
        .ok(json!({"type":"createChat","participants":["carol"]}))
        .await["chatId"]
        .clone();
    assert_eq!(
        chat.b
            .error_code(json!({"type":"sendMessage","chatId":bob_chat,"message":"mine now","attachments":[id]}))
            .await,
        "unknown_attachment"
    );
    // A content type that differs from the signed one is refused by the store.
    let t2 = target(&mut chat.a, PNG.len(), "image/png").await;
    assert_eq!(put(http, &t2, "image/gif", PNG.to_vec()).await, 403);

    // With a declared SHA-256 the store refuses other bytes of the same size.
    let sum = sha256_b64(PNG);
    let t3 = chat
        .a
        .ok(json!({"type":"getAttachmentTarget","size":PNG.len(),"contentType":"image/png","sha256":sum}))
        .await;
    assert_eq!(t3["headers"]["x-amz-checksum-sha256"], sum.as_str());
    let mut tampered = PNG.to_vec();
    tampered[0] ^= 1;
    assert_eq!(put(http, &t3, "image/png", tampered).await, 400);
    assert_eq!(put(http, &t3, "image/png", PNG.to_vec()).await, 200);
    assert_eq!(
        chat.a
            .error_code(json!({"type":"getAttachmentTarget","size":3,"contentType":"image/png","sha256":"nope"}))
            .await,
        "bad_request"
    );
    id
}

async fn embedded_media_round_trip_and_refusals(t: Topology) {
    let node = TestNode::with_config(
        t,
        &format!("{BASE_CONFIG}\n[media]\nmax_size = 1000\nallowed_types = [\"image/*\"]\n"),
    )
    .await;
    let mut chat = alice_bob_and_outsider_carol(&node).await;
    let id = round_trip(&node, &mut chat).await;
    let http = node.http();

    // Limits and declared sizes.
    assert_eq!(
        chat.a
            .error_code(json!({"type":"getAttachmentTarget","size":1001,"contentType":"image/png"}))
            .await,
        "attachment_too_large"
    );
    assert_eq!(
        chat.a
            .error_code(
                json!({"type":"getAttachmentTarget","size":10,"contentType":"application/x-sh"})
            )
            .await,
        "bad_request"
    );
    let t = target(&mut chat.a, 10, "image/png").await;
    assert_eq!(put(http, &t, "image/png", vec![1; 11]).await, 413);
    assert_eq!(put(http, &t, "image/png", vec![1; 5]).await, 400);
    assert_eq!(put(http, &t, "image/png", vec![1; 10]).await, 200);

    // Expired URLs: the node's clock moves past the download expiry (1 h) and the
    // upload expiry (15 min).
    let url = chat
        .b
        .ok(json!({"type":"getAttachmentUrl","attachmentId":id}))
        .await["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let late_upload = target(&mut chat.a, 3, "image/png").await;
    node.advance_clock(Duration::from_secs(2 * 3600)).await;
    assert_eq!(get(http, &url).await.0, 403);
    assert_eq!(put(http, &late_upload, "image/png", vec![1; 3]).await, 403);

    // A participant removed later loses access to what is sent after.
    chat.a
        .ok(json!({"type":"modifyChatParticipants","chatId":chat.chat,"userId":"bob","operation":"REMOVE"}))
        .await;
    let t = target(&mut chat.a, PNG.len(), "image/png").await;
    let after = t["attachmentId"].as_str().unwrap().to_owned();
    assert_eq!(put(http, &t, "image/png", PNG.to_vec()).await, 200);
    chat.a
        .ok(json!({"type":"sendMessage","chatId":chat.chat,"message":"","attachments":[after]}))
        .await;
    assert_eq!(
        chat.b
            .error_code(json!({"type":"getAttachmentUrl","attachmentId":after}))
            .await,
        "forbidden"
    );

    // Never-sent uploads go after 24 h; the file really disappears.
    let orphan = target(&mut chat.a, 4, "image/png").await;
    let orphan_id = orphan["attachmentId"].as_str().unwrap().to_owned();
    assert_eq!(put(http, &orphan, "image/png", vec![7; 4]).await, 200);
    let orphan_file = node.data.join("media").join(&orphan_id);
    assert!(orphan_file.exists());
    node.advance_clock(Duration::from_secs(25 * 3600)).await;
    let report = node.sweep().await;
    assert!(
        report["orphanUploadsRemoved"].as_u64().unwrap() >= 1,
        "{report}"
    );
    assert!(!orphan_file.exists());
    // Sent attachments stay until the media retention (30 days), as the sealed
    // copy (the upload itself is gone).
    let sent_file = node.data.join("media").join("sent").join(&id);
    assert!(sent_file.exists());
    assert!(!node.data.join("media").join(&id).exists());
    node.advance_clock(Duration::from_secs(31 * 86400)).await;
    let report = node.sweep().await;
    assert!(
        report["attachmentsExpired"].as_u64().unwrap() >= 1,
        "{report}"
    );
    assert!(!sent_file.exists());
    assert_eq!(
        chat.a
            .error_code(json!({"type":"getAttachmentUrl","attachmentId":id}))
            .await,
        "unknown_attachment"
    );
}

async fn large_uploads_stream_through_the_embedded_store(t: Topology) {
    let node = TestNode::start(t).await;
    let alice = node.user("alice").await;
    let mut a = node.connect(&alice).await;
    // Larger than the 64 KiB body limit of the other endpoints, and than one
    // streamed part (256 KiB).
    let body: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    let t = target(&mut a, body.len(), "image/png").await;
    assert_eq!(put(node.http(), &t, "image/png", body.clone()).await, 200);
    let id = t["attachmentId"].as_str().unwrap();
    let url = a
        .ok(json!({"type":"getAttachmentUrl","attachmentId":id}))
        .await["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, bytes, _) = get(node.http(), &url).await;
    assert_eq!(status, 200);
    assert_eq!(bytes, body);
}

crate::in_every_topology!(large_uploads_stream_through_the_embedded_store);

pub(crate) fn s3_config(server: &S3Server, extra: &str) -> String {
    s3_config_at(&server.endpoint, extra)
}

/// [`s3_config`] with the S3 endpoint at `endpoint`.
fn s3_config_at(endpoint: &str, extra: &str) -> String {
    format!(
        "{BASE_CONFIG}\n[media]\nstore = \"s3://{}/natter\"\nmax_size = 1000\n{extra}\n\
         [media.s3]\nendpoint = \"{}\"\nregion = \"us-east-1\"\naccess_key_id = \"{}\"\n\
         secret_access_key = \"{}\"\npath_style = true\nallow_http = true\n",
        s3::BUCKET,
        endpoint,
        s3::ACCESS_KEY,
        s3::SECRET_KEY
    )
}

async fn s3_media_round_trip_and_refusals(t: Topology) {
    let server = S3Server::start().await;
    let node = TestNode::with_config(t, &s3_config(&server, "")).await;
    let mut chat = alice_bob_and_outsider_carol(&node).await;
    let id = round_trip(&node, &mut chat).await;
    let http = node.http();
    // The bytes went to the bucket, not through natter; sent, they were copied
    // to the sealed key and the upload deleted.
    assert_eq!(
        std::fs::read(server.object_path(&format!("natter/sent/{id}"))).unwrap(),
        PNG
    );
    assert!(!server.object_path(&format!("natter/{id}")).exists());
    assert!(!node.data.join("media").join(&id).exists());

    // S3 cannot cap a pre-signed PUT: natter checks the object before sending and
    // deletes one that does not match.
    let t = target(&mut chat.a, 10, "image/png").await;
    let wrong = t["attachmentId"].as_str().unwrap().to_owned();
    assert_eq!(put(http, &t, "image/png", vec![1; 11]).await, 200);
    assert_eq!(
        chat.a
            .error_code(
                json!({"type":"sendMessage","chatId":chat.chat,"message":"","attachments":[wrong]})
            )
            .await,
        "unknown_attachment"
    );
    assert!(!server.object_path(&format!("natter/{wrong}")).exists());
    let t = target(&mut chat.a, 1000, "image/png").await;
    let huge = t["attachmentId"].as_str().unwrap().to_owned();
    assert_eq!(put(http, &t, "image/png", vec![1; 5000]).await, 200);
    assert_eq!(
        chat.a
            .error_code(
                json!({"type":"sendMessage","chatId":chat.chat,"message":"","attachments":[huge]})
            )
            .await,
        "attachment_too_large"
    );
    assert!(!server.object_path(&format!("natter/{huge}")).exists());

    // Orphans are removed from the bucket.
    let orphan = target(&mut chat.a, 4, "image/png").await;
    let orphan_id = orphan["attachmentId"].as_str().unwrap().to_owned();
    assert_eq!(put(http, &orphan, "image/png", vec![7; 4]).await, 200);
    let orphan_object = server.object_path(&format!("natter/{orphan_id}"));
    assert!(orphan_object.exists());
    node.advance_clock(Duration::from_secs(25 * 3600)).await;
    let report = node.sweep().await;
    assert!(
        report["orphanUploadsRemoved"].as_u64().unwrap() >= 1,
        "{report}"
    );
    assert!(!orphan_object.exists());
}

/// A split node whose object store is behind a [`SlowProxy`], and alice's
/// upload, ready to send (the proxy not yet holding).
struct SlowStore {
    /// Kept (bind it to a named variable): dropping it stops the server.
    _server: S3Server,
    proxy: SlowProxy,
    node: TestNode,
    chat: Chat,
    upload: String,
}

async fn slow_store(limits: &str) -> SlowStore {
    let server = S3Server::start().await;
    let proxy = SlowProxy::start(server.endpoint.trim_start_matches("http://")).await;
    // Long enough that a held send is not given up by its gateway.
    let config = s3_config_at(&proxy.endpoint, "")
        .replace("request_timeout = \"2s\"", "request_timeout = \"60s\"")
        .replace("[limits]\n", &format!("[limits]\n{limits}\n"));
    let node = TestNode::with_config(Topology::Split, &config).await;
    let mut chat = alice_bob_and_outsider_carol(&node).await;
    let t = target(&mut chat.a, PNG.len(), "image/png").await;
    let upload = t["attachmentId"].as_str().unwrap().to_owned();
    assert_eq!(put(node.http(), &t, "image/png", PNG.to_vec()).await, 200);
    SlowStore {
        _server: server,
        proxy,
        node,
        chat,
        upload,
    }
}

/// Split mode: while one device's send waits on a slow object store (the HEAD
/// that checks its upload), the core answers other devices at once; the
/// waiting device's later command is carried out after it, in order.
#[tokio::test]
async fn a_slow_object_store_holds_up_only_the_device_that_waits_on_it() {
    // A lane holds one waiting command.
    let SlowStore {
        proxy,
        node,
        mut chat,
        upload: id,
        _server: _s3,
    } = slow_store("rpc_lane_commands = 1").await;

    proxy.hold();
    let send = |id: &str, message: &str, attachments: Vec<&str>| json!({"type":"sendMessage","id":id,"chatId":chat.chat,"message":message,"attachments":attachments});
    chat.a.send(&send("slow", "first", vec![&id])).await;
    chat.a.send(&send("next", "second", vec![])).await;
    eventually("the object store's answer to be held", || async {
        (proxy.waiting() > 0).then_some(())
    })
    .await;

    // Another device, another gateway: answered while the store is stuck.
    let meanwhile = tokio::time::timeout(
        Duration::from_secs(5),
        chat.b
            .ok(json!({"type":"sendMessage","chatId":chat.chat,"message":"meanwhile"})),
    )
    .await
    .expect("another device's send was held up by the slow object store");

    // The held device's lane is full: one more command is refused, not queued.
    chat.a.send(&send("third", "third", vec![])).await;
    let refused = chat.a.answer("third").await;
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    assert!(refused["retryAfterMs"].as_u64().is_some(), "{refused}");

    proxy.release();
    let first = chat.a.answer("slow").await;
    let second = chat.a.answer("next").await;
    assert_eq!(first["type"], "result", "{first}");
    assert_eq!(second["type"], "result", "{second}");
    let seq = |answer: &Value| answer["seq"].as_u64().unwrap();
    assert!(seq(&meanwhile) < seq(&first), "{meanwhile} {first}");
    assert_eq!(
        seq(&second),
        seq(&first) + 1,
        "one device's commands in order"
    );
    let texts: Vec<Value> = chat
        .b
        .drain()
        .await
        .iter()
        .filter(|e| e["type"] == "newMessage")
        .map(|e| e["message"].clone())
        .collect();
    assert_eq!(texts, vec![json!("first"), json!("second")]);
    // Lanes end once empty.
    eventually("the core's lanes to be gone", || async {
        let lanes = node.metric(node.main_admin_url(), "natter_rpc_lanes").await;
        (lanes == Some(0.0)).then_some(())
    })
    .await;
}

/// With every lane taken (`limits.rpc_lanes = 1`, held by a send waiting on
/// the object store), another device's command is refused `unavailable` at
/// once rather than queued without bound.
#[tokio::test]
async fn past_the_lane_limit_commands_are_refused_at_once() {
    let SlowStore {
        proxy,
        node: _node,
        mut chat,
        upload,
        _server: _s3,
    } = slow_store("rpc_lanes = 1").await;
    proxy.hold();
    chat.a
        .send(&json!({"type":"sendMessage","id":"slow","chatId":chat.chat,"message":"","attachments":[upload]}))
        .await;
    eventually("the object store's answer to be held", || async {
        (proxy.waiting() > 0).then_some(())
    })
    .await;
    let send = json!({"type":"sendMessage","chatId":chat.chat,"message":"busy?"});
    assert_eq!(chat.b.error_code(send.clone()).await, "unavailable");
    proxy.release();
    assert_eq!(chat.a.answer("slow").await["type"], "result");
    chat.b.ok(send).await;
}

async fn s3_refuses_expired_upload_urls(t: Topology) {
    let server = S3Server::start().await;
    let node = TestNode::with_config(t, &s3_config(&server, "upload_expiry = \"1s\"")).await;
    let alice = node.user("alice").await;
    let mut a = node.connect(&alice).await;
    let t = target(&mut a, 3, "image/png").await;
    let http = node.http().clone();
    // The store's clock decides; wait (bounded) until it says the URL expired.
    eventually("the store to refuse an expired URL", || {
        let http = http.clone();
        let t = t.clone();
        async move { (put(&http, &t, "image/png", vec![1; 3]).await == 403).then_some(()) }
    })
    .await;
}

crate::in_every_topology!(
    embedded_media_round_trip_and_refusals,
    s3_media_round_trip_and_refusals,
    s3_refuses_expired_upload_urls
);

/// Uploads `body` to a new target and returns the target (`headers` as given).
async fn upload_target(node: &TestNode, client: &mut WsClient, body: &[u8]) -> Value {
    let t = target(client, body.len(), "image/png").await;
    assert_eq!(put(node.http(), &t, "image/png", body.to_vec()).await, 200);
    t
}

/// What `client` downloads for `id` through a fresh `getAttachmentUrl`.
async fn fresh_download(node: &TestNode, client: &mut WsClient, id: &str) -> Vec<u8> {
    let link = client
        .ok(json!({"type":"getAttachmentUrl","attachmentId": id}))
        .await;
    let (status, bytes, _) = get(node.http(), link["url"].as_str().unwrap()).await;
    assert_eq!(status, 200);
    bytes
}

/// Once sent, an attachment cannot be replaced: a second PUT to its
/// still-valid upload URL (other bytes, same size and type) is refused (the
/// embedded store) or lands on a key nothing serves (S3). Recipients, the
/// uploader, a retry of the send and a later send of the same attachment all
/// keep the original bytes. Answers the id.
async fn a_sent_attachment_stays_what_was_sent(node: &TestNode, chat: &mut Chat) -> String {
    let t = upload_target(node, &mut chat.a, PNG).await;
    let id = t["attachmentId"].as_str().unwrap().to_owned();
    let send = json!({"type":"sendMessage","chatId":chat.chat,"message":"look","attachments":[id],"clientMsgId":"frozen"});
    let sent = chat.a.ok(send.clone()).await;
    assert_eq!(fresh_download(node, &mut chat.b, &id).await, PNG);

    let mut other = PNG.to_vec();
    other.reverse();
    let status = put(node.http(), &t, "image/png", other.clone()).await;
    assert!(status == 200 || status == 409, "{status}");
    assert_eq!(fresh_download(node, &mut chat.b, &id).await, PNG);
    assert_eq!(fresh_download(node, &mut chat.a, &id).await, PNG);
    // A retry is the same message, and sealing it again changes nothing.
    assert_eq!(chat.a.ok(send).await["messageId"], sent["messageId"]);
    chat.a
        .ok(json!({"type":"sendMessage","chatId":chat.chat,"message":"again","attachments":[id]}))
        .await;
    assert_eq!(fresh_download(node, &mut chat.b, &id).await, PNG);
    id
}

/// A send refused after its check (an unknown chat): the attachment is sealed
/// but unsent. Answers the id.
async fn a_send_refused_after_the_check(node: &TestNode, chat: &mut Chat) -> String {
    let t = upload_target(node, &mut chat.a, PNG).await;
    let id = t["attachmentId"].as_str().unwrap().to_owned();
    assert_eq!(
        chat.a
            .error_code(json!({"type":"sendMessage","chatId":"01JD3VA0C5V2B7N1M4Q8W3E6R9","message":"","attachments":[id]}))
            .await,
        "unknown_chat"
    );
    id
}

/// A day later the orphan sweep removes what a refused send left.
async fn the_orphan_sweep_runs(node: &TestNode) {
    node.advance_clock(Duration::from_secs(25 * 3600)).await;
    let report = node.sweep().await;
    assert!(
        report["orphanUploadsRemoved"].as_u64().unwrap() >= 1,
        "{report}"
    );
}

async fn s3_sent_attachments_cannot_be_replaced(t: Topology) {
    let server = S3Server::start().await;
    let node = TestNode::with_config(t, &s3_config(&server, "")).await;
    let mut chat = alice_bob_and_outsider_carol(&node).await;
    let id = a_sent_attachment_stays_what_was_sent(&node, &mut chat).await;
    // S3 took the second PUT, under the upload key; the sealed copy is intact.
    assert_eq!(
        std::fs::read(server.object_path(&format!("natter/sent/{id}"))).unwrap(),
        PNG
    );
    assert!(server.object_path(&format!("natter/{id}")).exists());
    let refused = a_send_refused_after_the_check(&node, &mut chat).await;
    let copy = server.object_path(&format!("natter/sent/{refused}"));
    assert!(copy.exists(), "sealed before the writer refused the send");
    the_orphan_sweep_runs(&node).await;
    assert!(!copy.exists());
    assert!(!server.object_path(&format!("natter/{refused}")).exists());
}

async fn embedded_sent_attachments_cannot_be_replaced(t: Topology) {
    let node = TestNode::start(t).await;
    let mut chat = alice_bob_and_outsider_carol(&node).await;
    let id = a_sent_attachment_stays_what_was_sent(&node, &mut chat).await;
    let media = node.data.join("media");
    assert_eq!(std::fs::read(media.join("sent").join(&id)).unwrap(), PNG);
    let refused = a_send_refused_after_the_check(&node, &mut chat).await;
    let copy = media.join("sent").join(&refused);
    assert!(copy.exists(), "sealed before the writer refused the send");
    the_orphan_sweep_runs(&node).await;
    assert!(!copy.exists());
    assert!(!media.join(&refused).exists());
}

crate::in_every_topology!(
    s3_sent_attachments_cannot_be_replaced,
    embedded_sent_attachments_cannot_be_replaced
);

/// Uploads `body` as `content_type` (named `name`) to a new target and
/// returns its id.
async fn upload_as(
    node: &TestNode,
    client: &mut WsClient,
    content_type: &str,
    name: Option<&str>,
    body: &[u8],
) -> String {
    let t = client
        .ok(json!({"type":"getAttachmentTarget","size": body.len(),"contentType": content_type,"name": name}))
        .await;
    let mut request = node.http().put(t["uploadUrl"].as_str().unwrap());
    for (name, value) in t["headers"].as_object().unwrap() {
        request = request.header(name.as_str(), value.as_str().unwrap());
    }
    let status = request.body(body.to_vec()).send().await.unwrap().status();
    assert!(status.is_success(), "{status}");
    t["attachmentId"].as_str().unwrap().to_owned()
}

/// A download as it came back: its URL and the answer's headers.
struct Fetched {
    url: String,
    headers: reqwest::header::HeaderMap,
}

/// Sends attachments whose bytes would run if a browser rendered them (SVG
/// and HTML, with and without a name) and an image, and checks what bob's
/// downloads come back as, whichever store serves them: only the image keeps
/// its type and opens inline; the rest are `application/octet-stream`
/// attachments under their (RFC 8187-encoded) names. Answers each download.
async fn downloads_are_presented_safely(node: &TestNode, chat: &mut Chat) -> Vec<Fetched> {
    let svg = br#"<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>"#;
    let html = b"<script>alert(1)</script>".as_slice();
    let opaque = "application/octet-stream";
    let cases = [
        (
            "image/svg+xml",
            Some("logo.svg"),
            &svg[..],
            opaque,
            "attachment; filename*=UTF-8''logo.svg",
        ),
        (
            "text/html",
            Some("Grüße, page.html"),
            html,
            opaque,
            "attachment; filename*=UTF-8''Gr%C3%BC%C3%9Fe%2C%20page.html",
        ),
        ("text/html", None, html, opaque, "attachment"),
        (
            "image/png",
            Some("cat.png"),
            PNG,
            "image/png",
            "inline; filename*=UTF-8''cat.png",
        ),
    ];
    let mut fetched = Vec::new();
    for (content_type, name, body, served_as, disposition) in cases {
        let id = upload_as(node, &mut chat.a, content_type, name, body).await;
        chat.a
            .ok(json!({"type":"sendMessage","chatId": chat.chat,"message":"","attachments":[id]}))
            .await;
        let url = chat
            .b
            .ok(json!({"type":"getAttachmentUrl","attachmentId": id}))
            .await["url"]
            .as_str()
            .unwrap()
            .to_owned();
        let response = node.http().get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{content_type}: {url}");
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], served_as, "{content_type}");
        assert_eq!(
            headers["content-disposition"], disposition,
            "{content_type}"
        );
        assert_eq!(response.bytes().await.unwrap(), body);
        fetched.push(Fetched { url, headers });
    }
    fetched
}

/// The embedded store also runs nothing it serves: `nosniff`, and a sandbox
/// (no scripts, an opaque origin) even for a file opened in place.
async fn embedded_downloads_run_nothing_and_only_media_opens_inline(t: Topology) {
    let node = TestNode::start(t).await;
    let mut chat = alice_bob_and_outsider_carol(&node).await;
    for fetched in downloads_are_presented_safely(&node, &mut chat).await {
        assert_eq!(fetched.headers["x-content-type-options"], "nosniff");
        assert_eq!(fetched.headers["content-security-policy"], "sandbox");
    }
}

/// S3 download URLs sign the same type and disposition in as
/// `response-content-type` and `response-content-disposition`; the store
/// (s3s-fs, as S3) answers with them instead of the uploaded object's type,
/// and refuses the URL with either changed.
async fn s3_downloads_carry_the_same_type_and_disposition(t: Topology) {
    let server = S3Server::start().await;
    let node = TestNode::with_config(t, &s3_config(&server, "")).await;
    let mut chat = alice_bob_and_outsider_carol(&node).await;
    let fetched = downloads_are_presented_safely(&node, &mut chat).await;
    let html = &fetched[1];
    assert!(html.url.starts_with(&server.endpoint), "{}", html.url);
    let query: Vec<(String, String)> = reqwest::Url::parse(&html.url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        param("response-content-type").as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(
        param("response-content-disposition"),
        html.headers["content-disposition"]
            .to_str()
            .ok()
            .map(String::from)
    );
    // The rest of the URL byte for byte, one override changed or both left
    // out: refused.
    let (base, raw_query) = html.url.split_once('?').unwrap();
    for (name, value) in [
        ("response-content-disposition", Some("inline")),
        ("response-content-type", Some("text%2Fhtml")),
        ("response-content", None),
    ] {
        let changed: Vec<String> = raw_query
            .split('&')
            .filter_map(|pair| match (pair.split_once('='), value) {
                (Some((k, _)), Some(value)) if k == name => Some(format!("{k}={value}")),
                (Some((k, _)), None) if k.starts_with(name) => None,
                _ => Some(pair.to_owned()),
            })
            .collect();
        let url = format!("{base}?{}", changed.join("&"));
        assert_ne!(url, html.url);
        let (status, _, _) = get(node.http(), &url).await;
        assert_eq!(status, 403, "{name}={value:?} is not what was signed");
    }
    assert_eq!(
        get(node.http(), &html.url).await.0,
        200,
        "the URL as signed"
    );
}

crate::in_every_topology!(
    embedded_downloads_run_nothing_and_only_media_opens_inline,
    s3_downloads_carry_the_same_type_and_disposition
);
