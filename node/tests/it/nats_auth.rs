//! NATS as a trust boundary (docs/operations.md): natter's processes run on a
//! nats-server with the shipped accounts and permissions
//! (examples/cluster/nats-accounts.conf), each logging in as its own user, and
//! a NATS client of the test's own (the intruder) gets exactly what those
//! permissions promise: nothing without credentials; with a gateway's, neither
//! another gateway's deliveries, orders or answers, nor requests, nor a way
//! past the limits of a client frame.

use std::path::{Path, PathBuf};

use futures_util::{FutureExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::support::nats::{ACCOUNTS_NODE, NatsServer, password};
use crate::support::node::{BASE_CONFIG, Topology};
use crate::support::{DEADLINE, TestNode, WsClient};

/// `chat.example.org` as one subject token, and its delivery stream.
const NODE: &str = "chat_example_org";
const STREAM: &str = "NATTER_CHAT_EXAMPLE_ORG_DLV";

async fn node_on_accounts(topology: Topology) -> TestNode {
    let config = format!("name = \"{ACCOUNTS_NODE}\"\n{BASE_CONFIG}");
    TestNode::with_nats(topology, &config, Some(NatsServer::start_with_accounts())).await
}

/// A NATS client that is not natter, and the errors the server sends it.
struct Intruder {
    client: async_nats::Client,
    errors: mpsc::UnboundedReceiver<String>,
}

async fn intruder(
    url: &str,
    login: Option<(&str, String)>,
    inbox_prefix: &str,
) -> Result<Intruder, async_nats::ConnectError> {
    let (tx, errors) = mpsc::unbounded_channel();
    let mut options = async_nats::ConnectOptions::new()
        .custom_inbox_prefix(inbox_prefix)
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        });
    if let Some((user, password)) = login {
        options = options.user_and_password(user.to_owned(), password);
    }
    let client = options.connect(url).await?;
    Ok(Intruder { client, errors })
}

impl Intruder {
    /// Waits for the server's permissions violation naming `subject`.
    async fn refused(&mut self, what: &str, subject: &str) {
        let quoted = format!("\"{subject}\"");
        let wait = async {
            while let Some(error) = self.errors.recv().await {
                let lower = error.to_lowercase();
                if lower.contains("permissions violation")
                    && lower.contains(what)
                    && error.contains(&quoted)
                {
                    return;
                }
            }
            panic!("the intruder's connection ended");
        };
        tokio::time::timeout(DEADLINE, wait)
            .await
            .unwrap_or_else(|_| panic!("no permissions violation for {what} to {subject}"));
    }
}

async fn natter_works_on_the_shipped_accounts(t: Topology) {
    let node = node_on_accounts(t).await;
    let alice = node.user("alice").await;
    let bob = node.user("bob").await;
    // Split: alice on gw1, bob on gw2 (round robin).
    let mut a = node.connect(&alice).await;
    let mut b = node.connect(&bob).await;
    let created = a
        .ok(json!({"type":"createChat","participants":["bob"]}))
        .await;
    let chat = created["chatId"].as_str().unwrap().to_owned();
    for client in [&mut a, &mut b] {
        let update = client.event().await;
        assert_eq!(update["type"], "chatUpdate");
        client.ack_events(&[update]).await;
    }
    a.ok(json!({"type":"sendMessage","chatId": chat, "message":"over NATS, logged in"}))
        .await;
    let event = b.event().await;
    assert_eq!(event["type"], "newMessage");
    assert_eq!(event["message"], "over NATS, logged in");
    assert_eq!(event["from"], format!("alice@{ACCOUNTS_NODE}"));
    // The log says how natterd logged in, never with what.
    let logs = node.logs();
    assert!(logs.contains("auth=user"), "{logs}");
    for user in ["core", "gw1", "gw2"] {
        assert!(!logs.contains(&password(user)), "{user}'s password logged");
    }
}

/// A CA and a certificate for 127.0.0.1 signed by it, made with openssl:
/// (ca.pem, server.pem, server-key.pem) in `dir`.
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is needed for the TLS test: apt-get install -y openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=natter test CA",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "server-key.pem",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    ]
    .concat());
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca-key.pem",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server-key.pem"),
    )
}

