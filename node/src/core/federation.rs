//! The core's side of federation: peers (added by an admin), each peer's outbox
//! sender, events and actions from peers, and forwarding this node's users'
//! commands on chats whose home is a peer.
//!
//! [`outbox`] is each peer's outbox (on fjall, or with NATS relayed to a
//! JetStream stream with one durable consumer per peer) and the one task per
//! peer that sends it. [`lanes`] forwards this node's users' commands in chats
//! of a peer to the chat's home, in order per sending device. [`rotation`] is
//! this node's own keys: `natter key rotate`, and telling peers about a new key
//! (and taking in theirs). [`media`] is attachments across nodes: download URLs
//! asked of (and relayed for) peers, and the uploads a user of this node sends
//! in a chat whose home is a peer.

mod lanes;
mod media;
mod outbox;
mod rotation;

pub(super) use media::attach_held;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use crate::federation::error::VerifyError;
use crate::federation::rfc9421::Message;
use crate::federation::verify::{Verifier, VerifierConfig};
use std::time::Duration;

use base64::Engine;
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::writer::{Op, Outcome, WriteCommand};
use super::{Core, CoreError};
use crate::clock::rfc3339;
use crate::delivery::outbox::OutboxStream;
use crate::federation::client::{PeerClient, PeerError};
use crate::federation::events::{Action, ActionRequest, Applied, AttachmentUrlRequest, EventBatch};
use crate::federation::keys::{KeyLookup, PeerKey, PeerKeys, key_id};
use crate::identity::NodeKeys;
use crate::ids::{ChatId, NodeName};
use crate::protocol::{self, Command, CommandResult, ErrorCode};
use crate::store::{PeerKeyRecord, PeerRecord};

/// Federation settings of a node.
#[derive(Clone, Debug)]
pub struct FederationConfig {
    /// How long a request to a peer may take.
    pub request_timeout: Duration,
    /// Outbox entries older than this become dead letters.
    pub dead_letter_after: Duration,
    /// The longest wait between retries of an unreachable peer.
    pub max_backoff: Duration,
    /// How long a key keeps verifying after `natter key rotate` replaced it.
    pub key_overlap: Duration,
    /// Forwarded actions (this node's users' commands in chats of a peer) in
    /// flight to one home at once; each sending device's stay in order.
    pub max_actions_in_flight: usize,
    /// Event batches in flight to one peer at once (its outbox); the peer
    /// applies them in order.
    pub max_batches_in_flight: usize,
    /// With NATS: how long events stay in the JetStream outbox stream unsent
    /// (`None`: twice `dead_letter_after`).
    pub outbox_stream_max_age: Option<Duration>,
    /// With NATS: cap on the JetStream outbox stream (every peer's backlog).
    pub outbox_stream_max_bytes: u64,
}

impl FederationConfig {
    /// The limits of the JetStream outbox stream.
    pub fn outbox_limits(&self) -> crate::delivery::outbox::OutboxLimits {
        crate::delivery::outbox::OutboxLimits {
            max_age: self
                .outbox_stream_max_age
                .unwrap_or(self.dead_letter_after.saturating_mul(2)),
            max_bytes: self.outbox_stream_max_bytes,
        }
    }
}

impl Default for FederationConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(5),
            dead_letter_after: Duration::from_secs(7 * 24 * 3600),
            max_backoff: Duration::from_secs(60),
            key_overlap: Duration::from_secs(7 * 24 * 3600),
            max_actions_in_flight: 64,
            max_batches_in_flight: 4,
            outbox_stream_max_age: None,
            outbox_stream_max_bytes: 1024 << 20,
        }
    }
}

/// How a peer's outbox sender is doing.
#[derive(Clone, Debug, Default)]
struct Health {
    /// Every fjall outbox entry up to this seq is delivered (or a dead
    /// letter; its removal from fjall may still be being written), or with
    /// NATS handed to JetStream: reads start after it instead of stepping
    /// over what was removed.
    delivered: u64,
    /// With NATS: every event up to this seq is with the peer (or a dead
    /// letter).
    confirmed: u64,
    last_contact: Option<i64>,
    failures: u32,
    failed_at: Option<i64>,
    retry_at: Option<i64>,
    last_error: Option<String>,
}

