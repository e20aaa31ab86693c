//! The NATS side of delivery: the connection, the JetStream stream, the core's
//! publisher, each gateway's durable consumer, and presence reporting.
//!
//! Design (DESIGN §3, measured against nats-server 2.9): one stream captures
//! `natter.<node>.dlv.>` with Limits retention and a `max_age` of hours — never
//! per-message deletes, never Interest/WorkQueue retention. Each gateway has ONE
//! durable pull consumer filtered on its own `natter.<node>.dlv.<gateway>.>`; the
//! core routes each delivery to the gateway that holds the device (presence), so a
//! delivery costs one publish and one (batched) ack whatever the number of
//! connected devices. Only 2.9 JetStream features are used: a single
//! `filter_subject`, `AckPolicy::All`, Limits retention.
//!
//! Everything here may fail while NATS is away; nothing is lost because the inbox
//! is the truth. When the connection comes back, gateways tell every connection to
//! re-read its inbox ([`super::Push::Resync`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::presence::PresenceTable;
use super::wire::{GatewayControl, PresenceReport};
use super::{Delivery, Hub, Presence, subjects};
use crate::ids::{DeliveryId, DeviceId, GatewayId, NodeName};

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("connecting to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    /// A JetStream call (`what`) failed.
    #[error("JetStream: {what}")]
    JetStream {
        what: &'static str,
        #[source]
        source: BoxError,
    },
    /// The `.creds` file is not a valid credentials file (its contents are
    /// never shown).
    #[error("the NATS credentials file is not valid: {0}")]
    Credentials(#[source] std::io::Error),
    #[error("publishing to NATS")]
    Publish(#[from] async_nats::PublishError),
    #[error("encoding a NATS message")]
    Encode(#[from] serde_json::Error),
    /// This role needs a NATS connection and none is configured.
    #[error("{0} needs --nats")]
    NotConfigured(&'static str),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn jetstream(what: &'static str) -> impl FnOnce(BoxError) -> NatsError {
    move |source| NatsError::JetStream { what, source }
}

#[derive(Clone)]
pub struct NatsConfig {
    /// One server or a comma-separated list. May carry `user:password@`; logs
    /// show it through [`redact_url`].
    pub url: String,
    /// How this process proves who it is to NATS.
    pub auth: NatsAuth,
    pub tls: NatsTls,
    /// How long deliveries stay in the stream (a reconnecting gateway catches up
    /// within this; the inbox covers the rest).
    pub stream_max_age: Duration,
    /// Cap on the stream's size; the oldest deliveries go first (a gateway that
    /// misses some notices the gap in its sequence and resyncs).
    pub stream_max_bytes: u64,
    /// How often gateways report presence; three missed beats mark a gateway gone.
    pub heartbeat: Duration,
    /// How long a gateway waits for the core to answer a request.
    pub request_timeout: Duration,
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &redact_url(&self.url))
            .field("auth", &self.auth)
            .field("tls", &self.tls)
            .field("stream_max_age", &self.stream_max_age)
            .field("stream_max_bytes", &self.stream_max_bytes)
            .field("heartbeat", &self.heartbeat)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// A credential: kept in memory, never printed (`Debug` shows `[redacted]`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    fn expose(&self) -> String {
        self.0.clone()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// How a process authenticates to NATS (at most one way; docs/operations.md,
/// "NATS is a trust boundary").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NatsAuth {
    /// No credentials (or only those in the URL's `user:password@`).
    #[default]
    None,
    UserPassword {
        user: String,
        password: Secret,
    },
    Token(Secret),
    /// The seed (`SU…`) of a user nkey, read from its file.
    NKey(Secret),
    /// The contents of a `.creds` file (user JWT and nkey seed; operator mode).
    Credentials(Secret),
}

impl NatsAuth {
    /// Which way, for logs (never the credential itself).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::UserPassword { .. } => "user",
            Self::Token(_) => "token",
            Self::NKey(_) => "nkey",
            Self::Credentials(_) => "creds",
        }
    }
}

/// TLS towards NATS. Certificates are files in PEM format.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatsTls {
    /// CA certificates to trust besides the system's (a private CA).
    pub ca_file: Option<PathBuf>,
    /// The client certificate and its key, for servers that verify clients.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Refuse to talk to a server that does not offer TLS.
    pub required: bool,
}

