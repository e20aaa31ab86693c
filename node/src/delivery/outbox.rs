//! The federation outbox on JetStream (with `--nats`): one stream for every
//! peer's outbox, one subject and ONE durable pull consumer per peer (never one
//! per chat or per device), as DESIGN §5 asks.
//!
//! Owns the JetStream calls only; what a message holds (a chunk of outbox
//! entries, each with its outbox seq) is the core's business
//! (`core::federation::outbox`), so payloads here are opaque bytes.
//!
//! The stream is a work queue: an acked message leaves it, so the stream holds
//! exactly what peers have not confirmed, and its byte cap is a cap on the
//! backlog. When it is full, publishes fail (discard `New`, never the oldest):
//! the events then wait in fjall, where the writer queued them, until there is
//! room. Only 2.9 JetStream features are used (work-queue retention, one
//! `filter_subject` per consumer, explicit acks).

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures_util::StreamExt;

use super::nats::{Nats, NatsError};
use super::subjects;
use crate::ids::NodeName;

fn js_error<E: std::error::Error + Send + Sync + 'static>(
    what: &'static str,
) -> impl FnOnce(E) -> NatsError {
    move |source| NatsError::JetStream {
        what,
        source: Box::new(source),
    }
}

/// How long a pull or a first publish ack is waited for before it is given
/// up (and retried): JetStream answers both in milliseconds when it is there.
const QUICK: Duration = Duration::from_secs(2);

/// Limits of the outbox stream.
#[derive(Clone, Copy, Debug)]
pub struct OutboxLimits {
    /// Events older than this leave the stream unsent: set it well above
    /// `federation.dead_letter_after` (events that old become dead letters
    /// first).
    pub max_age: Duration,
    /// Cap on the stream's size: the backlog of every peer together.
    pub max_bytes: u64,
}

/// The outbox stream of this node. Cheap to clone.
#[derive(Clone)]
pub struct OutboxStream {
    nats: Nats,
    limits: OutboxLimits,
}

/// One message read from a peer's consumer, not yet acked.
pub struct Fetched {
    pub payload: Bytes,
    message: jetstream::Message,
}

impl Fetched {
    /// Removes the message from the stream (the peer has everything in it).
    pub async fn ack(&self) -> Result<(), NatsError> {
        self.message
            .ack()
            .await
            .map_err(|source| NatsError::JetStream {
                what: "acking an outbox message",
                source,
            })
    }
}

/// A peer's durable consumer.
pub struct PeerConsumer(consumer::PullConsumer);

impl PeerConsumer {
    /// Up to `max` messages waiting now, in order (returns at once when none).
    pub async fn fetch(&self, max: usize) -> Result<Vec<Fetched>, NatsError> {
        // The server answers a no-wait pull at once; a pull lost in a
        // reconnect is given up after this, not waited for.
        tokio::time::timeout(QUICK, self.fetch_now(max))
            .await
            .map_err(js_error("reading a peer's outbox (timed out)"))?
    }

    async fn fetch_now(&self, max: usize) -> Result<Vec<Fetched>, NatsError> {
        let mut batch = self
            .0
            .fetch()
            .max_messages(max)
            .expires(QUICK / 2)
            .messages()
            .await
            .map_err(js_error("reading a peer's outbox"))?;
        let mut out = Vec::new();
        while let Some(message) = batch.next().await {
            let message = message.map_err(|source| NatsError::JetStream {
                what: "reading a peer's outbox",
                source,
            })?;
            out.push(Fetched {
                payload: message.payload.clone(),
                message,
            });
        }
        Ok(out)
    }
}

impl OutboxStream {
    pub fn new(nats: Nats, limits: OutboxLimits) -> Self {
        Self { nats, limits }
    }

    /// Creates (or adopts) the outbox stream.
    async fn stream(&self) -> Result<stream::Stream, NatsError> {
        let config = stream::Config {
            name: subjects::outbox_stream_name(&self.nats.node),
            subjects: vec![subjects::outbox_all(&self.nats.node)],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::New,
            max_age: self.limits.max_age,
            max_bytes: i64::try_from(self.limits.max_bytes).unwrap_or(i64::MAX),
            duplicate_window: Duration::from_secs(120),
            description: Some("natter federation outboxes, one subject per peer".into()),
            ..Default::default()
        };
        self.nats
            .js
            .get_or_create_stream(config)
            .await
            .map_err(js_error("creating the outbox stream"))
    }