/// A peer as the admin sees it (`natter peer list --json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerInfo {
    pub node: String,
    pub url: String,
    pub fingerprint: String,
    pub public_keys: Vec<String>,
    pub last_contact: Option<String>,
    pub outbox_depth: usize,
    pub oldest_queued_age_ms: Option<i64>,
    pub dead_letters: usize,
    /// `ok`, or `backing-off` with the number of failures in a row.
    pub state: String,
    pub failures: u32,
    pub retry_at: Option<String>,
    pub last_error: Option<String>,
}

type Keys = Arc<RwLock<HashMap<NodeName, Vec<PeerKey>>>>;

/// The federation state the core keeps (shared by its clones).
pub(super) struct Federation {
    client: PeerClient,
    config: FederationConfig,
    node: NodeName,
    /// The URL peers reach this node at.
    url: String,
    /// This node's keys: the one it signs with, and those it rotated away
    /// from that still verify.
    own: RwLock<NodeKeys>,
    /// Serializes rotations.
    rotating: tokio::sync::Mutex<()>,
    /// Per peer, the key id it was last told about successfully.
    announced: Mutex<HashMap<NodeName, String>>,
    /// Serializes the read-modify-write of peer records (add, key announced).
    peer_updates: tokio::sync::Mutex<()>,
    /// Peer → keys, for verifying requests (refreshed on every peer change).
    keys: Keys,
    verifier: Verifier<PeerKeyring>,
    health: Mutex<HashMap<NodeName, Health>>,
    /// One per running outbox sender.
    senders: Mutex<HashMap<NodeName, Sender>>,
    /// With NATS, the JetStream outbox stream (set once at start).
    outbox: std::sync::OnceLock<OutboxStream>,
    /// Per home node, the task forwarding this node's users' commands there.
    lanes: Mutex<HashMap<NodeName, mpsc::Sender<lanes::Forward>>>,
    runtime: Mutex<Option<(TaskTracker, CancellationToken)>>,
    /// Per peer, the last event seq handed to the writer (applied or about
    /// to be): batches in flight together wait here for the one before.
    submitted: Mutex<HashMap<NodeName, u64>>,
    submitted_changed: tokio::sync::Notify,
}

/// The refusal code of an event batch whose `after` is not applied.
pub const OUT_OF_ORDER: &str = "out_of_order";

/// How long an event batch waits for the batch before it (its `after`) to
/// reach the writer before it is tried anyway.
const ORDER_WAIT: Duration = Duration::from_secs(1);

/// Why a peer's event batch was not applied (`Core::apply_events`).
#[derive(Debug)]
pub enum EventsRefused {
    /// This node failed: nothing applied.
    Failed(CoreError),
    /// An event was refused; the ones before it, up to the seq, are applied.
    Event(CoreError, u64),
    /// The batch before it (its `after`) is not applied: nothing applied;
    /// events up to the seq are.
    OutOfOrder(u64),
}

/// A peer's outbox sender: how to stop it, and a lock it holds while it runs.
struct Sender {
    stop: CancellationToken,
    running: Arc<tokio::sync::Mutex<()>>,
}

/// Who this node is, as peers see it (`/.well-known/natter/node`,
/// `natter key show`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeIdentity {
    pub node: String,
    /// base64 (standard, padded) of the 32-byte ed25519 public key.
    pub public_key: String,
    /// The key's id in signatures (`keyid`): `ed25519-` and 16 hex digits of
    /// its SHA-256; also its fingerprint.
    pub fingerprint: String,
    /// The node's base URL (what its clients use); federation is under
    /// `/federation/v1/` there.
    pub url: String,
    /// Keys it rotated away from that still verify, each with its `notAfter`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_keys: Vec<DocumentKey>,
}

/// A node's well-known document (`GET /.well-known/natter/node`, public and
/// unsigned): its name, keys and federation URL. `natter peer add --fetch-key`
/// reads it; trust still comes from the admin who confirms the key.
///
/// **Boundary**: other nodes and the CLI parse it; extend it, never break it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeDocument {
    pub node: String,
    pub keys: Vec<DocumentKey>,
    pub url: String,
    /// `<url>/federation/v1/`.
    pub federation_url: String,
}

