//! Each peer's outbox and the one task per peer that sends it.
//!
//! The writer queues every federated event on fjall, in the same transaction
//! as the change it describes, so an event is queued if and only if the
//! change is stored (the write-ahead record). From there:
//! - **without NATS** ([`Queue::Fjall`]) the sender reads the fjall outbox
//!   directly and removes what the peer confirmed;
//! - **with NATS** ([`Queue::JetStream`]) the sender first relays what is on
//!   fjall to the peer's subject of the JetStream outbox stream (one message
//!   per chunk of entries, waiting for JetStream's ack) and then removes it
//!   from fjall; it reads from the peer's durable consumer and acks a message
//!   once the peer has every event in it. On start it relays whatever is
//!   still on fjall again (message ids deduplicate a relay cut short by a
//!   crash; the peer applies each event seq once anyway).
//!
//! Both send the same way: batches in outbox order, the same wire format and
//! seqs, capped exponential back-off with jitter while the peer is away, woken
//! at once by a new event or by the peer contacting us. An event older than
//! `dead_letter_after`, or one the peer refuses, becomes a dead letter on
//! fjall that an admin can see and replay.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::PeerInfo;
use crate::core::writer::{Op, Outcome};
use crate::core::{Core, CoreError};
use crate::delivery::nats::NatsError;
use crate::delivery::outbox::{Fetched, OutboxStream, PeerConsumer};
use crate::federation::client::PeerError;
use crate::federation::events::{Applied, EventBatch, Numbered};
use crate::ids::NodeName;
use crate::store::OutboxEntry;

/// Events sent to a peer in one request.
const BATCH: usize = 256;
/// Most outbox entries relayed to JetStream in one message.
const RELAY_CHUNK: usize = 256;
/// Most bytes of one relayed message (NATS' default payload limit is 1 MiB).
const RELAY_BYTES: usize = 512 * 1024;
/// How soon a failed relay or JetStream read is tried again.
const QUEUE_RETRY: Duration = Duration::from_secs(1);

/// Where a peer's events wait for it, as its sender sees them.
pub(super) enum Queue {
    /// On fjall: read after the last confirmed seq, removed once confirmed.
    Fjall(FjallQueue),
    /// Relayed from fjall to the JetStream outbox; read from the peer's
    /// durable consumer.
    JetStream(Box<JsQueue>),
}

/// The fjall outbox as its sender reads it.
#[derive(Default)]
pub(super) struct FjallQueue {
    /// The removal of the entries the peer confirmed last, still being
    /// written (after the removals before it, which it waits for). The next
    /// batch is sent meanwhile (reads start after the confirmed seq, kept in
    /// memory), so the writer's commit of a removal is not on the path of
    /// any event; the sender waits for the removals before it stops.
    cleanup: Option<tokio::task::JoinHandle<()>>,
}

impl FjallQueue {
    /// Waits for the outstanding removal, if any.
    async fn settle(&mut self) {
        if let Some(cleanup) = self.cleanup.take() {
            // A removal that failed leaves entries the peer has; they are
            // sent again after a restart and skipped by the peer.
            let _ = cleanup.await;
        }
    }
}

pub(super) struct JsQueue {
    stream: OutboxStream,
    consumer: Option<PeerConsumer>,
    /// Messages fetched and not acked yet, oldest first: the sender sends
    /// from here until the peer has everything in them, and reads no further
    /// before (so nothing overtakes an older event).
    held: VecDeque<Held>,
}

struct Held {
    entries: Vec<(u64, OutboxEntry)>,
    fetched: Fetched,
}

impl JsQueue {
    /// Acks (and forgets) the held messages the peer has everything of.
    async fn ack_confirmed(&mut self, confirmed: u64) -> Result<(), NatsError> {
        while self
            .held
            .front()
            .is_some_and(|h| h.entries.last().is_none_or(|(seq, _)| *seq <= confirmed))
        {
            if let Some(held) = self.held.pop_front() {
                held.fetched.ack().await?;
            }
        }
        Ok(())
    }
}