    /// Appends one message to `peer`'s outbox and waits until JetStream has
    /// stored it. `id` deduplicates a publish repeated after a crash.
    pub async fn publish(
        &self,
        peer: &NodeName,
        id: String,
        payload: Bytes,
    ) -> Result<(), NatsError> {
        let subject = subjects::outbox(&self.nats.node, peer);
        let publish = jetstream::message::PublishMessage::build()
            .payload(payload)
            .message_id(id);
        // An ack lost in a reconnect is not waited for long: the same message
        // id makes the second publish harmless if the first was stored.
        let first = async {
            match self
                .nats
                .js
                .send_publish(subject.clone(), publish.clone())
                .await
            {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            }
        };
        match tokio::time::timeout(QUICK, first).await {
            Ok(true) => Ok(()),
            // Or the stream may not exist yet (first use, or NATS lost its
            // store): make it and try once more.
            _ => {
                self.stream().await?;
                self.nats
                    .js
                    .send_publish(subject, publish)
                    .await
                    .map_err(js_error("publishing to a peer's outbox"))?
                    .await
                    .map_err(js_error("publishing to a peer's outbox"))?;
                Ok(())
            }
        }
    }

    /// `peer`'s durable consumer, made if missing. A consumer with messages
    /// handed out but not acked (a sender that stopped or crashed) is made
    /// again, so that reading starts at its oldest message: a later message
    /// must never reach the peer before an earlier one. Only the one sender
    /// of the peer calls this, before it reads.
    pub async fn consumer(&self, peer: &NodeName) -> Result<PeerConsumer, NatsError> {
        let stream = self.stream().await?;
        let name = subjects::outbox_consumer(peer);
        if let Ok(info) = stream.consumer_info(&name).await
            && info.num_ack_pending > 0
        {
            tracing::info!(%peer, pending = info.num_ack_pending, "outbox consumer restarts at its oldest message");
            stream
                .delete_consumer(&name)
                .await
                .map_err(js_error("resetting a peer's outbox consumer"))?;
        }
        let consumer = stream
            .get_or_create_consumer(
                &name,
                consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: subjects::outbox(&self.nats.node, peer),
                    // Work queues take explicit acks only.
                    ack_policy: consumer::AckPolicy::Explicit,
                    // The sender holds what it fetched until the peer has it
                    // (retrying for as long as it takes) and never reads past
                    // it, so redelivery is not what resends.
                    ack_wait: Duration::from_secs(3600),
                    max_ack_pending: 4096,
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..Default::default()
                },
            )
            .await
            .map_err(js_error("creating a peer's outbox consumer"))?;
        Ok(PeerConsumer(consumer))
    }

    /// The first message waiting in `peer`'s outbox (the oldest not acked).
    pub async fn first(&self, peer: &NodeName) -> Result<Option<Bytes>, NatsError> {
        let subject = subjects::outbox(&self.nats.node, peer);
        let first = async {
            let stream = self.stream().await?;
            Ok::<_, NatsError>(stream.get_first_raw_message_by_subject(&subject, 1).await)
        };
        // `natter peer list` does not wait long for a JetStream that is away.
        let found = tokio::time::timeout(QUICK, first)
            .await
            .map_err(js_error("reading a peer's outbox (timed out)"))??;
        match found {
            Ok(message) => Ok(Some(message.payload)),
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(js_error("reading a peer's outbox")(e)),
        }
    }

    /// The first message of `peer`'s outbox at stream sequence `from` or
    /// later, with its sequence, read without consuming it (a direct get:
    /// the peer's consumer is untouched). For backups.
    pub async fn next_from(
        &self,
        peer: &NodeName,
        from: u64,
    ) -> Result<Option<(u64, Bytes)>, NatsError> {
        let subject = subjects::outbox(&self.nats.node, peer);
        let next = async {
            let stream = self.stream().await?;
            Ok::<_, NatsError>(
                stream
                    .get_first_raw_message_by_subject(&subject, from)
                    .await,
            )
        };
        let found = tokio::time::timeout(QUICK, next)
            .await
            .map_err(js_error("reading a peer's outbox (timed out)"))??;
        match found {
            Ok(message) => Ok(Some((message.sequence, message.payload))),
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(js_error("reading a peer's outbox")(e)),
        }
    }

    /// Forgets a removed peer: its consumer and its queued messages.
    pub async fn remove(&self, peer: &NodeName) -> Result<(), NatsError> {
        let stream = self.stream().await?;
        match stream
            .delete_consumer(&subjects::outbox_consumer(peer))
            .await
        {
            Ok(_) => {}
            Err(e) if e.to_string().contains("not found") => {}
            Err(e) => return Err(js_error("deleting a peer's outbox consumer")(e)),
        }
        stream
            .purge()
            .filter(subjects::outbox(&self.nats.node, peer))
            .await
            .map_err(js_error("purging a peer's outbox"))?;
        Ok(())
    }
}