/// One key of a [`NodeDocument`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentKey {
    /// Its id in signatures and its fingerprint (see [`NodeIdentity`]).
    pub key_id: String,
    /// base64 of the 32-byte ed25519 public key.
    pub public_key: String,
    /// When it becomes and stops being valid (RFC 3339); `null` leaves that
    /// side open.
    pub not_before: Option<String>,
    pub not_after: Option<String>,
}

impl NodeIdentity {
    /// The well-known document of this node: the current key (valid without
    /// bounds), then every previous key still valid, with its `notAfter`.
    pub fn document(&self) -> NodeDocument {
        let current = DocumentKey {
            key_id: self.fingerprint.clone(),
            public_key: self.public_key.clone(),
            not_before: None,
            not_after: None,
        };
        NodeDocument {
            node: self.node.clone(),
            keys: std::iter::once(current)
                .chain(self.previous_keys.iter().cloned())
                .collect(),
            url: self.url.clone(),
            federation_url: format!("{}/federation/v1/", self.url),
        }
    }
}

impl Federation {
    pub(super) fn new(
        node: NodeName,
        own: NodeKeys,
        public_url: String,
        config: FederationConfig,
    ) -> Self {
        let keys = Keys::default();
        let verifier = Verifier::new(
            VerifierConfig::new(node.as_str()),
            PeerKeyring(keys.clone()),
        );
        Self {
            client: PeerClient::new(node.clone(), config.request_timeout),
            config,
            node,
            url: public_url,
            own: RwLock::new(own),
            rotating: tokio::sync::Mutex::default(),
            announced: Mutex::default(),
            peer_updates: tokio::sync::Mutex::default(),
            keys,
            verifier,
            health: Mutex::default(),
            senders: Mutex::default(),
            outbox: std::sync::OnceLock::new(),
            lanes: Mutex::default(),
            runtime: Mutex::default(),
            submitted: Mutex::default(),
            submitted_changed: tokio::sync::Notify::new(),
        }
    }

    /// Waits until events up to `after` from `origin` have been handed to the
    /// writer, or [`ORDER_WAIT`] has passed.
    async fn wait_submitted(&self, origin: &NodeName, after: u64) {
        let deadline = tokio::time::Instant::now() + ORDER_WAIT;
        loop {
            let changed = self.submitted_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let reached = self
                .submitted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(origin)
                .is_some_and(|s| *s >= after);
            if reached || tokio::time::timeout_at(deadline, changed).await.is_err() {
                return;
            }
        }
    }

    /// Events up to `last` from `origin` are with the writer.
    fn submitted(&self, origin: &NodeName, last: u64) {
        {
            let mut submitted = self.submitted.lock().unwrap_or_else(|e| e.into_inner());
            let seq = submitted.entry(origin.clone()).or_default();
            *seq = (*seq).max(last);
        }
        self.submitted_changed.notify_waiters();
    }

