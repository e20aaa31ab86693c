//! Request/reply between gateways and the core over NATS: the transport only.
//! What is asked and answered is the core's business (its `rpc` module);
//! here a request is bytes out and bytes back.
//!
//! The client multiplexes every request of a gateway on one reply subscription
//! (`_INBOX.natter.<node>.<gateway>.<nonce>.<n>`), so a request is one publish, and
//! the publish happens before [`RpcClient::call`] returns: requests of one
//! connection reach the core in the order they were made. The server takes
//! requests in arrival order and lets the handler do its in-order part (for
//! the core: putting a command in its device's lane) before taking the next;
//! the answer is awaited apart.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::nats::{Nats, next_or_cancel};
use super::subjects;
use crate::ids::GatewayId;

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Bytes, CallError>>>>>;

/// Why a request got no answer. Each means "retry shortly" to a client.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("the node's message bus is unavailable; retry shortly")]
    NotConnected,
    #[error("the request could not be sent; retry shortly")]
    Publish(#[source] async_nats::PublishError),
    #[error("the core did not answer in time; retry shortly")]
    Timeout,
    /// NATS answered for the core: nobody listens on its subject (it is not
    /// running, or restarting).
    #[error("the core is not running; retry shortly")]
    NoResponders,
    #[error("the reply inbox could not be subscribed")]
    Subscribe(#[source] async_nats::SubscribeError),
}

/// A gateway's line to the core.
pub struct RpcClient {
    nats: Nats,
    gateway: GatewayId,
    inbox: String,
    next: AtomicU64,
    waiters: Waiters,
}

impl RpcClient {
    /// Subscribes to this gateway's reply inbox and starts routing replies.
    pub async fn start(
        nats: Nats,
        gateway: GatewayId,
        tasks: &TaskTracker,
        cancel: CancellationToken,
    ) -> Result<Arc<Self>, CallError> {
        let nonce = ulid::Ulid::new().to_string().to_ascii_lowercase();
        let inbox = subjects::reply_inbox(&nats.node, &gateway, &nonce);
        let mut sub = nats
            .client
            .subscribe(format!("{inbox}.*"))
            .await
            .map_err(CallError::Subscribe)?;
        let waiters: Waiters = Arc::default();
        let routes = waiters.clone();
        tasks.spawn(async move {
            while let Some(message) = next_or_cancel(&mut sub, &cancel).await {
                let Some(n) = message
                    .subject
                    .rsplit('.')
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                else {
                    continue;
                };
                let waiter = routes.lock().unwrap_or_else(|e| e.into_inner()).remove(&n);
                if let Some(waiter) = waiter {
                    // An empty status message, not the core's answer.
                    let answer = match message.status {
                        Some(async_nats::StatusCode::NO_RESPONDERS) => Err(CallError::NoResponders),
                        _ => Ok(message.payload),
                    };
                    let _ = waiter.send(answer);
                }
            }
        });
        Ok(Arc::new(Self {
            nats,
            gateway,
            inbox,
            next: AtomicU64::new(1),
            waiters,
        }))
    }

    pub fn gateway(&self) -> &GatewayId {
        &self.gateway
    }

    pub fn nats(&self) -> &Nats {
        &self.nats
    }

    /// Sends `payload` now; the returned future waits for the answer (bounded by
    /// the request timeout).
    pub async fn call(
        self: &Arc<Self>,
        payload: Vec<u8>,
    ) -> Result<impl Future<Output = Result<Bytes, CallError>> + Send + 'static, CallError> {
        if !self.nats.is_connected() {
            return Err(CallError::NotConnected);
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(n, tx);
        let sent = self
            .nats
            .client
            .publish_with_reply(
                subjects::rpc(&self.nats.node),
                format!("{}.{n}", self.inbox),
                payload.into(),
            )
            .await;
        if let Err(e) = sent {
            self.forget(n);
            return Err(CallError::Publish(e));
        }
        let this = self.clone();
        let timeout = self.nats.config.request_timeout;
        Ok(async move {
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(answer)) => answer,
                _ => {
                    this.forget(n);
                    Err(CallError::Timeout)
                }
            }
        })
    }

    fn forget(&self, n: u64) {
        self.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&n);
    }
}

/// The server's side: every request on the node's RPC subject goes to `handle`,
/// in arrival order. `handle(payload)` does what must happen in order and
/// returns the answer's future, which runs apart; its bytes are the reply.
pub(crate) fn serve<H, Start, Answer>(
    nats: Nats,
    handle: H,
    tasks: &TaskTracker,
    cancel: CancellationToken,
) where
    H: Fn(Bytes) -> Start + Send + 'static,
    Start: Future<Output = Answer> + Send,
    Answer: Future<Output = Vec<u8>> + Send + 'static,
{
    let spawner = tasks.clone();
    tasks.spawn(async move {
        let Some(mut sub) = nats.subscribe(subjects::rpc(&nats.node), &cancel).await else {
            return;
        };
        while let Some(message) = next_or_cancel(&mut sub, &cancel).await {
            let Some(reply_to) = message.reply.clone() else {
                continue;
            };
            let answer = handle(message.payload).await;
            let nats = nats.clone();
            spawner.spawn(async move {
                let reply = answer.await;
                if let Err(e) = nats.client.publish(reply_to, reply.into()).await {
                    tracing::warn!(error = %e, "could not answer a request");
                }
            });
        }
    });
}