#[tokio::test]
async fn nats_natter_logs_in_with_an_nkey_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().unwrap();
    let seed_file = dir.path().join("natter.nk");
    std::fs::write(&seed_file, &seed).unwrap();
    let nats = NatsServer::start_with_conf(&format!(
        "tls {{\n  cert_file: {cert:?}\n  key_file: {key:?}\n}}\n\
         authorization {{\n  users: [ {{ nkey: {} }} ]\n}}\n",
        user.public_key()
    ));
    let url = nats.url();
    // Into BASE_CONFIG's [nats] table (the one before [logins]).
    let base = BASE_CONFIG.replace("[logins]", &format!("nkey_file = {seed_file:?}\n[logins]"));
    let config = format!("{base}[nats.tls]\nca_file = {ca:?}\nrequired = true\n");
    let node = TestNode::with_nats(Topology::Nats, &config, Some(nats)).await;
    let alice = node.user("alice").await;
    let bob = node.user("bob").await;
    let mut a = node.connect(&alice).await;
    let mut b = node.connect(&bob).await;
    let created = a
        .ok(json!({"type":"createChat","participants":["bob"]}))
        .await;
    let chat = created["chatId"].as_str().unwrap().to_owned();
    for client in [&mut a, &mut b] {
        let update = client.event().await;
        client.ack_events(&[update]).await;
    }
    a.ok(json!({"type":"sendMessage","chatId": chat, "message":"nkey and TLS"}))
        .await;
    assert_eq!(b.event().await["message"], "nkey and TLS");
    let logs = node.logs();
    assert!(
        logs.contains("auth=nkey") && logs.contains("tls=true"),
        "{logs}"
    );
    assert!(!logs.contains(&seed), "the nkey seed was logged");

    // A client that trusts the CA but has no nkey is refused.
    let refused = async_nats::ConnectOptions::new()
        .add_root_certificates(ca.clone())
        .require_tls(true)
        .connect(&url)
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(
        refused.kind(),
        async_nats::ConnectErrorKind::AuthorizationViolation,
        "{refused}"
    );
}

mod natter_works_on_the_shipped_accounts {
    use crate::support::node::Topology;

    #[tokio::test]
    async fn nats() {
        super::natter_works_on_the_shipped_accounts(Topology::Nats).await
    }

    #[tokio::test]
    async fn split() {
        super::natter_works_on_the_shipped_accounts(Topology::Split).await
    }
}

#[tokio::test]
async fn nats_clients_without_natters_credentials_cannot_connect() {
    let node = node_on_accounts(Topology::Split).await;
    let url = node.nats.as_ref().unwrap().url();
    let prefix = format!("_INBOX.natter.{NODE}.gw1");
    let wrong = [
        None,
        Some(("gw1", "not-the-password".to_owned())),
        Some(("core", password("gw1"))),
        Some(("admin", password("core"))),
    ];
    for login in wrong {
        let shown = format!("{:?}", login.as_ref().map(|(u, _)| u));
        let Err(e) = intruder(&url, login, &prefix).await else {
            panic!("{shown} connected");
        };
        assert_eq!(
            e.kind(),
            async_nats::ConnectErrorKind::AuthorizationViolation,
            "{shown}: {e}"
        );
    }
    // The right password does connect (so the refusals above are about the
    // credentials, not the server).
    intruder(&url, Some(("gw1", password("gw1"))), &prefix)
        .await
        .expect("gw1 connects");
}

