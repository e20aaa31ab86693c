//! Online backups: `GET /admin/v1/backup` taken while a client sends, checked
//! (`natter::backup::verify_file`, the reader `natter backup verify` uses),
//! restored with the real `natterd restore` into a fresh folder, and a node
//! started on it (on a fresh nats-server) compared with the original as of
//! the snapshot. The `natter backup` CLI itself is tested in cli/tests/cli.rs.

use std::path::{Path, PathBuf};
use std::process::Command;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::in_every_topology;
use crate::support::node::{BASE_CONFIG, Creds, Topology};
use crate::support::{DEADLINE, TestNode, WsClient};

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n a picture worth backing up";
const SENDS: usize = 1000;
/// Acknowledged sends before the backup starts.
const BEFORE_BACKUP: usize = 300;

in_every_topology!(a_backup_taken_while_sending_restores_the_node_as_of_its_snapshot);

/// Every message of `chat`, oldest first.
async fn history(client: &mut WsClient, chat: &str) -> Vec<Value> {
    let mut all = Vec::new();
    loop {
        let after = all.last().map_or(0, |m: &Value| m["seq"].as_u64().unwrap());
        let page = client
            .ok(json!({"type":"getHistory","chatId":chat,"afterSeq":after,"limit":200}))
            .await;
        let messages = page["messages"].as_array().unwrap().clone();
        if messages.is_empty() {
            return all;
        }
        all.extend(messages);
    }
}

/// Every event pending for the client's device, in order, acknowledged as
/// they come (more than a window's worth are pending).
async fn pending_events(client: &mut WsClient) -> Vec<Value> {
    client.send(&json!({"type":"sync","id":"all"})).await;
    let (mut events, mut unacked) = (Vec::new(), Vec::new());
    loop {
        let frame = client.recv().await;
        if frame["id"] == "all" {
            assert_eq!(frame["type"], "result", "{frame}");
            return events;
        }
        assert!(frame.get("deliveryId").is_some(), "{frame}");
        unacked.push(frame["deliveryId"].clone());
        events.push(frame);
        if unacked.len() >= 100 {
            let ids = std::mem::take(&mut unacked);
            client.send(&json!({"type":"ack","deliveryIds": ids})).await;
        }
    }
}