    fn has_peers(&self) -> bool {
        !self
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    fn health(&self) -> std::sync::MutexGuard<'_, HashMap<NodeName, Health>> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The key this node signs with now.
    fn signing_key(&self) -> SigningKey {
        self.own
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .current
            .clone()
    }
}

/// A peer's request that passed verification: who sent it, with which key.
#[derive(Clone, Debug)]
pub struct PeerRequest {
    pub origin: NodeName,
    pub key_id: String,
}

/// The verifier's view of the peers' keys.
#[derive(Clone)]
pub struct PeerKeyring(Keys);

impl PeerKeys for PeerKeyring {
    fn lookup(&self, origin: &str, key_id: &str) -> KeyLookup {
        let Some(node) = NodeName::parse(&origin.to_ascii_lowercase()) else {
            return KeyLookup::UnknownPeer;
        };
        let keys = self.0.read().unwrap_or_else(|e| e.into_inner());
        match keys.get(&node) {
            None => KeyLookup::UnknownPeer,
            Some(keys) => match keys.iter().find(|k| k.key_id == key_id) {
                Some(key) => KeyLookup::Found(Box::new(key.clone())),
                None => KeyLookup::UnknownKey,
            },
        }
    }
}

/// Parses a base64 ed25519 public key (standard alphabet, padding optional).
pub fn parse_public_key(text: &str) -> Option<VerifyingKey> {
    let text = text.trim().trim_end_matches('=');
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(text)
        .ok()?;
    VerifyingKey::from_bytes(&bytes.try_into().ok()?).ok()
}

fn peer_keys(record: &PeerRecord) -> Vec<PeerKey> {
    record
        .keys
        .iter()
        .filter_map(|k| {
            let key = parse_public_key(&k.public_key)?;
            let mut peer_key = PeerKey::new(key, k.not_before);
            peer_key.not_after_ms = k.not_after;
            Some(peer_key)
        })
        .collect()
}

/// A peer's answer to a forwarded request, as this node's client sees it: the
/// peer's refusal with its code, or `unavailable` when it could not answer.
fn refusal_or_unavailable(e: PeerError) -> CoreError {
    match e {
        PeerError::Refused { status, body, .. } if status != 401 && status < 500 => {
            let code = serde_json::from_value(body["code"].clone()).unwrap_or(ErrorCode::Forbidden);
            let message = body["message"]
                .as_str()
                .unwrap_or("refused by the chat's home");
            CoreError::reject(code, message)
        }
        e => CoreError::Unavailable(format!("{e}; retry shortly")),
    }
}

/// The fingerprint of the key a peer signs with now: its newest key valid
/// now (keys are kept oldest first), else its newest.
fn current_fingerprint(record: &PeerRecord, now_ms: i64) -> String {
    let valid = |k: &&PeerKeyRecord| k.not_after.is_none_or(|t| now_ms < t);
    let key = record.keys.iter().rev().find(valid).or(record.keys.last());
    key.and_then(|k| parse_public_key(&k.public_key))
        .map(|k| key_id(&k))
        .unwrap_or_default()
}

fn peer_unreachable(e: &PeerError) -> CoreError {
    CoreError::Unavailable(format!("{e}; retry shortly"))
}

impl Core {
    /// Loads the peers and starts one outbox sender per peer; senders of peers
    /// added later start with them. Stops with `cancel`. With `outbox` (NATS
    /// configured) the outboxes go through that JetStream stream.
    pub async fn start_federation(
        &self,
        tasks: &TaskTracker,
        cancel: CancellationToken,
        outbox: Option<OutboxStream>,
    ) -> Result<(), CoreError> {
        if let Some(stream) = outbox {
            let _ = self.fed().outbox.set(stream);
        }
        *self.fed().runtime.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((tasks.clone(), cancel));
        for (node, record) in self.read(|view| Ok(view.peers()?)).await? {
            self.peer_changed(&node, Some(&record));
        }
        Ok(())
    }

    fn fed(&self) -> &Federation {
        &self.inner.federation
    }

    /// Checks a peer's signed request (every check of docs/federation.md, in
    /// its order); the peer it came from when it passes.
    pub fn verify_peer_request(
        &self,
        msg: &Message<'_>,
        body: &[u8],
    ) -> Result<PeerRequest, VerifyError> {
        let verified = self
            .fed()
            .verifier
            .verify_request(msg, body, self.inner.clock.now_ms())?;
        let origin = NodeName::parse(&verified.origin.to_ascii_lowercase()).ok_or(
            VerifyError::UnknownOrigin {
                origin: verified.origin,
            },
        )?;
        Ok(PeerRequest {
            origin,
            key_id: verified.key_id,
        })
    }

    /// Gives the verifier a peer's keys as `record` has them (none: not a peer).
    fn refresh_keys(&self, node: &NodeName, record: Option<&PeerRecord>) {
        let mut keys = self.fed().keys.write().unwrap_or_else(|e| e.into_inner());
        match record {
            Some(record) => keys.insert(node.clone(), peer_keys(record)),
            None => keys.remove(node),
        };
    }

    /// A peer was added, changed or removed: refresh its keys, and start or
    /// stop its outbox sender. Returns the lock a sender of the peer holds
    /// while it runs (a new sender waits for the one it replaces).
    fn peer_changed(
        &self,
        node: &NodeName,
        record: Option<&PeerRecord>,
    ) -> Arc<tokio::sync::Mutex<()>> {
        let fed = self.fed();
        self.refresh_keys(node, record);
        let mut senders = fed.senders.lock().unwrap_or_else(|e| e.into_inner());
        let running = match senders.remove(node) {
            Some(previous) => {
                previous.stop.cancel();
                previous.running
            }
            None => Arc::default(),
        };
        let runtime = fed.runtime.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(_), Some((tasks, cancel))) = (record, runtime.as_ref()) {
            let stop = cancel.child_token();
            let sender = Sender {
                stop: stop.clone(),
                running: running.clone(),
            };
            senders.insert(node.clone(), sender);
            tasks.spawn(
                self.clone()
                    .send_outbox(node.clone(), stop, running.clone()),
            );
        }
        running
    }