#[tokio::test]
async fn nats_gateway_credentials_reach_only_that_gateways_subjects() {
    let node = node_on_accounts(Topology::Split).await;
    let url = node.nats.as_ref().unwrap().url();
    let mut gw1 = intruder(
        &url,
        Some(("gw1", password("gw1"))),
        &format!("_INBOX.natter.{NODE}.gw1"),
    )
    .await
    .expect("connect with gw1's credentials");
    // The control: the core's credentials do read requests, so the silence
    // of gw1's subscription to them below is the permissions' doing. (No
    // plain subscription may read deliveries: gateways read them through
    // their JetStream consumer.)
    let core = intruder(
        &url,
        Some(("core", password("core"))),
        &format!("_INBOX.natter_core.{NODE}"),
    )
    .await
    .expect("connect with the core's credentials");
    let mut seen_by_core = core
        .client
        .subscribe(format!("natter.{NODE}.rpc"))
        .await
        .unwrap();
    core.client.flush().await.unwrap();

    let forbidden_reads = [
        format!("natter.{NODE}.dlv.gw2.batch"),
        format!("natter.{NODE}.dlv.>"),
        format!("natter.{NODE}.rpc"),
        format!("natter.{NODE}.presence"),
        format!("natter.{NODE}.gw.gw2"),
        format!("_INBOX.natter.{NODE}.gw2.>"),
        format!("_INBOX.natter_core.{NODE}.>"),
        "_INBOX.>".to_owned(),
        ">".to_owned(),
    ];
    let mut subs = Vec::new();
    for subject in &forbidden_reads {
        subs.push(gw1.client.subscribe(subject.clone()).await.unwrap());
        gw1.refused("subscription", subject).await;
    }
    let forbidden_writes = [
        // posing as the core: a delivery, an order, a restart
        format!("natter.{NODE}.dlv.gw2.batch"),
        format!("natter.{NODE}.gw.gw2"),
        format!("natter.{NODE}.core.started"),
        // another gateway's consumer; its own consumer over everyone's deliveries
        format!("$JS.API.CONSUMER.CREATE.{STREAM}.gw_gw2.natter.{NODE}.dlv.gw2.>"),
        format!("$JS.API.CONSUMER.CREATE.{STREAM}.gw_gw1.natter.{NODE}.dlv.>"),
        format!("$JS.API.CONSUMER.DURABLE.CREATE.{STREAM}.gw_gw1"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{STREAM}.gw_gw2"),
        // reading or removing the stream's messages
        format!("$JS.API.STREAM.MSG.GET.{STREAM}"),
        format!("$JS.API.STREAM.DELETE.{STREAM}"),
        format!("$JS.API.STREAM.PURGE.{STREAM}"),
    ];
    for subject in &forbidden_writes {
        gw1.client
            .publish(subject.clone(), "{}".into())
            .await
            .unwrap();
        gw1.refused("publish", subject).await;
    }

    // A message from a user on gw1 to a user on gw2.
    let alice = node.user("alice").await;
    let bob = node.user("bob").await;
    let mut a = WsClient::connect(&node.ws_url_of(0), &alice.token).await;
    let mut b = WsClient::connect(&node.ws_url_of(1), &bob.token).await;
    let created = a
        .ok(json!({"type":"createChat","participants":["bob"]}))
        .await;
    let chat = created["chatId"].as_str().unwrap().to_owned();
    for client in [&mut a, &mut b] {
        let update = client.event().await;
        client.ack_events(&[update]).await;
    }
    a.ok(json!({"type":"sendMessage","chatId": chat, "message":"for bob only"}))
        .await;
    let event = b.event().await;
    assert_eq!(event["message"], "for bob only");
    let wait = async {
        while let Some(request) = seen_by_core.next().await {
            if String::from_utf8_lossy(&request.payload).contains("for bob only") {
                return;
            }
        }
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .expect("the core's credentials read alice's request");

    // Whatever the server sent gw1's connection before this round trip has
    // been handed to its subscriptions by now: none got anything.
    gw1.client.flush().await.unwrap();
    for (subject, sub) in forbidden_reads.iter().zip(subs.iter_mut()) {
        let got = sub.next().now_or_never().flatten();
        assert!(got.is_none(), "gw1 read {subject}: {got:?}");
    }
}

/// Sends `request` to the core as a gateway would, and returns its reply.
async fn ask_core(gw: &Intruder, request: Value) -> Value {
    let reply = tokio::time::timeout(
        DEADLINE,
        gw.client.request(
            format!("natter.{NODE}.rpc"),
            serde_json::to_vec(&request).unwrap().into(),
        ),
    )
    .await
    .expect("the core answers in time")
    .expect("request");
    serde_json::from_slice(&reply.payload).unwrap()
}

#[tokio::test]
async fn nats_the_core_rechecks_commands_sent_by_a_gateway() {
    let node = node_on_accounts(Topology::Split).await;
    let url = node.nats.as_ref().unwrap().url();
    let gw1 = intruder(
        &url,
        Some(("gw1", password("gw1"))),
        &format!("_INBOX.natter.{NODE}.gw1"),
    )
    .await
    .expect("connect with gw1's credentials");
    let alice = node.user("alice").await;
    node.user("bob").await;
    let mut a = node.connect(&alice).await;
    let created = a
        .ok(json!({"type":"createChat","participants":["bob"]}))
        .await;
    let chat = created["chatId"].as_str().unwrap().to_owned();

    let answer = ask_core(&gw1, json!({"op":"authenticate","token": alice.token})).await;
    let ctx = answer["Ok"]["device"].clone();
    assert_eq!(ctx["device"], alice.device_id.as_str(), "{answer}");
    let dispatch = |command: Value| json!({"op":"dispatch","ctx": ctx, "command": command});
    let over_limits = [
        (
            json!({"type":"sendMessage","chatId": chat,"message":"x".repeat(16 * 1024 + 1),"attachments":[],"clientMsgId":null}),
            "message_too_large",
        ),
        (
            json!({"type":"sendMessage","chatId": chat,"message":"","attachments":[],"clientMsgId":null}),
            "bad_request",
        ),
        (
            json!({"type":"createChat","participants": vec![format!("bob@{ACCOUNTS_NODE}"); 401],"name":null}),
            "too_many_participants",
        ),
        (
            json!({"type":"renameChat","chatId": chat,"name":"evil\u{202E}gpj.exe"}),
            "bad_request",
        ),
        (
            json!({"type":"ack","deliveryIds": vec![1; 1025]}),
            "bad_request",
        ),
        (
            json!({"type":"getHistory","chatId": chat,"beforeSeq":null,"afterSeq":null,"limit":201}),
            "bad_request",
        ),
    ];
    for (command, code) in over_limits {
        let kind = command["type"].clone();
        let answer = ask_core(&gw1, dispatch(command)).await;
        assert_eq!(answer["Err"]["code"], code, "{kind}: {answer}");
    }
    // Within the limits the same path works, and the refusals left no trace.
    let answer = ask_core(
        &gw1,
        dispatch(
            json!({"type":"sendMessage","chatId": chat,"message":"within limits","attachments":[],"clientMsgId":null}),
        ),
    )
    .await;
    assert!(answer["Ok"]["result"]["seq"].is_u64(), "{answer}");
    let history = a.ok(json!({"type":"getHistory","chatId": chat})).await;
    let texts: Vec<&Value> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["message"])
        .collect();
    assert_eq!(texts, [&json!("within limits")]);
}