/// What a peer's outbox holds next.
enum Next {
    /// Events to send: the entries, and the events read from them.
    Batch(Vec<(u64, OutboxEntry)>, Vec<Numbered>),
    /// The oldest entry cannot be sent (unreadable, or too old).
    Dead(u64, OutboxEntry),
    Nothing,
}

/// A batch that was sent, with the peer's answer.
type Sending = Pin<Box<dyn Future<Output = (Posted, Result<Applied, PeerError>)> + Send>>;

/// The entries of a batch that was sent.
struct Posted {
    batch: Vec<(u64, OutboxEntry)>,
}

impl Posted {
    /// Its first and last seq.
    fn seqs(&self) -> (u64, u64) {
        let seq = |e: Option<&(u64, OutboxEntry)>| e.map_or(0, |(seq, _)| *seq);
        (seq(self.batch.first()), seq(self.batch.last()))
    }
}

/// What a batch's answer means for the batches after it.
enum Settled {
    /// All applied: go on (`ordered`: the peer honours `after`).
    Next { ordered: bool },
    /// Start again from what the peer confirmed.
    Restart,
}

/// Why a round of sending stopped.
pub(super) enum SendError {
    /// The peer did not take the batch: back off.
    Peer(PeerError),
    /// JetStream (or the writer) failed: try again shortly.
    Queue(String),
}

impl From<PeerError> for SendError {
    fn from(e: PeerError) -> Self {
        Self::Peer(e)
    }
}

impl From<NatsError> for SendError {
    fn from(e: NatsError) -> Self {
        Self::Queue(e.to_string())
    }
}

/// The payload of a JetStream outbox message: entries with their seqs.
fn encode(entries: &[(u64, OutboxEntry)]) -> Bytes {
    serde_json::to_vec(entries).unwrap_or_default().into()
}

fn decode(payload: &[u8]) -> Option<Vec<(u64, OutboxEntry)>> {
    serde_json::from_slice(payload).ok()
}

impl Core {
    /// With NATS: the next message of `peer`'s JetStream outbox at stream
    /// sequence `from` or later (its sequence and entries), read without
    /// consuming it; `None` at the end, or without NATS. For backups.
    pub(crate) async fn relayed_outbox(
        &self,
        peer: &NodeName,
        from: u64,
    ) -> Result<Option<(u64, Vec<(u64, OutboxEntry)>)>, NatsError> {
        let Some(stream) = self.fed().outbox.get() else {
            return Ok(None);
        };
        let Some((seq, payload)) = stream.next_from(peer, from).await? else {
            return Ok(None);
        };
        let entries = decode(&payload).ok_or_else(|| NatsError::JetStream {
            what: "decoding an outbox message",
            source: "not a list of outbox entries".into(),
        })?;
        Ok(Some((seq, entries)))
    }

    /// Whether the outboxes go through JetStream.
    pub(crate) fn outbox_on_stream(&self) -> bool {
        self.fed().outbox.get().is_some()
    }

    /// The queue a new sender of a peer reads.
    fn queue(&self) -> Queue {
        match self.fed().outbox.get() {
            Some(stream) => Queue::JetStream(Box::new(JsQueue {
                stream: stream.clone(),
                consumer: None,
                held: VecDeque::new(),
            })),
            None => Queue::Fjall(FjallQueue::default()),
        }
    }

