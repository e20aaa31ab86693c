//! One client WebSocket session.
//!
//! Shape: a writer half that drains a bounded queue of frames onto the socket
//! (`feed` many, `flush` once, under a write timeout), and a session half that
//! reads client frames, runs commands, and moves deliveries from the inbox and the
//! live hop into that queue. Both run in the connection's task, joined by
//! `select!`.
//!
//! Delivery, per device, is driven by one cursor (the highest delivery id queued
//! on this connection) and a window of unacknowledged events:
//! - "behind" (at start, after lagging, or when the window was full): read the
//!   inbox after the cursor, as much as the window allows; a short read means
//!   caught up.
//! - caught up: live deliveries above the cursor go straight out; those at or
//!   below it were already sent from the inbox.
//!
//! Invariant: while behind, live deliveries are ignored and the inbox read happens
//! inline (no live delivery is handled during it), so every event committed before
//! the read is in the read and every later one arrives live afterwards, in order.
//! Unacknowledged events are sent again after `resend_after`, and on the next
//! connection (they are still in the inbox).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::{FuturesUnordered, SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use super::Gateway;
use crate::core::limits::{Bucket, Rate};
use crate::core::{CoreError, DeviceCtx};
use crate::delivery::{Attachment, Delivery, Push};
use crate::ids::DeliveryId;
use crate::metrics::{METRICS, wall_ms};
use crate::protocol::{
    self, ClientFrame, Command, CommandResult, ErrorCode, Reply, close, decode_client_frame,
};

/// Frames queued for the writer half.
enum Outgoing {
    Text(String),
    Ping,
    Close(u16, &'static str),
}

/// Why a session ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The client closed or the socket failed.
    Gone,
    /// A close frame was queued; let the writer flush it.
    Closed,
    /// The client could not keep up; drop the socket now.
    Slow,
}

type Answer =
    Pin<Box<dyn Future<Output = (String, &'static str, Result<CommandResult, CoreError>)> + Send>>;

pub(super) async fn run(gw: Gateway, socket: WebSocket, ctx: Option<DeviceCtx>) {
    let (mut sink, mut stream) = socket.split();
    let ctx = match ctx {
        Some(ctx) => ctx,
        // Boxed, like every rare await below: an idle session's future should not
        // be as large as the largest thing it ever waits for.
        None => match Box::pin(authenticate_by_frame(&gw, &mut stream)).await {
            Ok(ctx) => ctx,
            Err(reason) => {
                let frame = CloseFrame {
                    code: close::UNAUTHORIZED,
                    reason: Utf8Bytes::from_static(reason),
                };
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    sink.send(Message::Close(Some(frame))),
                )
                .await;
                return;
            }
        },
    };
    // A debug span: at the default level it costs nothing per connection; the
    // warnings below name the device themselves.
    let span = tracing::debug_span!("session", device = %ctx.device, user = %ctx.user_id);
    async move {
        tracing::debug!("connected");
        let (out, out_rx) = mpsc::channel(gw.ws.send_queue);
        let queued = Arc::new(AtomicUsize::new(0));
        let writer = write_loop(sink, out_rx, queued.clone(), gw.ws.write_timeout);
        tokio::pin!(writer);
        let attachment = gw.hub.attach(ctx.device);
        METRICS.sessions_opened.inc();
        let session = Session::new(gw.clone(), ctx, out, queued).run(stream, attachment);
        tokio::pin!(session);
        tokio::select! {
            () = &mut writer => {}
            end = &mut session => {
                if end == End::Slow {
                    METRICS.sessions_slow.inc();
                } else {
                    // Let the writer flush what is queued (a close frame, results).
                    let _ = tokio::time::timeout(gw.ws.write_timeout, writer).await;
                }
            }
        }
        tracing::debug!("disconnected");
    }
    .instrument(span)
    .await;
}