    /// Adds a peer, or replaces its URL and keys (with the one given).
    pub async fn add_peer(
        &self,
        node: &str,
        url: &str,
        public_key: &str,
    ) -> Result<PeerInfo, CoreError> {
        let bad = |m: &str| CoreError::reject(ErrorCode::BadRequest, m);
        let node = NodeName::parse(node).ok_or_else(|| bad("invalid node name"))?;
        if &node == self.node() {
            return Err(bad("a node cannot be its own peer"));
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(bad("the peer's URL must start with http:// or https://"));
        }
        let key = parse_public_key(public_key)
            .ok_or_else(|| bad("the public key must be the base64 of 32 bytes"))?;
        let now = self.inner.clock.now_ms();
        let record = PeerRecord {
            url: url.trim_end_matches('/').to_owned(),
            keys: vec![PeerKeyRecord {
                public_key: base64::engine::general_purpose::STANDARD.encode(key.as_bytes()),
                not_before: None,
                not_after: None,
            }],
            added_at: now,
        };
        let _update = self.fed().peer_updates.lock().await;
        self.write(Op::PutPeer {
            node: node.clone(),
            record: record.clone(),
        })
        .await?;
        self.peer_changed(&node, Some(&record));
        self.peer_info(node).await
    }

    pub async fn remove_peer(&self, node: &str) -> Result<(), CoreError> {
        let node = NodeName::parse(node)
            .ok_or_else(|| CoreError::reject(ErrorCode::NotFound, "no such peer"))?;
        self.write(Op::RemovePeer { node: node.clone() }).await?;
        let running = self.peer_changed(&node, None);
        self.drop_outbox(&node, running).await;
        self.fed().health().remove(&node);
        Ok(())
    }

    pub async fn peers(&self) -> Result<Vec<PeerInfo>, CoreError> {
        let nodes = self.read(|view| Ok(view.peers()?)).await?;
        let mut out = Vec::with_capacity(nodes.len());
        for (node, _) in nodes {
            out.push(self.peer_info(node).await?);
        }
        Ok(out)
    }

    async fn peer_info(&self, node: NodeName) -> Result<PeerInfo, CoreError> {
        let now = self.inner.clock.now_ms();
        let name = node.clone();
        let record = self.read(move |view| Ok(view.peer(&name)?)).await?;
        let record =
            record.ok_or_else(|| CoreError::reject(ErrorCode::NotFound, "no such peer"))?;
        let health = self.fed().health().get(&node).cloned().unwrap_or_default();
        let public_keys: Vec<String> = record.keys.iter().map(|k| k.public_key.clone()).collect();
        let fingerprint = current_fingerprint(&record, now);
        let mut info = PeerInfo {
            node: node.to_string(),
            url: record.url,
            fingerprint,
            public_keys,
            last_contact: health.last_contact.map(rfc3339),
            outbox_depth: 0,
            oldest_queued_age_ms: None,
            dead_letters: 0,
            state: if health.failures == 0 {
                "ok"
            } else {
                "backing-off"
            }
            .to_owned(),
            failures: health.failures,
            retry_at: health.retry_at.map(rfc3339),
            last_error: health.last_error,
        };
        self.outbox_depth(&node, &mut info).await?;
        Ok(info)
    }

    /// A peer contacted us: it is up, so its outbox is worth trying now.
    pub fn peer_contacted(&self, node: &NodeName) {
        let mut health = self.fed().health();
        let h = health.entry(node.clone()).or_default();
        h.last_contact = Some(self.inner.clock.now_ms());
        h.retry_at = None;
        drop(health);
        self.inner.wakers.wake(node);
    }

    fn succeeded(&self, node: &NodeName) {
        let now = self.inner.clock.now_ms();
        let mut health = self.fed().health();
        let h = health.entry(node.clone()).or_default();
        *h = Health {
            delivered: h.delivered,
            confirmed: h.confirmed,
            last_contact: Some(now),
            ..Health::default()
        };
    }