    /// Sends `node`'s outbox until `stop`. After a failure it waits out the
    /// back-off: new events do not shorten it (they are still relayed to
    /// JetStream), the peer contacting us does (that clears the back-off).
    /// `running` is held while it runs: the next sender of the same peer, or
    /// its removal, waits for it.
    pub(super) async fn send_outbox(
        self,
        node: NodeName,
        stop: CancellationToken,
        running: Arc<tokio::sync::Mutex<()>>,
    ) {
        let _running = running.lock_owned().await;
        if stop.is_cancelled() {
            return;
        }
        let wake = self.inner.wakers.of(&node);
        let mut queue = self.queue();
        loop {
            let relayed = match self.relay(&node, &mut queue).await {
                Ok(more) => Ok(more),
                Err(e) => {
                    tracing::warn!(peer = %node, error = %e, "cannot hand the outbox to JetStream yet");
                    Err(())
                }
            };
            let backoff = self.retry_in(&node);
            let mut wait = if backoff.is_some() {
                backoff
            } else {
                match self.send_some(&node, &mut queue, &wake, &stop).await {
                    Ok(true) => continue,
                    Ok(false) => None,
                    Err(SendError::Peer(e)) => Some(self.failed(&node, &e)),
                    Err(SendError::Queue(e)) => {
                        tracing::warn!(peer = %node, error = %e, "cannot read the outbox");
                        Some(QUEUE_RETRY)
                    }
                }
            };
            match relayed {
                Ok(true) => continue,
                Ok(false) => {}
                Err(()) => wait = Some(wait.map_or(QUEUE_RETRY, |w| w.min(QUEUE_RETRY))),
            }
            let sleep = wait.unwrap_or(Duration::from_secs(60));
            tokio::select! {
                () = stop.cancelled() => {
                    if let Queue::Fjall(fjall) = &mut queue {
                        fjall.settle().await;
                    }
                    return;
                }
                () = wake.notified() => {}
                () = tokio::time::sleep(sleep) => {
                    if let Some(h) = self.fed().health().get_mut(&node) {
                        h.retry_at = None;
                    }
                }
            }
        }
    }

    /// How long the peer's back-off still runs, if it does.
    fn retry_in(&self, node: &NodeName) -> Option<Duration> {
        let now = self.inner.clock.now_ms();
        let retry_at = self.fed().health().get(node)?.retry_at?;
        (retry_at > now).then(|| Duration::from_millis((retry_at - now) as u64))
    }

    /// With JetStream: makes sure the peer's consumer exists, and hands one
    /// chunk of what is queued on fjall to the stream, then removes it from
    /// fjall. `Ok(true)` when more is waiting on fjall.
    async fn relay(&self, node: &NodeName, queue: &mut Queue) -> Result<bool, NatsError> {
        let Queue::JetStream(js) = queue else {
            return Ok(false);
        };
        if js.consumer.is_none() {
            js.consumer = Some(js.stream.consumer(node).await?);
        }
        // Entries up to `delivered` are in the stream already.
        let after = self.fed().health().get(node).map_or(0, |h| h.delivered);
        let name = node.clone();
        let read = self
            .read(move |view| Ok(view.outbox(&name, after, RELAY_CHUNK, false)?))
            .await;
        let Ok(mut chunk) = read else {
            return Ok(false);
        };
        let full = chunk.len() == RELAY_CHUNK;
        let mut bytes = 0;
        let keep = chunk
            .iter()
            .position(|(_, e)| {
                bytes += e.event.to_string().len() + 64;
                bytes > RELAY_BYTES
            })
            .unwrap_or(chunk.len())
            .max(1);
        let more = full || keep < chunk.len();
        chunk.truncate(keep);
        let (Some((first, _)), Some((last, _))) = (chunk.first(), chunk.last()) else {
            return Ok(false);
        };
        let (first, last) = (*first, *last);
        let id = format!("{node}:{first}-{last}");
        js.stream.publish(node, id, encode(&chunk)).await?;
        // On JetStream now: drop from fjall (a crash before this relays them
        // again; the message id or the peer's apply-once drops the copy).
        self.outbox_done(node, first, last, None).await;
        Ok(more)
    }