/// `url` with any `user:password@` (or `token@`) removed from each server, for logs.
pub(crate) fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|server| {
            let server = server.trim();
            let (scheme, rest) = match server.split_once("://") {
                Some((scheme, rest)) => (Some(scheme), rest),
                None => (None, server),
            };
            let host = match rest.rsplit_once('@') {
                Some((_, host)) => host,
                None => rest,
            };
            match scheme {
                Some(scheme) => format!("{scheme}://{host}"),
                None => host.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Which side of the fabric a connection is: it decides the connection's
/// inbox prefix (what its NATS user may subscribe to for answers) and whether
/// it may create the delivery stream.
#[derive(Clone, Debug)]
pub enum NatsRole {
    /// The core, or an all-in-one node: owns the delivery stream.
    Core,
    /// A gateway: finds the stream the core made.
    Gateway(GatewayId),
}

/// A NATS connection that knows whether it is up. Cheap to clone.
#[derive(Clone)]
pub struct Nats {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub node: NodeName,
    pub role: NatsRole,
    pub config: NatsConfig,
    connected: Arc<AtomicBool>,
    /// Bumped on every (re)connect.
    connects: watch::Receiver<u64>,
}

impl Nats {
    /// Connects in the background: this returns at once even if NATS is down, and
    /// the client keeps reconnecting for ever.
    pub async fn connect(
        config: NatsConfig,
        node: NodeName,
        role: NatsRole,
        name: &str,
    ) -> Result<Self, NatsError> {
        let connected = Arc::new(AtomicBool::new(false));
        let (connects_tx, connects) = watch::channel(0u64);
        let flag = connected.clone();
        let client = secured(async_nats::ConnectOptions::new(), &config)?
            // Answers (RPC replies, JetStream API) come under a prefix of this
            // process's own, so NATS permissions can keep them from others.
            .custom_inbox_prefix(subjects::inbox_prefix(&node, &role))
            .name(name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5))
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((100 * 2u64.saturating_pow(attempts.min(6) as u32)).min(5000))
            })
            .event_callback(move |event| {
                let flag = flag.clone();
                let connects_tx = connects_tx.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!("NATS connected");
                            flag.store(true, Ordering::Release);
                            connects_tx.send_modify(|n| *n += 1);
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!("NATS disconnected");
                            flag.store(false, Ordering::Release);
                        }
                        other => tracing::info!(event = %other, "NATS event"),
                    }
                }
            })
            // A cluster is given as a comma-separated list of servers.
            .connect(
                config
                    .url
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>(),
            )
            .await
            .map_err(|source| NatsError::Connect {
                url: redact_url(&config.url),
                source,
            })?;
        let js = jetstream::new(client.clone());
        Ok(Self {
            client,
            js,
            node,
            role,
            config,
            connected,
            connects,
        })
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Changes on every (re)connect.
    pub fn connects(&self) -> watch::Receiver<u64> {
        self.connects.clone()
    }

    /// Creates (or adopts) the delivery stream; a gateway only looks it up (the
    /// core makes it, and a gateway's NATS user may not).
    pub async fn ensure_stream(&self) -> Result<stream::Stream, NatsError> {
        if let NatsRole::Gateway(_) = self.role {
            return self
                .js
                .get_stream(subjects::stream_name(&self.node))
                .await
                .map_err(|e| jetstream("finding the delivery stream")(e.into()));
        }
        let config = stream::Config {
            name: subjects::stream_name(&self.node),
            subjects: vec![subjects::deliveries_all(&self.node)],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::Old,
            max_age: self.config.stream_max_age,
            max_bytes: i64::try_from(self.config.stream_max_bytes).unwrap_or(i64::MAX),
            duplicate_window: Duration::from_secs(120),
            description: Some("natter live deliveries (the inbox in fjall is the truth)".into()),
            ..Default::default()
        };
        self.js
            .get_or_create_stream(config)
            .await
            .map_err(|e| jetstream("creating the delivery stream")(e.into()))
    }

    /// Subscribes to `subject`, retrying every 500 ms until it works; `None` if
    /// `cancel` fires first.
    pub async fn subscribe(
        &self,
        subject: String,
        cancel: &CancellationToken,
    ) -> Option<async_nats::Subscriber> {
        loop {
            match self.client.subscribe(subject.clone()).await {
                Ok(sub) => return Some(sub),
                Err(e) => tracing::warn!(%subject, error = %e, "cannot subscribe yet"),
            }
            tokio::select! {
                () = cancel.cancelled() => return None,
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// Retries [`Self::ensure_stream`] until it works or `cancel` fires.
    pub async fn wait_for_stream(&self, cancel: &CancellationToken) -> Option<stream::Stream> {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.ensure_stream().await {
                Ok(stream) => return Some(stream),
                Err(e) => tracing::warn!(error = %e, "delivery stream not available yet"),
            }
            tokio::select! {
                () = cancel.cancelled() => return None,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

/// `options` with the configured credentials and TLS settings.
fn secured(
    options: async_nats::ConnectOptions,
    config: &NatsConfig,
) -> Result<async_nats::ConnectOptions, NatsError> {
    let mut options = match &config.auth {
        NatsAuth::None => options,
        NatsAuth::UserPassword { user, password } => {
            options.user_and_password(user.clone(), password.expose())
        }
        NatsAuth::Token(token) => options.token(token.expose()),
        NatsAuth::NKey(seed) => options.nkey(seed.expose()),
        NatsAuth::Credentials(creds) => options
            .credentials(&creds.expose())
            .map_err(NatsError::Credentials)?,
    };
    let tls = &config.tls;
    if let Some(ca) = &tls.ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &tls.client_cert {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if tls.required {
        options = options.require_tls(true);
    }
    Ok(options)
}

/// Where a message sits in its gateway's sequence: the publisher's epoch (new at
/// every core start) and a counter per gateway. A gateway that sees the counter
/// skip knows something between the core and it was lost (a failed publish, a
/// message the stream's limits removed) and resyncs its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    epoch: u64,
    seq: u64,
}

/// Deliveries for one gateway travel together: one JetStream message carries
/// those of one commit group (up to [`BATCH_BYTES`]), so a message to a chat of
/// 100 costs one stored message per gateway, not 99.
///
/// Wire format (big-endian): epoch u64, seq u64, then per delivery: device (16
/// bytes), id u64, created_ms i64, length u32, event JSON.
fn encode(stamp: Stamp, deliveries: &[(DeviceId, &Delivery)]) -> Bytes {
    let size: usize = deliveries.iter().map(|(_, d)| 36 + d.encoded.len()).sum();
    let mut out = Vec::with_capacity(16 + size);
    out.extend_from_slice(&stamp.epoch.to_be_bytes());
    out.extend_from_slice(&stamp.seq.to_be_bytes());
    for (device, delivery) in deliveries {
        out.extend_from_slice(&device.to_bytes());
        out.extend_from_slice(&delivery.id.0.to_be_bytes());
        out.extend_from_slice(&delivery.created_ms.to_be_bytes());
        out.extend_from_slice(&(delivery.encoded.len() as u32).to_be_bytes());
        out.extend_from_slice(delivery.encoded.as_bytes());
    }
    Bytes::from(out)
}

fn decode(payload: &[u8]) -> Option<(Stamp, Vec<(DeviceId, Delivery)>)> {
    let u64_at = |at: usize| -> Option<u64> {
        Some(u64::from_be_bytes(
            payload.get(at..at + 8)?.try_into().ok()?,
        ))
    };
    let stamp = Stamp {
        epoch: u64_at(0)?,
        seq: u64_at(8)?,
    };
    let mut at = 16;
    let mut deliveries = Vec::new();
    while at < payload.len() {
        let device = DeviceId::from_slice(payload.get(at..at + 16)?)?;
        let id = u64_at(at + 16)?;
        let created_ms = u64_at(at + 24)? as i64;
        let len = u32::from_be_bytes(payload.get(at + 32..at + 36)?.try_into().ok()?) as usize;
        let encoded = std::str::from_utf8(payload.get(at + 36..at + 36 + len)?).ok()?;
        deliveries.push((
            device,
            Delivery {
                id: DeliveryId(id),
                created_ms,
                encoded: Arc::from(encoded),
            },
        ));
        at += 36 + len;
    }
    Some((stamp, deliveries))
}

/// The most event bytes in one JetStream message (well under NATS' 1 MiB).
const BATCH_BYTES: usize = 256 * 1024;

/// Splits one gateway's deliveries into messages of at most [`BATCH_BYTES`].
fn chunks<'a>(deliveries: &'a [(DeviceId, &'a Delivery)]) -> Vec<&'a [(DeviceId, &'a Delivery)]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, (_, delivery)) in deliveries.iter().enumerate() {
        let size = 36 + delivery.encoded.len();
        if i > start && bytes + size > BATCH_BYTES {
            out.push(&deliveries[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < deliveries.len() {
        out.push(&deliveries[start..]);
    }
    out
}

/// The feed's view of its sequence: whether a stamp shows a gap.
#[derive(Default)]
struct SeqCheck {
    last: Option<Stamp>,
}

impl SeqCheck {
    /// Records `stamp`; `true` when deliveries before it are missing. A new epoch
    /// (the core restarted, and announced it) starts over; redeliveries (lower
    /// numbers) are not gaps.
    fn gap(&mut self, stamp: Stamp) -> bool {
        let gap = match self.last {
            Some(last) if last.epoch == stamp.epoch => {
                if stamp.seq <= last.seq {
                    return false;
                }
                stamp.seq > last.seq + 1
            }
            _ => false,
        };
        self.last = Some(stamp);
        gap
    }
}

/// The next item of `stream`, or `None` once it ends or `cancel` fires.
pub(crate) async fn next_or_cancel<S: futures_util::Stream + Unpin>(
    stream: &mut S,
    cancel: &CancellationToken,
) -> Option<S::Item> {
    tokio::select! {
        () = cancel.cancelled() => None,
        item = stream.next() => item,
    }
}

// ------------------------------------------------------------ core side

/// The core's hand-off to JetStream: a task routes each delivery by presence and
/// publishes it.
///
/// Back-pressure: the hand-off queue is bounded, and the writer thread waits when
/// it is full, so a node that cannot publish as fast as it commits slows its
/// senders down instead of queueing without limit. While NATS is down the writer
/// does not wait: the deliveries are dropped here (they are in the inbox, and
/// every connection re-reads it when NATS comes back).
#[derive(Clone)]
pub struct JsPublisher {
    tx: mpsc::Sender<Vec<(DeviceId, Delivery)>>,
    nats: Nats,
}

/// Commit groups waiting for the publisher before the writer waits.
const PUBLISH_QUEUE: usize = 32;

impl JsPublisher {
    /// Called on the writer thread (not an async context), after each commit.
    pub fn publish(&self, batch: Vec<(DeviceId, Delivery)>) {
        if batch.is_empty() || !self.nats.is_connected() {
            return;
        }
        let _ = self.tx.blocking_send(batch);
    }

    pub fn start(
        nats: Nats,
        presence: Presence,
        tasks: &TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::channel(PUBLISH_QUEUE);
        tasks.spawn(publish_loop(nats.clone(), presence, rx, cancel));
        Self { tx, nats }
    }
}

async fn publish_loop(
    nats: Nats,
    presence: Presence,
    mut rx: mpsc::Receiver<Vec<(DeviceId, Delivery)>>,
    cancel: CancellationToken,
) {
    // Publishes in flight (awaiting their JetStream ack), bounded.
    const IN_FLIGHT: usize = 1024;
    let mut acks = FuturesUnordered::new();
    let epoch = u64::from_be_bytes(crate::auth::random_bytes::<8>());
    let mut seqs: std::collections::HashMap<GatewayId, u64> = std::collections::HashMap::new();
    loop {
        let batch = tokio::select! {
            biased;
            Some(done) = acks.next(), if !acks.is_empty() => {
                handle_ack(&nats, done).await;
                continue;
            }
            batch = rx.recv() => match batch {
                Some(batch) => batch,
                None => break,
            },
            () = cancel.cancelled() => break,
        };
        if !nats.is_connected() {
            // Dropped: the inbox has them, and a reconnect resyncs every connection.
            continue;
        }
        // Route by presence, keeping commit order within each gateway.
        let mut by_gateway: Vec<(GatewayId, Vec<(DeviceId, &Delivery)>)> = Vec::new();
        for (device, delivery) in &batch {
            // Offline devices are skipped: the inbox keeps their events.
            let Some(gateway) = presence.gateway_of(*device) else {
                continue;
            };
            match by_gateway.iter_mut().find(|(g, _)| *g == gateway) {
                Some((_, list)) => list.push((*device, delivery)),
                None => by_gateway.push((gateway, vec![(*device, delivery)])),
            }
        }
        for (gateway, deliveries) in &by_gateway {
            for chunk in chunks(deliveries) {
                let seq = seqs.entry(gateway.clone()).or_default();
                *seq += 1;
                let payload = encode(Stamp { epoch, seq: *seq }, chunk);
                let devices: Vec<DeviceId> = chunk.iter().map(|(d, _)| *d).collect();
                let subject = subjects::deliveries(&nats.node, gateway);
                let gateway = gateway.clone();
                match nats.js.publish(subject, payload).await {
                    Ok(ack) => acks.push(async move { (gateway, devices, ack.await.map(|_| ())) }),
                    Err(e) => handle_ack(&nats, (gateway, devices, Err(e))).await,
                }
                while acks.len() >= IN_FLIGHT {
                    if let Some(done) = acks.next().await {
                        handle_ack(&nats, done).await;
                    }
                }
            }
        }
    }
    while let Some(done) = acks.next().await {
        handle_ack(&nats, done).await;
    }
}

async fn handle_ack(
    nats: &Nats,
    (gateway, devices, result): (
        GatewayId,
        Vec<DeviceId>,
        Result<(), async_nats::jetstream::context::PublishError>,
    ),
) {
    if let Err(e) = result {
        crate::metrics::METRICS
            .publish_failures
            .inc_by(devices.len() as u64);
        tracing::warn!(%gateway, devices = devices.len(), error = %e, "delivery publish failed; asking the gateway to resync");
        // Best effort: if NATS is down this fails too, and the gateway resyncs
        // every connection when it reconnects (and on the gap in its sequence).
        let mut devices = devices;
        devices.sort_unstable();
        devices.dedup();
        for device in devices {
            let _ = publish_json(
                nats,
                subjects::gateway_control(&nats.node, &gateway),
                &GatewayControl::Resync { device },
            )
            .await;
        }
    }
}

async fn publish_json<T: serde::Serialize>(
    nats: &Nats,
    subject: String,
    value: &T,
) -> Result<(), NatsError> {
    let payload = serde_json::to_vec(value)?;
    Ok(nats.client.publish(subject, payload.into()).await?)
}

/// Core side of presence: takes gateways' reports into `table`, expires silent
/// gateways, and announces a (re)start so gateways resync and report again.
pub(crate) fn start_presence_listener(
    nats: Nats,
    table: Arc<PresenceTable>,
    tasks: &TaskTracker,
    cancel: CancellationToken,
) {
    let listener = nats.clone();
    let reports = table.clone();
    let stop = cancel.clone();
    let (listening_tx, mut listening) = watch::channel(false);
    // Once listening, and after every reconnect, tell gateways the core
    // (re)started: they report their devices and resync them. This covers a crash
    // between commit and publish, and deliveries the core dropped while it could
    // not reach NATS.
    let announcer = nats.clone();
    let announce_stop = cancel.clone();
    tasks.spawn(async move {
        if listening.wait_for(|up| *up).await.is_err() {
            return;
        }
        let mut connects = announcer.connects();
        loop {
            let _ = announcer
                .client
                .publish(subjects::core_started(&announcer.node), Bytes::new())
                .await;
            tokio::select! {
                () = announce_stop.cancelled() => return,
                changed = connects.changed() => if changed.is_err() { return },
            }
        }
    });
    tasks.spawn(async move {
        let Some(mut sub) = listener
            .subscribe(subjects::presence(&listener.node), &stop)
            .await
        else {
            return;
        };
        let _ = listening_tx.send(true);
        while let Some(message) = next_or_cancel(&mut sub, &stop).await {
            match serde_json::from_slice::<PresenceReport>(&message.payload) {
                Ok(PresenceReport::Heartbeat {
                    gateway,
                    round,
                    parts,
                    devices,
                    ..
                }) => {
                    reports.heartbeat_part(&gateway, round, parts, devices, Instant::now());
                }
                Ok(PresenceReport::SessionEnd { gateway, device }) => {
                    reports.disconnect(device, &gateway);
                }
                Err(e) => tracing::warn!(error = %e, "bad presence report"),
            }
        }
    });
    let period = nats.config.heartbeat;
    tasks.spawn(async move {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(period) => {}
            }
            for gone in table.expire(Instant::now()) {
                tracing::warn!(gateway = %gone, "gateway stopped heart-beating; its devices are offline");
            }
        }
    });
}

/// Tells `gateway` to close its connection of `device`: it connected elsewhere
/// (`Displace`), or it logged out (`Revoke`).
pub(crate) async fn control(nats: &Nats, gateway: &GatewayId, order: GatewayControl) {
    let subject = subjects::gateway_control(&nats.node, gateway);
    if let Err(e) = publish_json(nats, subject, &order).await {
        tracing::warn!(error = %e, ?order, "could not send an order to a gateway");
    }
}

// ------------------------------------------------------------ gateway side

/// Runs the gateway's durable consumer, handing every delivery to the hub.
fn start_feed(
    nats: Nats,
    gateway: GatewayId,
    hub: Hub,
    tasks: &TaskTracker,
    cancel: CancellationToken,
) {
    tasks.spawn(async move {
        let mut delay = Duration::from_millis(100);
        loop {
            match feed(&nats, &gateway, &hub, &cancel).await {
                Ok(()) => return,
                Err(e) => tracing::warn!(error = %e, "delivery feed interrupted; restarting"),
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    });
}

async fn feed(
    nats: &Nats,
    gateway: &GatewayId,
    hub: &Hub,
    cancel: &CancellationToken,
) -> Result<(), NatsError> {
    let Some(stream) = nats.wait_for_stream(cancel).await else {
        return Ok(());
    };
    let name = subjects::consumer_name(gateway);
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &name,
            consumer::pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: subjects::deliveries_for_gateway(&nats.node, gateway),
                ack_policy: consumer::AckPolicy::All,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 50_000,
                deliver_policy: consumer::DeliverPolicy::All,
                // A gateway id that never comes back should not keep a consumer.
                inactive_threshold: Duration::from_secs(24 * 3600),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| jetstream("creating the gateway's consumer")(e.into()))?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(1000)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(|e| jetstream("reading the gateway's consumer")(e.into()))?;
    tracing::info!(consumer = %name, "delivery feed running");
    // Acks are cumulative (AckPolicy::All): ack the newest handed-off message
    // every ACK_EVERY messages (each carries many deliveries) or when the stream
    // goes quiet.
    const ACK_EVERY: usize = 64;
    let mut unacked = None;
    let mut count = 0;
    let mut quiet = tokio::time::interval(Duration::from_millis(20));
    let mut sequence = SeqCheck::default();
    loop {
        tokio::select! {
            () = cancel.cancelled() => {
                if let Some(last) = unacked.take() {
                    ack(last).await;
                }
                return Ok(());
            }
            message = messages.next() => {
                let message = match message {
                    Some(Ok(message)) => message,
                    Some(Err(e)) => return Err(jetstream("reading the gateway's consumer")(e.into())),
                    None => return Err(jetstream("reading the gateway's consumer")("the stream of messages ended".into())),
                };
                match decode(&message.payload) {
                    Some((stamp, deliveries)) => {
                        if sequence.gap(stamp) {
                            tracing::warn!("deliveries missing on the hop: every connection re-reads its inbox");
                            hub.resync_all();
                        }
                        hub.publish(deliveries);
                    }
                    None => tracing::warn!(subject = %message.subject, "malformed deliveries dropped"),
                }
                unacked = Some(message);
                count += 1;
                if count >= ACK_EVERY {
                    count = 0;
                    if let Some(last) = unacked.take() {
                        ack(last).await;
                    }
                }
            }
            _ = quiet.tick() => {
                if let Some(last) = unacked.take() {
                    count = 0;
                    ack(last).await;
                }
            }
        }
    }
}

async fn ack(message: jetstream::Message) {
    if let Err(e) = message.ack().await {
        tracing::debug!(error = %e, "ack failed (the deliveries come again; the inbox dedups)");
    }
}

/// Everything a process that holds client connections runs on NATS: the
/// delivery feed ([`start_feed`]); heartbeats with the list of connected devices
/// (when a separate core needs them); displacement and resync orders from the
/// core; and a resync of every connection whenever NATS reconnects or the core
/// restarts.
pub(crate) fn start_gateway_link(
    nats: Nats,
    gateway: GatewayId,
    hub: Hub,
    report_presence: bool,
    tasks: &TaskTracker,
    cancel: CancellationToken,
) {
    start_feed(
        nats.clone(),
        gateway.clone(),
        hub.clone(),
        tasks,
        cancel.clone(),
    );
    // Resync everything after a reconnect: publishes may have failed meanwhile.
    let mut connects = nats.connects();
    let resync_hub = hub.clone();
    let stop = cancel.clone();
    tasks.spawn(async move {
        // The first connect is not a reconnect.
        let mut seen = *connects.borrow_and_update();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                changed = connects.changed() => if changed.is_err() { return },
            }
            let now = *connects.borrow_and_update();
            if seen > 0 {
                tracing::info!("NATS reconnected: every connection re-reads its inbox");
                resync_hub.resync_all();
            }
            seen = now;
        }
    });

    start_control_listener(
        nats.clone(),
        gateway.clone(),
        hub.clone(),
        tasks,
        cancel.clone(),
    );
    if report_presence {
        tasks.spawn(heartbeats(nats, gateway, hub, cancel));
    }
}

/// Orders from the core to this gateway (displace, resync, revoke), and its
/// (re)start announcements, which resync every connection.
fn start_control_listener(
    control: Nats,
    gateway: GatewayId,
    hub: Hub,
    tasks: &TaskTracker,
    stop: CancellationToken,
) {
    tasks.spawn(async move {
        let subjects = [
            subjects::gateway_control(&control.node, &gateway),
            subjects::core_started(&control.node),
        ];
        let mut subs = Vec::new();
        for subject in subjects {
            match control.subscribe(subject, &stop).await {
                Some(sub) => subs.push(sub),
                None => return,
            }
        }
        let mut merged = futures_util::stream::select_all(subs);
        let started = subjects::core_started(&control.node);
        while let Some(message) = next_or_cancel(&mut merged, &stop).await {
            if message.subject.as_str() == started {
                tracing::info!("the core (re)started: resyncing every connection");
                hub.resync_all();
                continue;
            }
            match serde_json::from_slice::<GatewayControl>(&message.payload) {
                Ok(GatewayControl::Displace { device }) => hub.displace(device),
                Ok(GatewayControl::Resync { device }) => hub.resync(device),
                Ok(GatewayControl::Revoke { device }) => hub.revoke(device),
                Err(e) => tracing::warn!(error = %e, "bad control message"),
            }
        }
    });
}

/// Reports this gateway's devices to the core every heartbeat period, and at
/// once after a reconnect.
async fn heartbeats(nats: Nats, gateway: GatewayId, hub: Hub, cancel: CancellationToken) {
    // Devices per heartbeat message: ~120 KB of JSON, far below 1 MiB.
    const PART: usize = 4096;
    let period = nats.config.heartbeat;
    let mut connects = nats.connects();
    loop {
        let (round, devices) = hub.next_presence_round();
        let chunks: Vec<&[DeviceId]> = if devices.is_empty() {
            vec![&[]]
        } else {
            devices.chunks(PART).collect()
        };
        let parts = chunks.len() as u32;
        for (part, chunk) in chunks.into_iter().enumerate() {
            let report = PresenceReport::Heartbeat {
                gateway: gateway.clone(),
                round,
                part: part as u32,
                parts,
                devices: chunk.to_vec(),
            };
            if nats.is_connected()
                && let Err(e) = publish_json(&nats, subjects::presence(&nats.node), &report).await
            {
                tracing::debug!(error = %e, "heartbeat not sent");
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(period) => {}
            _ = connects.changed() => {}
        }
    }
}

/// Reports that a device's session at `gateway` ended (best effort: heartbeats
/// correct a lost report).
pub(crate) async fn session_ended(nats: &Nats, gateway: &GatewayId, device: DeviceId) {
    let report = PresenceReport::SessionEnd {
        gateway: gateway.clone(),
        device,
    };
    let _ = publish_json(nats, subjects::presence(&nats.node), &report).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_on_the_wire_and_split_by_size() {
        let small = Delivery {
            id: DeliveryId(1),
            encoded: Arc::from(r#"{"type":"chatUpdate"}"#),
            created_ms: 5,
        };
        let big = Delivery {
            id: DeliveryId(2),
            encoded: Arc::from("x".repeat(BATCH_BYTES / 2).as_str()),
            created_ms: 6,
        };
        let (a, b) = (DeviceId::generate(), DeviceId::generate());
        let list = vec![(a, &small), (b, &big), (a, &big), (b, &small)];
        let parts = chunks(&list);
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [2, 2]);
        let stamp = Stamp { epoch: 3, seq: 4 };
        let (back_stamp, back) = decode(&encode(stamp, parts[0])).unwrap();
        assert_eq!(back_stamp, stamp);
        assert_eq!(back.len(), 2);
        assert_eq!(
            (back[0].0, back[0].1.id, back[0].1.created_ms),
            (a, DeliveryId(1), 5)
        );
        assert_eq!(back[1].1.encoded, big.encoded);
        assert!(decode(&encode(stamp, &[])).unwrap().1.is_empty());
        assert!(decode(b"short").is_none());
    }

    #[test]
    fn urls_in_logs_lose_their_credentials() {
        assert_eq!(
            redact_url("nats://core:s3cret@10.0.0.1:4222, tls://tok@n2:4222,n3:4222"),
            "nats://10.0.0.1:4222,tls://n2:4222,n3:4222"
        );
        assert_eq!(redact_url("u:p@host:4222"), "host:4222");
        let config = NatsConfig {
            url: "nats://core:s3cret@h:4222".into(),
            auth: NatsAuth::UserPassword {
                user: "core".into(),
                password: Secret::new("hunter22".into()),
            },
            tls: NatsTls::default(),
            stream_max_age: Duration::from_secs(1),
            stream_max_bytes: 1,
            heartbeat: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
        };
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("hunter22"),
            "{shown}"
        );
        assert!(shown.contains("[redacted]"), "{shown}");
    }

    #[test]
    fn skipped_numbers_are_gaps_redeliveries_and_new_epochs_are_not() {
        let mut check = SeqCheck::default();
        let at = |epoch, seq| Stamp { epoch, seq };
        assert!(!check.gap(at(1, 5)), "the first one seen");
        assert!(!check.gap(at(1, 6)));
        assert!(check.gap(at(1, 8)), "7 is missing");
        assert!(!check.gap(at(1, 3)), "a redelivery");
        assert!(!check.gap(at(1, 9)));
        assert!(!check.gap(at(2, 1)), "the core restarted");
        assert!(!check.gap(at(2, 2)));
    }
}