/// Waits for `{"type":"auth","token":…}` as the first frame.
async fn authenticate_by_frame(
    gw: &Gateway,
    stream: &mut SplitStream<WebSocket>,
) -> Result<DeviceCtx, &'static str> {
    let first = tokio::time::timeout(gw.ws.auth_timeout, async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Text(text))) => return Some(text),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                _ => return None,
            }
        }
    })
    .await
    .map_err(|_| "no auth frame in time")?
    .ok_or("expected an auth frame")?;
    match decode_client_frame(&first, gw.core.node()) {
        Ok(ClientFrame::Auth { token }) => gw
            .core
            .authenticate(&token)
            .await
            .map_err(|_| "invalid token"),
        _ => Err("expected an auth frame"),
    }
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Outgoing>,
    queued: Arc<AtomicUsize>,
    write_timeout: Duration,
) {
    // Frames written before one flush.
    const BATCH: usize = 64;
    while let Some(first) = rx.recv().await {
        let batch = async {
            let mut next = Some(first);
            let mut written = 0;
            while let Some(frame) = next.take() {
                let (message, last) = match frame {
                    Outgoing::Text(text) => {
                        queued.fetch_sub(text.len(), Ordering::Relaxed);
                        (Message::Text(text.into()), false)
                    }
                    Outgoing::Ping => (Message::Ping(Default::default()), false),
                    Outgoing::Close(code, reason) => (
                        Message::Close(Some(CloseFrame {
                            code,
                            reason: Utf8Bytes::from_static(reason),
                        })),
                        true,
                    ),
                };
                sink.feed(message).await?;
                if last {
                    sink.flush().await?;
                    return Ok::<_, axum::Error>(true);
                }
                written += 1;
                if written < BATCH {
                    next = rx.try_recv().ok();
                }
            }
            sink.flush().await?;
            Ok(false)
        };
        match tokio::time::timeout(write_timeout, batch).await {
            Ok(Ok(false)) => {}
            Ok(Ok(true)) => return,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "write failed");
                return;
            }
            Err(_) => {
                tracing::info!("write timed out; dropping a client that does not read");
                return;
            }
        }
    }
}

/// Sends a device may make on this connection: the node's token bucket
/// ([`Bucket`]), timed by the connection's own clock (milliseconds since it
/// started). Pure: the caller passes the time.
struct RateLimit {
    bucket: Bucket,
    rate: Rate,
    start: Instant,
    /// After a refused `take`: milliseconds until a token is there.
    wait_ms: u64,
}

impl RateLimit {
    /// Starts full.
    fn new(rate: f64, burst: u32, now: Instant) -> Self {
        let rate = Rate::new(rate, burst);
        Self {
            bucket: Bucket::full(rate, 0),
            rate,
            start: now,
            wait_ms: 0,
        }
    }

    /// Takes a token if one is there.
    fn take(&mut self, now: Instant) -> bool {
        let at_ms = now.saturating_duration_since(self.start).as_millis() as i64;
        match self.bucket.take(self.rate, at_ms) {
            Ok(()) => true,
            Err(wait_ms) => {
                self.wait_ms = wait_ms;
                false
            }
        }
    }

    /// After a refused `take`: milliseconds until a token is there.
    fn retry_after_ms(&self) -> u64 {
        self.wait_ms
    }
}

/// Events sent on this connection and not yet acknowledged: delivery id → when it
/// was (last) sent. Pure bookkeeping; the caller passes the time, the window
/// (`websocket.window`) and `resend_after`, which live in the gateway's shared
/// config rather than here, so this costs a session only the map.
#[derive(Default)]
struct Unacked(BTreeMap<DeliveryId, Instant>);

impl Unacked {
    /// `id` was sent (or sent again) at `now`.
    fn push(&mut self, id: DeliveryId, now: Instant) {
        self.0.insert(id, now);
    }

    /// `id` was acknowledged, or is no longer in the inbox: forget it.
    fn ack(&mut self, id: DeliveryId) {
        self.0.remove(&id);
    }

    fn is_full(&self, window: usize) -> bool {
        self.0.len() >= window
    }

    /// How many more events the window takes.
    fn room(&self, window: usize) -> usize {
        window.saturating_sub(self.0.len())
    }