    /// Up to [`BATCH`] events not yet confirmed and after `after` (the last
    /// one in flight), in outbox order.
    async fn peek(
        &self,
        node: &NodeName,
        queue: &mut Queue,
        after: Option<u64>,
    ) -> Result<Vec<(u64, OutboxEntry)>, SendError> {
        let confirmed = self.fed().health().get(node).map_or(0, |h| h.confirmed);
        let js = match queue {
            Queue::Fjall(_) => {
                let name = node.clone();
                let delivered = self.fed().health().get(node).map_or(0, |h| h.delivered);
                let from = delivered.max(after.unwrap_or(0));
                return self
                    .read(move |view| Ok(view.outbox(&name, from, BATCH, false)?))
                    .await
                    .map_err(|e| SendError::Queue(e.to_string()));
            }
            Queue::JetStream(js) => js,
        };
        js.ack_confirmed(confirmed).await?;
        let from = confirmed.max(after.unwrap_or(0));
        let unsent = |js: &JsQueue| {
            js.held
                .iter()
                .any(|h| h.entries.last().is_some_and(|(seq, _)| *seq > from))
        };
        if !unsent(js) {
            let Some(consumer) = &js.consumer else {
                return Ok(Vec::new());
            };
            let fetched = match consumer.fetch(BATCH).await {
                Ok(fetched) => fetched,
                Err(e) => {
                    // Made again on the next round (it may have been deleted).
                    js.consumer = None;
                    return Err(e.into());
                }
            };
            for fetched in fetched {
                match decode(&fetched.payload) {
                    Some(entries) => js.held.push_back(Held { entries, fetched }),
                    None => {
                        tracing::error!(peer = %node, "unreadable outbox message dropped");
                        fetched.ack().await?;
                    }
                }
            }
        }
        Ok(js
            .held
            .iter()
            .flat_map(|h| h.entries.iter())
            .filter(|(seq, _)| *seq > from)
            .take(BATCH)
            .cloned()
            .collect())
    }

    /// The next batch after `after`: the events up to the first one that
    /// cannot be sent (unreadable, or older than `dead_letter_after`).
    async fn next_batch(
        &self,
        node: &NodeName,
        queue: &mut Queue,
        after: Option<u64>,
    ) -> Result<Next, SendError> {
        let mut batch = self.peek(node, queue, after).await?;
        let now = self.inner.clock.now_ms();
        let too_old = crate::clock::millis(self.fed().config.dead_letter_after);
        let mut events = Vec::with_capacity(batch.len());
        for (seq, entry) in &batch {
            match serde_json::from_value(entry.event.clone()) {
                Ok(event) if now - entry.queued_at <= too_old => {
                    events.push(Numbered { seq: *seq, event });
                }
                // The events before it go first, then it becomes a dead
                // letter on its own.
                _ if events.is_empty() => return Ok(Next::Dead(*seq, entry.clone())),
                _ => break,
            }
        }
        if events.is_empty() {
            return Ok(Next::Nothing);
        }
        batch.truncate(events.len());
        Ok(Next::Batch(batch, events))
    }