    /// Records a failure; returns how long to wait: capped exponential
    /// back-off with jitter (half to all of it).
    fn failed(&self, node: &NodeName, e: &PeerError) -> Duration {
        let mut health = self.fed().health();
        let h = health.entry(node.clone()).or_default();
        h.failures = h.failures.saturating_add(1);
        let cap = self.fed().config.max_backoff;
        let full = Duration::from_millis(250)
            .saturating_mul(1 << h.failures.min(16))
            .min(cap);
        let jitter = u64::from(u16::from_be_bytes(crate::auth::random_bytes::<2>()));
        let wait = full / 2 + full.mul_f64(jitter as f64 / 65535.0) / 2;
        let now = self.inner.clock.now_ms();
        h.failed_at = Some(now);
        h.retry_at = Some(now + crate::clock::millis(wait));
        h.last_error = Some(e.to_string());
        tracing::info!(peer = %node, failures = h.failures, ?wait, error = %e, "peer unreachable; retrying later");
        wait
    }

    // ------------------------------------------------------------ inbound

    /// A peer's events for chats whose home it is. A batch sent while the
    /// one before it (`after`) may still be on its way waits (up to
    /// [`ORDER_WAIT`]) until that one has reached the writer, so that batches
    /// in flight together are applied in order and share a commit; the
    /// writer refuses it if that one is not applied after all.
    pub async fn apply_events(
        &self,
        origin: NodeName,
        batch: EventBatch,
    ) -> Result<Applied, EventsRefused> {
        let last = batch.events.last().map(|e| e.seq);
        if let Some(after) = batch.after {
            self.fed().wait_submitted(&origin, after).await;
        }
        let op = Op::ApplyEvents {
            origin: origin.clone(),
            events: batch.events,
            after: batch.after,
        };
        let reply = self.enqueue(op).await.map_err(EventsRefused::Failed)?;
        if let Some(last) = last {
            self.fed().submitted(&origin, last);
        }
        let outcome = reply
            .await
            .map_err(|_| EventsRefused::Failed(CoreError::Stopped))?
            .map_err(EventsRefused::Failed)?;
        match outcome {
            Outcome::Applied {
                applied,
                refused: None,
            } => Ok(Applied {
                applied,
                ordered: true,
            }),
            Outcome::Applied {
                applied,
                refused: Some(e),
            } => Err(EventsRefused::Event(e, applied)),
            Outcome::OutOfOrder { applied } => Err(EventsRefused::OutOfOrder(applied)),
            other => Err(EventsRefused::Failed(super::unexpected(other))),
        }
    }

    /// Asks an attachment's home for a download URL for one of our users.
    pub(super) async fn remote_attachment_url(
        &self,
        home: NodeName,
        user_id: String,
        id: crate::ids::AttachmentId,
    ) -> Result<CommandResult, CoreError> {
        let user = crate::ids::UserRef::parse(&user_id, self.node())
            .ok_or_else(|| CoreError::Internal(format!("bad user id {user_id}")))?;
        let name = home.clone();
        let peer = self.read(move |view| Ok(view.peer(&name)?)).await?;
        let Some(peer) = peer else {
            return Err(CoreError::Unavailable(format!(
                "this attachment's home {home} is no longer a peer of this node"
            )));
        };
        let request = AttachmentUrlRequest {
            user,
            attachment_id: id,
        };
        let now = self.inner.clock.now_ms();
        let path = "/federation/v1/attachment-url";
        match self
            .fed()
            .client
            .post(
                &self.fed().signing_key(),
                &home,
                &peer.url,
                path,
                &request,
                now,
            )
            .await
        {
            Ok(result) => Ok(result),
            Err(e) => Err(refusal_or_unavailable(e)),
        }
    }

    // ------------------------------------------------------------ forwarding

    /// The home of a chat this node mirrors (`None`: this node, or unknown).
    pub(super) async fn home_of(&self, chat: ChatId) -> Result<Option<NodeName>, CoreError> {
        if !self.fed().has_peers() {
            return Ok(None);
        }
        self.read(move |view| Ok(view.chat(chat)?.and_then(|c| c.home)))
            .await
    }

