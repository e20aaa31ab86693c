//! Request/reply between gateways and the core over NATS.
//!
//! The client multiplexes every request of a gateway on one reply subscription
//! (`_INBOX.natter.<node>.<gateway>.<nonce>.<n>`), so a request is one publish, and
//! the publish happens before [`RpcClient::call`] returns: requests of one
//! connection reach the core in the order they were made. The server takes
//! requests in arrival order and queues each command on the writer before taking
//! the next, so a connection's commands are applied in its order, as in one
//! process.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::nats::{Nats, control, next_or_cancel};
use super::presence::PresenceTable;
use super::subjects;
use crate::core::rpc::{GatewayControl, RpcError, RpcReply, RpcRequest, RpcResponse};
use crate::core::{Core, CoreError};
use crate::protocol::ErrorCode;

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Bytes>>>>;

/// A gateway's line to the core.
pub struct RpcClient {
    nats: Nats,
    gateway: String,
    inbox: String,
    next: AtomicU64,
    waiters: Waiters,
}

fn unavailable(what: impl std::fmt::Display) -> CoreError {
    CoreError::Unavailable(what.to_string())
}

impl RpcClient {
    /// Subscribes to this gateway's reply inbox and starts routing replies.
    pub async fn start(
        nats: Nats,
        gateway: String,
        tasks: &TaskTracker,
        cancel: CancellationToken,
    ) -> Result<Arc<Self>, CoreError> {
        let nonce = ulid::Ulid::new().to_string().to_ascii_lowercase();
        let inbox = subjects::reply_inbox(&nats.node, &gateway, &nonce);
        let mut sub = nats
            .client
            .subscribe(format!("{inbox}.*"))
            .await
            .map_err(unavailable)?;
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
                    let _ = waiter.send(message.payload);
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

    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    pub fn nats(&self) -> &Nats {
        &self.nats
    }

    /// Sends `request` now; the returned future waits for the answer (bounded by
    /// the request timeout).
    pub async fn call(
        self: &Arc<Self>,
        request: &RpcRequest,
    ) -> Result<impl Future<Output = Result<RpcResponse, CoreError>> + Send + 'static, CoreError>
    {
        if !self.nats.is_connected() {
            return Err(unavailable(
                "the node's message bus is unavailable; retry shortly",
            ));
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(n, tx);
        let payload =
            serde_json::to_vec(request).map_err(|e| CoreError::Internal(e.to_string()))?;
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
            return Err(unavailable(e));
        }
        let this = self.clone();
        let timeout = self.nats.config.request_timeout;
        Ok(async move {
            let answer = tokio::time::timeout(timeout, rx).await;
            let bytes = match answer {
                Ok(Ok(bytes)) => bytes,
                _ => {
                    this.forget(n);
                    return Err(unavailable(
                        "the core did not answer in time; retry shortly",
                    ));
                }
            };
            let reply: RpcReply = serde_json::from_slice(&bytes)
                .map_err(|e| CoreError::Internal(format!("bad reply from the core: {e}")))?;
            reply.map_err(|e| match e.code {
                ErrorCode::Internal => CoreError::Internal(e.message),
                ErrorCode::Unavailable => CoreError::Unavailable(e.message),
                code => CoreError::Rejected {
                    code,
                    message: e.message,
                },
            })
        })
    }

    /// Sends `request` and waits for its answer.
    pub async fn request(self: &Arc<Self>, request: &RpcRequest) -> Result<RpcResponse, CoreError> {
        self.call(request).await?.await
    }

    fn forget(&self, n: u64) {
        self.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&n);
    }
}