    /// Up to `limit` events sent at least `resend_after` before `now`, lowest id
    /// first.
    fn due(&self, now: Instant, resend_after: Duration, limit: usize) -> Vec<DeliveryId> {
        self.0
            .iter()
            .filter(|(_, sent)| now.duration_since(**sent) >= resend_after)
            .map(|(id, _)| *id)
            .take(limit)
            .collect()
    }
}

struct Session {
    gw: Gateway,
    ctx: DeviceCtx,
    out: mpsc::Sender<Outgoing>,
    /// Bytes of text frames queued for the writer half (bounded by
    /// `websocket.send_queue_bytes`).
    queued: Arc<AtomicUsize>,
    /// Highest delivery id queued on this connection.
    cursor: DeliveryId,
    /// Live deliveries are ignored until the inbox has been read up to date.
    behind: bool,
    /// Sent, not yet acknowledged.
    unacked: Unacked,
    answers: FuturesUnordered<Answer>,
    /// `sync` commands waiting for the cursor: (request id, delivery id to reach).
    syncs: Vec<(String, DeliveryId)>,
    /// After a failed inbox read, when to try again.
    retry_read_at: Option<Instant>,
    rate: RateLimit,
    last_heard: Instant,
    last_ping: Instant,
    last_touch: Instant,
}

/// How often lastActive is refreshed while a device stays connected.
const TOUCH_EVERY: Duration = Duration::from_secs(3600);
/// Pause before reading the inbox again after a read failed.
const READ_RETRY: Duration = Duration::from_millis(500);

impl Session {
    fn new(
        gw: Gateway,
        ctx: DeviceCtx,
        out: mpsc::Sender<Outgoing>,
        queued: Arc<AtomicUsize>,
    ) -> Self {
        let now = Instant::now();
        let limits = gw.limits.clone();
        Self {
            gw,
            ctx,
            out,
            queued,
            cursor: DeliveryId(0),
            behind: true,
            unacked: Unacked::default(),
            answers: FuturesUnordered::new(),
            syncs: Vec::new(),
            retry_read_at: None,
            rate: RateLimit::new(limits.send_rate, limits.send_burst, now),
            last_heard: now,
            last_ping: now,
            last_touch: now,
        }
    }