    /// Queues a command of a local user for the home of its chat; `sender`'s
    /// commands are applied there in the order they are queued. The answer is
    /// `unavailable` if the home cannot be reached.
    pub(super) async fn forward(
        &self,
        home: NodeName,
        sender: String,
        request: ActionRequest,
    ) -> Result<oneshot::Receiver<Result<CommandResult, CoreError>>, CoreError> {
        let lane = {
            let mut lanes = self.fed().lanes.lock().unwrap_or_else(|e| e.into_inner());
            match lanes.get(&home) {
                Some(lane) if !lane.is_closed() => lane.clone(),
                _ => {
                    let (tx, rx) = mpsc::channel(1024);
                    let runtime = self.fed().runtime.lock().unwrap_or_else(|e| e.into_inner());
                    let Some((tasks, cancel)) = runtime.as_ref() else {
                        return Err(CoreError::Stopped);
                    };
                    tasks.spawn(self.clone().run_lane(home.clone(), rx, cancel.clone()));
                    lanes.insert(home.clone(), tx.clone());
                    tx
                }
            }
        };
        let (answer, rx) = oneshot::channel();
        let forward = lanes::Forward {
            sender,
            request,
            answer,
        };
        lane.send(forward).await.map_err(|_| CoreError::Stopped)?;
        Ok(rx)
    }
}

/// The writer's form of a peer user's action, checked like a client's frame.
fn remote_command(
    action: Action,
    origin: &NodeName,
) -> Result<(WriteCommand, Option<String>), CoreError> {
    let bad = |m: String| CoreError::reject(ErrorCode::BadRequest, m);
    Ok(match action {
        Action::SendMessage {
            chat_id,
            message,
            client_msg_id,
            device,
            attachments,
        } => {
            if (message.is_empty() && attachments.is_empty())
                || message.len() > protocol::MAX_MESSAGE_BYTES
            {
                return Err(CoreError::reject(
                    ErrorCode::MessageTooLarge,
                    format!("a message has 1-{} bytes", protocol::MAX_MESSAGE_BYTES),
                ));
            }
            if client_msg_id.as_ref().is_some_and(|c| {
                c.is_empty() || c.chars().count() > protocol::MAX_CLIENT_MSG_ID_CHARS
            }) {
                return Err(bad("clientMsgId is too long".into()));
            }
            let send = WriteCommand::SendMessage {
                chat_id,
                message,
                attachments: media::held_by(attachments, origin)?,
                client_msg_id,
            };
            (send, device.filter(|d| d.len() <= 64))
        }
        Action::ModifyChatParticipants {
            chat_id,
            user_id,
            operation,
        } => (
            WriteCommand::ModifyChatParticipants {
                chat_id,
                user: user_id,
                operation,
            },
            None,
        ),
        Action::RenameChat { chat_id, name } => {
            if name
                .as_ref()
                .is_some_and(|n| n.chars().count() > protocol::MAX_CHAT_NAME_CHARS)
            {
                return Err(bad("name is too long".into()));
            }
            (WriteCommand::RenameChat { chat_id, name }, None)
        }
    })
}

/// The action a command of a local user becomes when its chat's home is a
/// peer; `None` for commands that stay on this node.
pub(super) fn forwarded(
    ctx: &super::DeviceCtx,
    command: &Command,
    node: &NodeName,
) -> Option<ActionRequest> {
    let action = match command {
        Command::SendMessage {
            chat_id,
            message,
            client_msg_id,
            ..
        } => Action::SendMessage {
            chat_id: *chat_id,
            message: message.clone(),
            client_msg_id: client_msg_id.clone(),
            device: Some(ctx.device.to_string()),
            // Filled in once the uploads are checked (`attach_held`).
            attachments: Vec::new(),
        },
        Command::ModifyChatParticipants {
            chat_id,
            user,
            operation,
        } => Action::ModifyChatParticipants {
            chat_id: *chat_id,
            user_id: user.clone(),
            operation: *operation,
        },
        Command::RenameChat { chat_id, name } => Action::RenameChat {
            chat_id: *chat_id,
            name: name.clone(),
        },
        _ => return None,
    };
    let actor = crate::ids::UserRef {
        name: ctx.user.clone(),
        node: node.clone(),
    };
    Some(ActionRequest { actor, action })
}