    /// Sends the outbox while there is something to send: up to
    /// `federation.max_batches_in_flight` batches at once (one until the peer
    /// shows it applies them in order), each batch naming the one before it
    /// (`after`), answers taken in order. `Ok(true)`: start again from what
    /// the peer confirmed (an event refused, a batch out of order).
    async fn send_some(
        &self,
        node: &NodeName,
        queue: &mut Queue,
        wake: &Notify,
        stop: &CancellationToken,
    ) -> Result<bool, SendError> {
        let name = node.clone();
        let peer = self.read(move |view| Ok(view.peer(&name)?)).await;
        let Ok(Some(peer)) = peer else {
            return Ok(false);
        };
        self.announce_key(node, &peer.url).await?;
        let mut window = 1;
        let mut in_flight = FuturesOrdered::new();
        // The last seq handed out in this round; `idle`: nothing to send now.
        let (mut sent, mut idle, mut woken) = (None, false, false);
        loop {
            if std::mem::take(&mut woken)
                && let Err(e) = self.relay(node, queue).await
            {
                tracing::warn!(peer = %node, error = %e, "cannot hand the outbox to JetStream yet");
            }
            while !idle && in_flight.len() < window {
                match self.next_batch(node, queue, sent).await? {
                    Next::Batch(batch, events) => {
                        let after = sent.filter(|_| !in_flight.is_empty());
                        sent = batch.last().map(|(seq, _)| *seq);
                        in_flight.push_back(self.post_batch(node, &peer.url, batch, events, after));
                    }
                    Next::Dead(seq, entry) if in_flight.is_empty() => {
                        tracing::warn!(peer = %node, seq, "outbox entry becomes a dead letter");
                        self.done(node, queue, seq, seq - 1, Some((seq, &entry)))
                            .await?;
                        return Ok(true);
                    }
                    Next::Dead(..) | Next::Nothing => idle = true,
                }
            }
            if in_flight.is_empty() {
                return Ok(false);
            }
            tokio::select! {
                Some((posted, answer)) = in_flight.next() => {
                    match self.settle(node, queue, posted, answer).await? {
                        Settled::Next { ordered } => {
                            if ordered {
                                window = self.fed().config.max_batches_in_flight.max(1);
                            }
                            idle = false;
                        }
                        Settled::Restart => return Ok(true),
                    }
                }
                () = wake.notified() => (idle, woken) = (false, true),
                () = stop.cancelled() => return Ok(false),
            }
        }
    }

    /// Signs and posts one batch (owned, so several can be in flight).
    fn post_batch(
        &self,
        node: &NodeName,
        url: &str,
        batch: Vec<(u64, OutboxEntry)>,
        events: Vec<Numbered>,
        after: Option<u64>,
    ) -> Sending {
        let (core, node, url) = (self.clone(), node.clone(), url.to_owned());
        Box::pin(async move {
            let now = core.inner.clock.now_ms();
            let answer = core
                .fed()
                .client
                .post(
                    &core.fed().signing_key(),
                    &node,
                    &url,
                    "/federation/v1/events",
                    &EventBatch { events, after },
                    now,
                )
                .await;
            (Posted { batch }, answer)
        })
    }