/// The core's side: answers gateways' requests with `core`.
pub fn start_server(
    nats: Nats,
    core: Core,
    presence: Arc<PresenceTable>,
    tasks: &TaskTracker,
    cancel: CancellationToken,
) {
    let spawner = tasks.clone();
    tasks.spawn(async move {
        let Some(mut sub) = nats.subscribe(subjects::rpc(&nats.node), &cancel).await else {
            return;
        };
        while let Some(message) = next_or_cancel(&mut sub, &cancel).await {
            let Some(reply_to) = message.reply.clone() else {
                continue;
            };
            let request: RpcRequest = match serde_json::from_slice(&message.payload) {
                Ok(request) => request,
                Err(e) => {
                    let error: RpcReply = Err(RpcError {
                        code: ErrorCode::BadRequest,
                        message: format!("unreadable request: {e}"),
                    });
                    respond(&nats, reply_to.to_string(), &error).await;
                    continue;
                }
            };
            let nats = nats.clone();
            let reply_to = reply_to.to_string();
            match request {
                // Queued on the writer now, in arrival order; answered later.
                RpcRequest::Dispatch { ctx, command } => {
                    let pending = core.dispatch(&ctx, command).await;
                    spawner.spawn(async move {
                        let reply = answer(pending.await.map(RpcResponse::Result));
                        respond(&nats, reply_to, &reply).await;
                    });
                }
                other => {
                    let core = core.clone();
                    let presence = presence.clone();
                    spawner.spawn(async move {
                        let reply = answer(handle(&nats, &core, &presence, other).await);
                        respond(&nats, reply_to, &reply).await;
                    });
                }
            }
        }
    });
}

async fn handle(
    nats: &Nats,
    core: &Core,
    presence: &PresenceTable,
    request: RpcRequest,
) -> Result<RpcResponse, CoreError> {
    Ok(match request {
        RpcRequest::Register {
            username,
            password,
            invite,
        } => RpcResponse::UserId(core.register(&username, &password, invite).await?),
        RpcRequest::Login {
            username,
            password,
            device_name,
        } => RpcResponse::Login(core.login(&username, &password, device_name).await?),
        RpcRequest::Authenticate { token } => RpcResponse::Device(core.authenticate(&token).await?),
        RpcRequest::Logout { ctx } => {
            core.logout(&ctx).await?;
            // Its connection, wherever it is, closes too.
            if let Some(gateway) = presence.gateway_of(ctx.device) {
                presence.disconnect(ctx.device, &gateway);
                control(
                    nats,
                    &gateway,
                    GatewayControl::Revoke { device: ctx.device },
                )
                .await;
            }
            RpcResponse::Done
        }
        RpcRequest::Backlog {
            device,
            after,
            limit,
        } => RpcResponse::Frames(core.backlog(device, after, limit).await?),
        RpcRequest::Pending { device, ids } => {
            RpcResponse::Frames(core.pending(device, ids).await?)
        }
        RpcRequest::SessionStart {
            device,
            gateway,
            round,
        } => {
            if let Some(previous) = presence.connect(device, &gateway, round, Instant::now()) {
                control(nats, &previous, GatewayControl::Displace { device }).await;
            }
            core.touch(device);
            RpcResponse::Done
        }
        RpcRequest::Touch { device } => {
            core.touch(device);
            RpcResponse::Done
        }
        RpcRequest::Dispatch { ctx, command } => {
            RpcResponse::Result(core.dispatch(&ctx, command).await.await?)
        }
    })
}

fn answer(result: Result<RpcResponse, CoreError>) -> RpcReply {
    result.map_err(|e| {
        if !matches!(e, CoreError::Rejected { .. }) {
            tracing::error!(error = %e, "request failed");
        }
        RpcError {
            code: e.code(),
            message: e.public_message(),
        }
    })
}

async fn respond(nats: &Nats, subject: String, reply: &RpcReply) {
    match serde_json::to_vec(reply) {
        Ok(payload) => {
            if let Err(e) = nats.client.publish(subject, payload.into()).await {
                tracing::warn!(error = %e, "could not answer a request");
            }
        }
        Err(e) => tracing::error!(error = %e, "could not encode an answer"),
    }
}