/// The read position of the client's user in `chat` (`lastSeq - unread`).
async fn read_position(client: &mut WsClient, chat: &str) -> u64 {
    let chats = client.ok(json!({"type":"listChats"})).await;
    let entry = chats["chats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["chatId"] == chat)
        .expect("the chat is listed")
        .clone();
    entry["lastSeq"].as_u64().unwrap() - entry["unread"].as_u64().unwrap()
}

/// Uploads `body` as an attachment through the URL the node signs.
async fn upload(node: &TestNode, client: &mut WsClient, body: &[u8]) -> String {
    let t = client
        .ok(json!({"type":"getAttachmentTarget","size": body.len(),"contentType":"image/png"}))
        .await;
    let mut request = node.http().put(t["uploadUrl"].as_str().unwrap());
    for (name, value) in t["headers"].as_object().unwrap() {
        request = request.header(name.as_str(), value.as_str().unwrap());
    }
    let status = request.body(body.to_vec()).send().await.unwrap().status();
    assert!(status.is_success(), "{status}");
    t["attachmentId"].as_str().unwrap().to_owned()
}

async fn download(node: &TestNode, client: &mut WsClient, id: &str) -> Vec<u8> {
    let link = client
        .ok(json!({"type":"getAttachmentUrl","attachmentId": id}))
        .await;
    let response = node
        .http()
        .get(link["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap().to_vec()
}

/// Takes a backup through the admin API into `file`, streaming.
async fn take_backup(admin_url: String, token: String, file: PathBuf) -> u64 {
    let mut response = reqwest::Client::new()
        .get(format!("{admin_url}/admin/v1/backup?media=true"))
        .bearer_auth(token)
        .send()
        .await
        .expect("backup request");
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-natter-backup-estimate"));
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await.expect("the backup streams") {
        out.extend_from_slice(&chunk);
    }
    std::fs::write(&file, &out).unwrap();
    out.len() as u64
}

/// Sends [`SENDS`] messages pipelined on one connection of `creds`; once
/// [`BEFORE_BACKUP`] are acknowledged, starts the backup. Returns the
/// highest seq acknowledged before the backup started.
async fn send_while_backing_up(node: &TestNode, creds: &Creds, chat: &str, file: &Path) -> u64 {
    let mut request = node.ws_url().into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", creds.token).parse().unwrap(),
    );
    let (socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let (mut sink, mut stream) = socket.split();
    let chat_id = chat.to_owned();
    let writer = tokio::spawn(async move {
        for i in 0..SENDS {
            let frame = json!({"type":"sendMessage","id":format!("p{i}"),"chatId":chat_id,
                "message":format!("pipelined {i}"),"attachments":[],"clientMsgId":format!("c{i}")});
            sink.send(Message::text(frame.to_string())).await.unwrap();
        }
        sink
    });
    let (mut acked, mut acked_before, mut backup) = (0, 0, None);
    while acked < SENDS {
        let next = tokio::time::timeout(DEADLINE, stream.next())
            .await
            .expect("answers keep coming");
        let Some(Ok(Message::Text(text))) = next else {
            continue;
        };
        let frame: Value = serde_json::from_str(&text).unwrap();
        if frame["type"] == "error" {
            panic!("a send failed: {frame}");
        }
        if frame["type"] != "result" {
            continue;
        }
        acked += 1;
        acked_before = acked_before.max(frame["seq"].as_u64().unwrap_or(0));
        if acked == BEFORE_BACKUP {
            let task = take_backup(
                node.main_admin_url().to_owned(),
                node.admin_token.clone(),
                file.to_owned(),
            );
            backup = Some((tokio::spawn(task), acked_before));
        }
    }
    let _sink = writer.await.unwrap();
    let (task, acked_before) = backup.expect("the backup started");
    assert!(task.await.unwrap() > 0);
    acked_before
}

fn natterd_restore(file: &Path, data: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_natterd"))
        .args(["restore", &file.display().to_string(), "--data"])
        .arg(data)
        .output()
        .expect("run natterd restore")
}

/// Users alice and bob (two devices: bob2 stays offline), a chat with an
/// attachment, bob's read position at 2; then 1,000 sends with a backup
/// taken in their middle. The restored node has the same users, devices,
/// read positions and attachment, a history that is a prefix of the
/// original's (at least what was acknowledged before the backup), and bob2
/// gets exactly the events it had pending at the snapshot.
async fn a_backup_taken_while_sending_restores_the_node_as_of_its_snapshot(topology: Topology) {
    let node = TestNode::start(topology).await;
    let alice = node.user("alice").await;
    let bob1 = node.user("bob").await;
    let bob2 = node.login("bob").await;
    let mut a = node.connect(&alice).await;
    let created = a
        .ok(json!({"type":"createChat","participants":["bob"],"name":"backed up"}))
        .await;
    let chat = created["chatId"].as_str().unwrap().to_owned();
    let attachment = upload(&node, &mut a, PNG).await;
    a.ok(json!({"type":"sendMessage","chatId":chat,"message":"picture","attachments":[attachment],"clientMsgId":"att"}))
        .await;
    for i in 0..3 {
        a.ok(json!({"type":"sendMessage","chatId":chat,"message":format!("hello {i}"),"attachments":[],"clientMsgId":format!("h{i}")}))
            .await;
    }
    let mut b1 = node.connect(&bob1).await;
    b1.ok(json!({"type":"markRead","chatId":chat,"seq":2}))
        .await;
    b1.close().await;

    a.close().await;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.backup");
    let acked_before = send_while_backing_up(&node, &alice, &chat, &file).await;
    let mut a = node.connect(&alice).await;
    let summary = natter::backup::verify_file(&file).expect("the backup verifies");
    assert!(summary.manifest.with_media);
    assert_eq!(summary.trailer.media_files, 1, "{:?}", summary.trailer);
    assert!(
        summary.trailer.records["users"] >= 2,
        "{:?}",
        summary.trailer
    );

    let original_history = history(&mut a, &chat).await;
    assert_eq!(original_history.len(), 4 + SENDS);
    let mut b2 = node.connect(&bob2).await;
    let original_events = pending_events(&mut b2).await;
    let setup_events = original_events.len() - SENDS;
    b2.close().await;

    let restored_dir = tempfile::tempdir().unwrap();
    let data = restored_dir.path().join("data");
    let restored = natterd_restore(&file, &data);
    assert!(restored.status.success(), "{restored:?}");
    let said = String::from_utf8_lossy(&restored.stdout);
    assert!(said.contains("natter.toml.restored"), "{said}");
    assert_eq!(
        std::fs::read_to_string(data.join("natter.toml.restored")).unwrap(),
        BASE_CONFIG
    );
    let copy = TestNode::on_restored(restored_dir, topology, BASE_CONFIG).await;

    // Passwords and device tokens work.
    copy.login("alice").await;
    let mut ra = copy.connect(&alice).await;
    let restored_history = history(&mut ra, &chat).await;
    assert!(
        restored_history.len() as u64 >= acked_before,
        "{} < {acked_before}",
        restored_history.len()
    );
    assert_eq!(
        restored_history[..],
        original_history[..restored_history.len()]
    );
    assert_eq!(download(&copy, &mut ra, &attachment).await, PNG);
    let mut rb1 = copy.connect(&bob1).await;
    assert_eq!(read_position(&mut rb1, &chat).await, 2);
    let mut rb2 = copy.connect(&bob2).await;
    let pending = pending_events(&mut rb2).await;
    let expected = setup_events + (restored_history.len() - 4);
    eprintln!(
        "backup: {acked_before} acked before it began, {} messages restored of {}",
        restored_history.len(),
        original_history.len()
    );
    assert_eq!(pending.len(), expected, "bob2's pending events");
    assert_eq!(pending[..], original_events[..expected]);

    if topology == Topology::Embedded {
        a_damaged_backup_is_refused_and_touches_nothing(&file, dir.path());
    }
}

/// Flips one bit of the first store chunk's data (a byte the archive's
/// checksums cover; tar's padding is not).
fn flip_a_record_byte(bytes: &mut [u8]) {
    let name = b"store/000001";
    let header = bytes
        .windows(name.len())
        .position(|w| w == name)
        .expect("a store chunk");
    bytes[header + 512 + 20] ^= 0x01;
}

/// A truncated or bit-flipped backup fails verification and restore (exit
/// 1, the folder left as it was); a non-empty folder is refused.
fn a_damaged_backup_is_refused_and_touches_nothing(file: &Path, dir: &Path) {
    let whole = std::fs::read(file).unwrap();
    let truncated = dir.join("truncated.backup");
    std::fs::write(&truncated, &whole[..whole.len() / 2]).unwrap();
    let flipped = dir.join("flipped.backup");
    let mut bytes = whole.clone();
    flip_a_record_byte(&mut bytes);
    std::fs::write(&flipped, &bytes).unwrap();
    for damaged in [&truncated, &flipped] {
        assert!(natter::backup::verify_file(damaged).is_err(), "{damaged:?}");
        let missing = dir.join("never-made");
        let out = natterd_restore(damaged, &missing);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(!missing.exists());
        let empty = dir.join("stays-empty");
        std::fs::create_dir_all(&empty).unwrap();
        let out = natterd_restore(damaged, &empty);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
    }
    let busy = dir.join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("keep.txt"), "mine").unwrap();
    let out = natterd_restore(file, &busy);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    assert_eq!(std::fs::read_dir(&busy).unwrap().count(), 1);
    // Nothing was left beside the folders either.
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("restoring"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// With S3 media a backup with media is refused (the bucket has its own
/// tools) with a clear error; one without media is taken as usual. A
/// gateway has no admin API to take one from.
#[tokio::test]
async fn with_s3_media_a_backup_leaves_the_bucket_out() {
    let server = crate::support::s3::S3Server::start().await;
    let node = TestNode::with_config(Topology::Split, &crate::media::s3_config(&server, "")).await;
    let http = node.http();
    let url = format!("{}/admin/v1/backup", node.main_admin_url());
    let refused = http
        .get(format!("{url}?media=true"))
        .bearer_auth(&node.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "bad_request");
    assert!(body["message"].as_str().unwrap().contains("S3"), "{body}");
    let taken = http
        .get(&url)
        .bearer_auth(&node.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(taken.status(), 200);
    let bytes = taken.bytes().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("b");
    std::fs::write(&file, &bytes).unwrap();
    let summary = natter::backup::verify_file(&file).unwrap();
    assert!(!summary.manifest.with_media);
    let wrong = http.get(&url).bearer_auth("nope").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let gateway = http
        .get(format!("{}/admin/v1/backup", node.admin_url_of(0)))
        .bearer_auth(&node.admin_token)
        .send()
        .await
        .unwrap();
    assert_ne!(gateway.status(), 200);
}

/// With NATS, federation events already relayed to the JetStream outbox are
/// no longer in the store: the backup reads them from the stream, and a node
/// restored from it (on a fresh nats-server) delivers them to the peer that
/// was down, once each, in order.
#[tokio::test]
async fn a_backup_keeps_the_outbox_relayed_to_jetstream() {
    use crate::federation::{Pair, chat_of_two, receive, two_nodes};
    let (mut a, mut b) = two_nodes(Topology::Nats).await;
    let Pair {
        mut alice,
        bob,
        chat,
        bob_creds,
        ..
    } = chat_of_two(&a, &b).await;
    bob.close().await;
    b.kill9();
    let sent: Vec<String> = (0..20).map(|i| format!("while away {i}")).collect();
    for text in &sent {
        alice
            .ok(json!({"type":"sendMessage","chatId": chat,"message": text}))
            .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("alpha.backup");
    // Once every event is on JetStream (the sender relays them from the
    // store while beta is away), the backup has them from the stream.
    let summary = crate::support::eventually("the outbox relayed to JetStream", || {
        let (admin, token, file) = (
            a.main_admin_url().to_owned(),
            a.admin_token.clone(),
            file.clone(),
        );
        async move {
            let _ = std::fs::remove_file(&file);
            take_backup(admin, token, file.clone()).await;
            let summary = natter::backup::verify_file(&file).expect("the backup verifies");
            (summary.trailer.outbox_from_stream == 20).then_some(summary)
        }
    })
    .await;
    assert_eq!(summary.trailer.outbox_from_stream, 20);
    alice.close().await;
    a.kill9();

    let restored_dir = tempfile::tempdir().unwrap();
    let restored = natterd_restore(&file, &restored_dir.path().join("data"));
    assert!(restored.status.success(), "{restored:?}");
    let config =
        format!("name = \"alpha.test\"\n{BASE_CONFIG}\n[federation]\nmax_backoff = \"1s\"\n");
    let _copy = TestNode::on_restored(restored_dir, Topology::Nats, &config).await;
    b.restart_same_port().await;
    let mut bob = b.connect(&bob_creds).await;
    assert_eq!(receive(&mut bob, 20).await, sent, "all, in order");
    assert!(bob.drain().await.is_empty(), "once");
}

in_every_topology!(a_restored_home_keeps_federating_and_refuses_to_reuse_seqs_silently);

/// The texts of the dead letters `node` keeps for `peer`.
async fn dead_letter_texts(node: &TestNode, peer: &str) -> Vec<String> {
    let (status, body) = node
        .admin(reqwest::Method::GET, &format!("/peers/{peer}/outbox"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body["deadLetters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["event"]["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// alpha (the home of a chat with bob@beta) is restored from a backup after
/// it sent beta more events. beta has applied their event seqs: the restore
/// moves alpha's outbox counter past them, so a new chat, a membership
/// change and a message reach beta. In the old chat alpha reuses message
/// seqs beta holds: beta refuses those (dead letters on alpha, counted on
/// beta) instead of dropping them, and the chat goes on past them.
async fn a_restored_home_keeps_federating_and_refuses_to_reuse_seqs_silently(t: Topology) {
    use crate::federation::{Pair, chat_of_two, next, receive, two_nodes};
    let (mut a, b) = two_nodes(t).await;
    let carol_creds = b.user("carol").await;
    let Pair {
        mut alice,
        mut bob,
        chat,
        alice_creds,
        ..
    } = chat_of_two(&a, &b).await;
    let send = |text: String| json!({"type":"sendMessage","chatId": chat,"message": text});
    for text in ["before 1", "before 2"] {
        alice.ok(send(text.into())).await;
    }
    assert_eq!(receive(&mut bob, 2).await, ["before 1", "before 2"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("alpha.backup");
    take_backup(
        a.main_admin_url().to_owned(),
        a.admin_token.clone(),
        file.clone(),
    )
    .await;
    let lost = ["after 1", "after 2", "after 3"];
    for text in lost {
        alice.ok(send(text.into())).await;
    }
    assert_eq!(receive(&mut bob, 3).await, lost, "beta applied them");
    alice.close().await;
    a.kill9();

    let restored_dir = tempfile::tempdir().unwrap();
    let restored = natterd_restore(&file, &restored_dir.path().join("data"));
    assert!(restored.status.success(), "{restored:?}");
    let said = String::from_utf8_lossy(&restored.stdout);
    assert!(
        said.contains("the outbox seqs for peer beta.test moved"),
        "{said}"
    );
    let config =
        format!("name = \"alpha.test\"\n{BASE_CONFIG}\n[federation]\nmax_backoff = \"1s\"\n");
    let copy = TestNode::on_restored(restored_dir, t, &config).await;
    let mut alice = copy.connect(&alice_creds).await;

    // New events of the restored home reach beta.
    let created = alice
        .ok(json!({"type":"createChat","participants":["bob@beta.test"],"name":"After"}))
        .await;
    let new_chat = created["chatId"].as_str().unwrap().to_owned();
    let update = next(&mut bob, "chatUpdate").await;
    assert_eq!(update["chatId"], new_chat.as_str(), "{update}");
    assert_eq!(update["reason"], "created");
    alice
        .ok(json!({"type":"modifyChatParticipants","chatId": new_chat,"userId":"carol@beta.test","operation":"ADD"}))
        .await;
    let update = next(&mut bob, "chatUpdate").await;
    assert_eq!(update["reason"], "added", "{update}");
    let mut carol = b.connect(&carol_creds).await;
    assert_eq!(next(&mut carol, "chatUpdate").await["reason"], "added");
    alice
        .ok(json!({"type":"sendMessage","chatId": new_chat,"message":"in the new chat"}))
        .await;
    assert_eq!(receive(&mut bob, 1).await, ["in the new chat"]);
    assert_eq!(receive(&mut carol, 1).await, ["in the new chat"]);

    // The old chat: seqs 3..=5 are beta's "after" messages. The home gives
    // them out again: refused (dead letters), not skipped; seq 6 goes on.
    for i in 0..4 {
        let sent = alice.ok(send(format!("again {i}"))).await;
        assert_eq!(sent["seq"], 3 + i, "{sent}");
    }
    assert_eq!(receive(&mut bob, 1).await, ["again 3"]);
    let dead = crate::support::eventually("three dead letters", || async {
        let texts = dead_letter_texts(&copy, "beta.test").await;
        (texts.len() == 3).then_some(texts)
    })
    .await;
    assert_eq!(dead, ["again 0", "again 1", "again 2"]);
    let conflicts = b
        .metric(b.main_admin_url(), "natter_federation_seq_conflicts_total")
        .await;
    assert_eq!(conflicts, Some(3.0));
    let kept: Vec<String> = history(&mut bob, &chat)
        .await
        .iter()
        .map(|m| m["message"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kept,
        [
            "before 1", "before 2", "after 1", "after 2", "after 3", "again 3"
        ]
    );
    assert!(bob.drain().await.is_empty(), "nothing else");
}

in_every_topology!(a_restored_outbox_is_counted_and_sent_across_the_jump);

/// Events queued for a peer that was down when the backup was taken are
/// still sent after the restore, with the events given out after the
/// counter's jump; the outbox depth counts the events, not the seqs between.
async fn a_restored_outbox_is_counted_and_sent_across_the_jump(t: Topology) {
    use crate::federation::{Pair, chat_of_two, receive, two_nodes};
    use crate::federation_outbox::outbox_depth_is;
    let (mut a, mut b) = two_nodes(t).await;
    let Pair {
        mut alice,
        bob,
        chat,
        alice_creds,
        bob_creds,
    } = chat_of_two(&a, &b).await;
    bob.close().await;
    b.kill9();
    let send = |text: &str| json!({"type":"sendMessage","chatId": chat,"message": text});
    for text in ["queued 1", "queued 2"] {
        alice.ok(send(text)).await;
    }
    outbox_depth_is(&a, "beta.test", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("alpha.backup");
    take_backup(
        a.main_admin_url().to_owned(),
        a.admin_token.clone(),
        file.clone(),
    )
    .await;
    alice.close().await;
    a.kill9();

    let restored_dir = tempfile::tempdir().unwrap();
    let data = restored_dir.path().join("data");
    let restored = natterd_restore_json(&file, &data);
    let jump = &restored["outboxSeqs"][0];
    assert_eq!(jump["peer"], "beta.test", "{restored}");
    let (from, to) = (jump["from"].as_u64().unwrap(), jump["to"].as_u64().unwrap());
    assert!(from >= 2 && to > from + (1 << 32), "{restored}");
    let config =
        format!("name = \"alpha.test\"\n{BASE_CONFIG}\n[federation]\nmax_backoff = \"1s\"\n");
    let copy = TestNode::on_restored(restored_dir, t, &config).await;
    let mut alice = copy.connect(&alice_creds).await;
    alice.ok(send("new 1")).await;
    outbox_depth_is(&copy, "beta.test", 3).await;

    b.restart_same_port().await;
    let mut bob = b.connect(&bob_creds).await;
    assert_eq!(
        receive(&mut bob, 3).await,
        ["queued 1", "queued 2", "new 1"],
        "all, in order"
    );
    assert!(bob.drain().await.is_empty(), "once");
    outbox_depth_is(&copy, "beta.test", 0).await;
}

/// `natterd restore --json`: its report.
fn natterd_restore_json(file: &Path, data: &Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_natterd"))
        .args(["restore", &file.display().to_string(), "--data"])
        .arg(data)
        .arg("--json")
        .output()
        .expect("run natterd restore");
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("a JSON report")
}