    /// Takes a batch's answer: what the peer has leaves the outbox.
    async fn settle(
        &self,
        node: &NodeName,
        queue: &mut Queue,
        posted: Posted,
        answer: Result<Applied, PeerError>,
    ) -> Result<Settled, SendError> {
        let (first, last) = posted.seqs();
        match answer {
            Ok(Applied { applied, ordered }) => {
                self.succeeded(node);
                self.done(node, queue, first, applied, None).await?;
                Ok(if applied >= last {
                    Settled::Next { ordered }
                } else {
                    Settled::Restart
                })
            }
            Err(PeerError::Refused { status, body, .. }) if out_of_order(status, &body) => {
                self.succeeded(node);
                Ok(Settled::Restart)
            }
            Err(PeerError::Refused { status, body, .. }) if refused_event(status, &body) => {
                // The peer refused one event; the ones before it are applied.
                let applied = body["applied"].as_u64().unwrap_or(first - 1);
                tracing::warn!(peer = %node, after = applied, %body, "a peer refused an event: dead letter");
                self.succeeded(node);
                // The first one after `applied` (seqs may jump: a restore).
                let dead = posted.batch.iter().find(|(seq, _)| *seq > applied);
                self.done(node, queue, first, applied, dead.map(|(s, e)| (*s, e)))
                    .await?;
                Ok(Settled::Restart)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The peer has every event up to `delivered`; `dead`, if any, becomes a
    /// dead letter.
    async fn done(
        &self,
        node: &NodeName,
        queue: &mut Queue,
        from: u64,
        delivered: u64,
        dead: Option<(u64, &OutboxEntry)>,
    ) -> Result<(), SendError> {
        let js = match queue {
            Queue::Fjall(fjall) => {
                let dead = dead.map(|(seq, _)| seq);
                if dead.is_some() {
                    fjall.settle().await;
                    self.outbox_done(node, from, delivered, dead).await;
                } else {
                    self.confirmed_on_fjall(node, delivered);
                    let (core, node) = (self.clone(), node.clone());
                    let before = fjall.cleanup.take();
                    fjall.cleanup = Some(tokio::spawn(async move {
                        if let Some(before) = before {
                            let _ = before.await;
                        }
                        core.outbox_done(&node, from, delivered, None).await;
                    }));
                }
                return Ok(());
            }
            Queue::JetStream(js) => js,
        };
        let mut upto = delivered;
        if let Some((seq, entry)) = dead.filter(|(seq, _)| *seq > delivered) {
            let op = Op::DeadLetter {
                node: node.clone(),
                seq,
                entry: entry.clone(),
            };
            self.write(op)
                .await
                .map_err(|e| SendError::Queue(e.to_string()))?;
            upto = seq;
        }
        {
            let mut health = self.fed().health();
            let h = health.entry(node.clone()).or_default();
            h.confirmed = h.confirmed.max(upto);
        }
        js.ack_confirmed(upto).await?;
        Ok(())
    }

    /// Without NATS: the peer has every event up to `delivered`, so the next
    /// batch starts after it, whether or not their removal is written yet.
    fn confirmed_on_fjall(&self, node: &NodeName, delivered: u64) {
        let mut health = self.fed().health();
        let h = health.entry(node.clone()).or_default();
        h.delivered = h.delivered.max(delivered);
    }

    /// Removes the fjall outbox entries from `from` to `delivered` (they are
    /// with the peer, or with JetStream); `dead` becomes a dead letter.
    pub(super) async fn outbox_done(
        &self,
        node: &NodeName,
        from: u64,
        delivered: u64,
        dead: Option<u64>,
    ) {
        let op = Op::OutboxDone {
            node: node.clone(),
            from,
            delivered,
            dead,
        };
        match self.write(op).await {
            Ok(_) => {
                let done = dead.unwrap_or(delivered).max(delivered);
                let mut health = self.fed().health();
                let h = health.entry(node.clone()).or_default();
                h.delivered = h.delivered.max(done);
            }
            Err(e) => {
                tracing::warn!(peer = %node, error = %e, "could not clear delivered outbox entries");
            }
        }
    }

    /// A removed peer's JetStream outbox goes with it, once its sender
    /// (`running`) has stopped.
    pub(super) async fn drop_outbox(&self, node: &NodeName, running: Arc<tokio::sync::Mutex<()>>) {
        let Some(stream) = self.fed().outbox.get() else {
            return;
        };
        let _stopped = running.lock().await;
        if let Err(e) = stream.remove(node).await {
            tracing::warn!(peer = %node, error = %e, "could not delete the peer's outbox consumer");
        }
    }

    /// Fills in `info`'s outbox depth and oldest queued age. Seqs are
    /// contiguous from the oldest queued entry to the last given out (dead
    /// letters leave from the front) but for the gaps a restore recorded
    /// (counted out), so the depth needs no scan of entries; with
    /// JetStream the oldest entry is in the stream if it has any for the peer
    /// (relayed in order), else on fjall.
    pub(super) async fn outbox_depth(
        &self,
        node: &NodeName,
        info: &mut PeerInfo,
    ) -> Result<(), CoreError> {
        let now = self.inner.clock.now_ms();
        let (after, confirmed) = self
            .fed()
            .health()
            .get(node)
            .map_or((0, 0), |h| (h.delivered, h.confirmed));
        let name = node.clone();
        let (fjall_front, (last, gaps), dead) = self
            .read(move |view| {
                let oldest = view.outbox(&name, after, 1, false)?.pop();
                let last = view.outbox_counter(&name)?;
                let dead = view.outbox(&name, 0, usize::MAX, true)?.len();
                Ok((oldest, (last, view.outbox_gaps(&name)?), dead))
            })
            .await?;
        let mut front = None;
        if let Some(stream) = self.fed().outbox.get() {
            match stream.first(node).await {
                Ok(payload) => {
                    front = payload
                        .and_then(|p| decode(&p))
                        .and_then(|entries| entries.into_iter().find(|(s, _)| *s > confirmed));
                }
                Err(e) => tracing::warn!(peer = %node, error = %e, "cannot read the outbox stream"),
            }
        }
        let front = front.or(fjall_front);
        let depth = front
            .as_ref()
            .map_or(0, |(first, _)| queued_from(*first, last, &gaps));
        info.outbox_depth = usize::try_from(depth).unwrap_or(usize::MAX);
        info.oldest_queued_age_ms = front.map(|(_, e)| now - e.queued_at);
        info.dead_letters = dead;
        Ok(())
    }

    /// A peer's dead letters (`replay`: put back in its outbox).
    pub async fn dead_letters(
        &self,
        node: &str,
        replay: bool,
    ) -> Result<Vec<serde_json::Value>, CoreError> {
        let node = NodeName::parse(node).ok_or_else(|| {
            CoreError::reject(crate::protocol::ErrorCode::NotFound, "no such peer")
        })?;
        let name = node.clone();
        let dead = self
            .read(move |view| Ok(view.outbox(&name, 0, usize::MAX, true)?))
            .await?;
        if replay
            && let Outcome::Count(n) = self.write(Op::ReplayDead { node: node.clone() }).await?
        {
            tracing::info!(peer = %node, events = n, "dead letters back in the outbox");
        }
        Ok(dead
            .into_iter()
            .map(|(seq, e)| {
                serde_json::json!({"seq": seq, "queuedAt": crate::clock::rfc3339(e.queued_at), "event": e.event})
            })
            .collect())
    }
}

/// How many seqs from `first` to `last` were given out: all of them but
/// the gaps (`from`, `to`) after `first` (a gap is never split by a queued
/// entry: nothing was given out inside it).
fn queued_from(first: u64, last: u64, gaps: &[(u64, u64)]) -> u64 {
    let skipped: u64 = gaps
        .iter()
        .filter(|(from, to)| *from >= first && *to <= last)
        .map(|(from, to)| to - from)
        .sum();
    (last + 1).saturating_sub(first).saturating_sub(skipped)
}

/// Whether a refusal is about an event (which then becomes a dead letter), not
/// about the request: an answer naming how far the batch was applied, or a
/// batch the peer cannot read at all. Anything else (signature, key, wrong
/// destination, the peer's own faults) is retried: an admin can fix it.
fn refused_event(status: u16, body: &serde_json::Value) -> bool {
    if out_of_order(status, body) {
        return false;
    }
    body.get("applied").is_some_and(serde_json::Value::is_u64) || matches!(status, 400 | 413)
}

/// Whether a refusal says the batch before it is not applied (nothing was).
fn out_of_order(status: u16, body: &serde_json::Value) -> bool {
    status == 409 && body["code"] == super::OUT_OF_ORDER
}

#[cfg(test)]
mod tests {
    use super::queued_from;

    #[test]
    fn the_depth_counts_out_the_gaps_a_restore_left() {
        // Seqs 5..=7 queued before the restore, the counter moved 7 -> 1000,
        // then 1001..=1003 given out.
        let gaps = [(7, 1000)];
        assert_eq!(queued_from(5, 1003, &gaps), 6);
        assert_eq!(queued_from(1002, 1003, &gaps), 2);
        // Nothing given out after the jump yet.
        assert_eq!(queued_from(6, 1000, &gaps), 2);
        // Two restores.
        assert_eq!(queued_from(1, 5010, &[(2, 1000), (1003, 5000)]), 2 + 3 + 10);
        assert_eq!(queued_from(3, 3, &[]), 1);
    }
}