    /// Queues a frame; `Err` when the client is too slow to take it: the queue
    /// is full in frames or in bytes.
    fn send(&self, frame: Outgoing) -> Result<(), End> {
        if let Outgoing::Text(text) = &frame {
            let before = self.queued.fetch_add(text.len(), Ordering::Relaxed);
            if before + text.len() > self.gw.ws.send_queue_bytes {
                return Err(End::Slow);
            }
        }
        self.out.try_send(frame).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => End::Slow,
            mpsc::error::TrySendError::Closed(_) => End::Gone,
        })
    }

    fn close(&self, code: u16, reason: &'static str) -> End {
        match self.out.try_send(Outgoing::Close(code, reason)) {
            Ok(()) => End::Closed,
            Err(_) => End::Slow,
        }
    }

    async fn run(mut self, mut stream: SplitStream<WebSocket>, mut live: Attachment) -> End {
        // Routed here before the first inbox read, so nothing falls between them.
        let round = self.gw.hub.presence_round();
        if let Err(e) = Box::pin(self.gw.core.session_started(self.ctx.device, round)).await {
            tracing::warn!(device = %self.ctx.device, error = %e, "cannot start the session");
            return self.close(close::TRY_AGAIN_LATER, "try again later");
        }
        let ready = Reply::Ready {
            user_id: self.ctx.user_id.clone(),
            device_id: self.ctx.device.to_string(),
            node: self.gw.core.node().to_string(),
            protocol: protocol::PROTOCOL_VERSION,
        };
        if let Err(end) = self.send(Outgoing::Text(ready.encode())) {
            return end;
        }
        let ws = self.gw.ws.clone();
        let tick_every = (ws.ping_interval.min(ws.resend_after) / 4).max(Duration::from_millis(20));
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shutdown = self.gw.shutdown.clone();
        let end = loop {
            if self.behind
                && !self.unacked.is_full(ws.window)
                && self.retry_read_at.is_none_or(|at| Instant::now() >= at)
            {
                if let Err(end) = Box::pin(self.catch_up(&live)).await {
                    break end;
                }
                continue;
            }
            // Biased: deliveries already handed to this connection go out before
            // the answer to any frame read after them.
            let step = tokio::select! {
                biased;
                () = shutdown.cancelled() => Err(Box::pin(self.finish()).await),
                push = live.rx.recv() => match push {
                    Some(Push::Deliver(delivery)) => self.on_live(delivery, &live),
                    Some(Push::Resync) => {
                        self.behind = true;
                        Ok(())
                    }
                    Some(Push::Revoked) => Err(self.close(close::UNAUTHORIZED, "logged out")),
                    None => Err(self.close(close::DISPLACED, "displaced by a newer connection")),
                },
                Some((id, kind, result)) = self.answers.next(), if !self.answers.is_empty() => {
                    self.answer(id, kind, result)
                }
                        // With `max_in_flight` commands unanswered, the next frame
                        // waits in the socket (the client feels TCP back-pressure).
                        frame = stream.next(), if self.answers.len() < ws.max_in_flight => {
                            Box::pin(self.on_frame(frame)).await
                        }
                _ = tick.tick() => Box::pin(self.on_tick()).await,
                () = tokio::time::sleep_until(self.retry_read_at.unwrap_or_else(Instant::now)),
                    if self.retry_read_at.is_some() => Ok(()),
            };
            if let Err(end) = step {
                break end;
            }
        };
        // What was sent but not acknowledged stays in the inbox for the next connection.
        drop(live);
        Box::pin(self.gw.core.session_ended(self.ctx.device)).await;
        end
    }

    /// Shutdown: answers the commands already taken, then closes with 1001.
    async fn finish(&mut self) -> End {
        let grace = self.gw.ws.write_timeout;
        let drained = tokio::time::timeout(grace, async {
            while let Some((id, kind, result)) = self.answers.next().await {
                if self.answer(id, kind, result).is_err() {
                    break;
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("shutdown: commands still running after {grace:?}");
        }
        self.close(close::GOING_AWAY, "node shutting down")
    }

    /// Reads the inbox after the cursor, as far as the window allows.
    async fn catch_up(&mut self, live: &Attachment) -> Result<(), End> {
        // Cleared before the read: anything dropped from here on is in the read.
        live.lagged.store(false, Ordering::Release);
        let room = self.unacked.room(self.gw.ws.window);
        let read = match self
            .gw
            .core
            .backlog(self.ctx.device, self.cursor, room)
            .await
        {
            Ok(read) => {
                self.retry_read_at = None;
                read
            }
            // The session has ended (its close order was lost): end it here.
            Err(e) if e.code() == ErrorCode::Unauthorized => {
                return Err(self.close(close::UNAUTHORIZED, "logged out"));
            }
            Err(e) => {
                // The core is unreachable for now (NATS away): stay connected and
                // try again shortly; the inbox keeps everything meanwhile.
                tracing::warn!(device = %self.ctx.device, error = %e, "reading the inbox failed; retrying");
                self.retry_read_at = Some(Instant::now() + READ_RETRY);
                return Ok(());
            }
        };
        if read.complete {
            self.behind = false;
        }
        let now = Instant::now();
        METRICS.events_sent.inc_by(read.frames.len() as u64);
        for (id, frame) in read.frames {
            self.send(Outgoing::Text(frame))?;
            self.cursor = id;
            self.unacked.push(id, now);
        }
        if !self.syncs.is_empty() {
            self.answer_syncs(read.complete)?;
        }
        Ok(())
    }

    fn on_live(&mut self, delivery: Delivery, live: &Attachment) -> Result<(), End> {
        if live.lagged.load(Ordering::Acquire) {
            // Some deliveries were dropped before this one: fetch them in order.
            self.behind = true;
        }
        if self.behind || delivery.id <= self.cursor {
            return Ok(());
        }
        if self.unacked.is_full(self.gw.ws.window) {
            self.behind = true;
            return Ok(());
        }
        self.send(Outgoing::Text(protocol::event_frame(
            delivery.id,
            &delivery.encoded,
        )))?;
        self.cursor = delivery.id;
        self.unacked.push(delivery.id, Instant::now());
        METRICS.events_sent.inc();
        METRICS
            .delivery_latency
            .observe((wall_ms() - delivery.created_ms).max(0) as f64 / 1000.0);
        if !self.syncs.is_empty() {
            self.answer_syncs(false)?;
        }
        Ok(())
    }

    async fn on_frame(&mut self, frame: Option<Result<Message, axum::Error>>) -> Result<(), End> {
        let message = match frame {
            None => return Err(End::Gone),
            Some(Err(e)) => {
                if is_too_big(&e) {
                    return Err(self.close(close::TOO_BIG, "frame too large"));
                }
                tracing::debug!(error = %e, "read failed");
                return Err(End::Gone);
            }
            Some(Ok(message)) => message,
        };
        self.last_heard = Instant::now();
        match message {
            Message::Text(text) => self.on_text(&text).await,
            Message::Binary(_) => self.send(Outgoing::Text(
                Reply::Error {
                    id: None,
                    code: ErrorCode::BadRequest,
                    message: "frames are JSON text".into(),
                    retry_after_ms: None,
                }
                .encode(),
            )),
            Message::Ping(_) | Message::Pong(_) => Ok(()),
            Message::Close(_) => Err(End::Gone),
        }
    }

    async fn on_text(&mut self, text: &str) -> Result<(), End> {
        let (id, command) = match decode_client_frame(text, self.gw.core.node()) {
            Ok(ClientFrame::Command { id, command }) => (id, command),
            Ok(ClientFrame::Auth { .. }) => {
                return self.error(None, ErrorCode::BadRequest, "already authenticated".into());
            }
            Err(e) => {
                METRICS.command("invalid", e.code.as_str());
                return self.error(e.id, e.code, e.message);
            }
        };
        let kind = command.kind();
        if let Command::Ack { delivery_ids } = &command {
            for delivery in delivery_ids {
                self.unacked.ack(*delivery);
            }
        }
        // The connection's own bucket: a cheap first line that refuses a
        // flood here, before it costs a trip to the core (which holds the
        // per-user limits, across connections and gateways).
        if let Command::SendMessage { .. } = &command
            && !self.rate.take(Instant::now())
        {
            METRICS.command(kind, ErrorCode::RateLimited.as_str());
            let refusal = CoreError::RateLimited {
                message: "sending too fast on this connection; slow down".into(),
                retry_after_ms: self.rate.retry_after_ms(),
            };
            return self.refuse(id, &refusal);
        }
        // Queued now, in frame order; answered whenever it completes.
        let pending = self.gw.core.dispatch(&self.ctx, command).await;
        if let Some(id) = id {
            self.answers
                .push(Box::pin(async move { (id, kind, pending.await) }));
        }
        Ok(())
    }

    fn answer(
        &mut self,
        id: String,
        kind: &'static str,
        result: Result<CommandResult, CoreError>,
    ) -> Result<(), End> {
        match result {
            Ok(CommandResult::Synced { up_to }) => {
                METRICS.command(kind, "ok");
                let target = DeliveryId::parse(&up_to).unwrap_or(DeliveryId(0));
                self.syncs.push((id, target));
                if target > self.cursor {
                    // Read the inbox: it holds everything up to the target.
                    self.behind = true;
                }
                self.answer_syncs(false)
            }
            Ok(result) => {
                METRICS.command(kind, "ok");
                self.send(Outgoing::Text(Reply::Result { id, result }.encode()))
            }
            Err(e) => {
                METRICS.command(kind, e.code().as_str());
                if !e.is_refusal() {
                    tracing::error!(device = %self.ctx.device, request_id = %id, command = kind, error = %e, "command failed");
                }
                self.refuse(Some(id), &e)?;
                // The device has logged out or its user is disabled (the order
                // to close was lost): the session ends here, as that order would.
                if e.code() == ErrorCode::Unauthorized {
                    return Err(self.close(close::UNAUTHORIZED, "logged out"));
                }
                Ok(())
            }
        }
    }

    /// Answers the `sync`s whose events have all been sent: those the cursor has
    /// reached, or all of them once an inbox read found nothing more (`caught_up`;
    /// a target may have left the inbox by retention before it was sent).
    fn answer_syncs(&mut self, caught_up: bool) -> Result<(), End> {
        let cursor = self.cursor;
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.syncs)
            .into_iter()
            .partition(|(_, target)| caught_up || *target <= cursor);
        self.syncs = waiting;
        for (id, target) in done {
            let result = CommandResult::Synced {
                up_to: target.to_string(),
            };
            self.send(Outgoing::Text(Reply::Result { id, result }.encode()))?;
        }
        Ok(())
    }

    fn error(&self, id: Option<String>, code: ErrorCode, message: String) -> Result<(), End> {
        let retry_after_ms = None;
        let reply = Reply::Error {
            id,
            code,
            message,
            retry_after_ms,
        };
        self.send(Outgoing::Text(reply.encode()))
    }

    /// A command's refusal or fault, as the client sees it.
    fn refuse(&self, id: Option<String>, e: &CoreError) -> Result<(), End> {
        let reply = Reply::Error {
            id,
            code: e.code(),
            message: e.public_message(),
            retry_after_ms: e.retry_after_ms(),
        };
        self.send(Outgoing::Text(reply.encode()))
    }

    async fn on_tick(&mut self) -> Result<(), End> {
        let now = Instant::now();
        let ws = self.gw.ws.clone();
        if now.duration_since(self.last_heard) > ws.ping_timeout {
            tracing::info!(device = %self.ctx.device, "no sign of life from the client; closing");
            return Err(End::Slow);
        }
        if now.duration_since(self.last_ping) >= ws.ping_interval {
            self.last_ping = now;
            self.send(Outgoing::Ping)?;
        }
        if now.duration_since(self.last_touch) >= TOUCH_EVERY {
            self.last_touch = now;
            self.gw.core.touch(self.ctx.device).await;
        }
        let due = self.unacked.due(now, ws.resend_after, ws.window);
        if due.is_empty() {
            return Ok(());
        }
        let frames = match self.gw.core.pending(self.ctx.device, due.clone()).await {
            Ok(read) => read.frames,
            Err(e) if e.code() == ErrorCode::Unauthorized => {
                return Err(self.close(close::UNAUTHORIZED, "logged out"));
            }
            Err(e) => {
                tracing::error!(device = %self.ctx.device, error = %e, "reading the inbox for resends failed");
                return Ok(());
            }
        };
        // What is no longer in the inbox was acknowledged (or expired): forget it.
        for id in &due {
            self.unacked.ack(*id);
        }
        let now = Instant::now();
        METRICS.events_sent.inc_by(frames.len() as u64);
        for (id, frame) in frames {
            self.send(Outgoing::Text(frame))?;
            self.unacked.push(id, now);
        }
        Ok(())
    }
}

/// Whether a read failed because a frame was over the size limit.
fn is_too_big(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(tungstenite::Error::Capacity(_)) = err.downcast_ref::<tungstenite::Error>() {
            return true;
        }
        source = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn ids(list: &[u64]) -> Vec<DeliveryId> {
        list.iter().copied().map(DeliveryId).collect()
    }

    #[test]
    fn the_bucket_allows_a_burst_then_refuses() {
        let t0 = Instant::now();
        let mut rate = RateLimit::new(4.0, 3, t0);
        assert!(rate.take(t0));
        assert!(rate.take(t0));
        assert!(rate.take(t0));
        assert!(!rate.take(t0), "the burst is spent");
    }

    #[test]
    fn the_bucket_refills_at_the_rate_and_a_refusal_costs_nothing() {
        let t0 = Instant::now();
        let mut rate = RateLimit::new(4.0, 1, t0);
        assert!(rate.take(t0));
        // Half a token after 125 ms at 4/s: refused, and the half is kept.
        assert!(!rate.take(t0 + ms(125)));
        assert_eq!(rate.retry_after_ms(), 125, "the other half comes in 125 ms");
        assert!(rate.take(t0 + ms(250)), "one token after 250 ms");
        assert!(!rate.take(t0 + ms(250)));
    }

    #[test]
    fn the_bucket_holds_at_most_the_burst() {
        let t0 = Instant::now();
        let mut rate = RateLimit::new(4.0, 2, t0);
        assert!(rate.take(t0));
        assert!(rate.take(t0));
        let later = t0 + Duration::from_secs(3600);
        assert!(rate.take(later));
        assert!(rate.take(later));
        assert!(
            !rate.take(later),
            "an hour idle still refills only the burst"
        );
    }

    #[test]
    fn unacked_events_are_due_after_resend_after() {
        let resend_after = Duration::from_secs(30);
        let t0 = Instant::now();
        let mut unacked = Unacked::default();
        unacked.push(DeliveryId(1), t0);
        unacked.push(DeliveryId(2), t0 + Duration::from_secs(10));
        assert_eq!(unacked.due(t0 + ms(29_999), resend_after, 512), ids(&[]));
        assert_eq!(unacked.due(t0 + resend_after, resend_after, 512), ids(&[1]));
        assert_eq!(
            unacked.due(t0 + Duration::from_secs(40), resend_after, 512),
            ids(&[1, 2])
        );
    }

    #[test]
    fn acknowledged_events_are_not_resent() {
        let resend_after = Duration::from_secs(30);
        let t0 = Instant::now();
        let mut unacked = Unacked::default();
        for id in 1..=3 {
            unacked.push(DeliveryId(id), t0);
        }
        unacked.ack(DeliveryId(2));
        // An id never sent here (a stale or foreign ack) changes nothing.
        unacked.ack(DeliveryId(7));
        assert_eq!(
            unacked.due(t0 + resend_after, resend_after, 512),
            ids(&[1, 3])
        );
        assert_eq!(unacked.room(5), 3);
    }

    #[test]
    fn a_resent_event_waits_resend_after_again() {
        let resend_after = Duration::from_secs(30);
        let t0 = Instant::now();
        let mut unacked = Unacked::default();
        unacked.push(DeliveryId(1), t0);
        let t1 = t0 + resend_after;
        assert_eq!(unacked.due(t1, resend_after, 512), ids(&[1]));
        // What the session's tick does with a resend: forget, then push again.
        unacked.ack(DeliveryId(1));
        unacked.push(DeliveryId(1), t1);
        assert_eq!(unacked.due(t1 + ms(29_999), resend_after, 512), ids(&[]));
        assert_eq!(unacked.due(t1 + resend_after, resend_after, 512), ids(&[1]));
    }

    #[test]
    fn due_lists_the_lowest_ids_first_up_to_the_limit() {
        let resend_after = Duration::from_secs(30);
        let t0 = Instant::now();
        let mut unacked = Unacked::default();
        // Resends go out of id order; `due` does not follow the send order.
        for id in [5, 3, 9] {
            unacked.push(DeliveryId(id), t0);
        }
        assert_eq!(
            unacked.due(t0 + resend_after, resend_after, 2),
            ids(&[3, 5])
        );
    }

    #[test]
    fn the_window_fills_and_acks_free_it() {
        let window = 3;
        let t0 = Instant::now();
        let mut unacked = Unacked::default();
        assert_eq!(unacked.room(window), 3);
        unacked.push(DeliveryId(1), t0);
        // Sending an event again does not take a second place.
        unacked.push(DeliveryId(1), t0 + ms(10));
        assert_eq!(unacked.room(window), 2);
        unacked.push(DeliveryId(2), t0);
        assert!(!unacked.is_full(window));
        unacked.push(DeliveryId(3), t0);
        assert!(unacked.is_full(window));
        assert_eq!(unacked.room(window), 0);
        unacked.ack(DeliveryId(2));
        assert!(!unacked.is_full(window));
        assert_eq!(unacked.room(window), 1);
    }
}
