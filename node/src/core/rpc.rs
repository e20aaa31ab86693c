//! The operations of the core, as one type: [`Request`] is the single
//! description of everything a gateway may ask the core, and [`Core::handle`] the
//! single place that carries one out. The gateway's [`CoreClient`] sends a
//! `Request` to a core in this process (a call) or in another (NATS
//! request/reply, served by [`serve`]); both end in `Core::handle`.
//!
//! Adding an operation: a `Request` variant, its arm in `Core::handle`, and, when
//! gateways call it often, a typed method on [`CoreClient`].
//!
//! **Boundary**: `Request`, `Response` and `Refusal` are serialized (JSON)
//! between processes that may run different builds during a rolling upgrade;
//! add variants and optional fields, never change existing ones.
//!
//! [`CoreClient`]: super::client::CoreClient

use std::future::{Future, ready};
use std::net::IpAddr;
use std::pin::Pin;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::rpc_lanes::RpcLanes;
use super::{Core, CoreError, DeviceCtx, Frames};
use crate::delivery::nats::Nats;
use crate::delivery::rpc;
use crate::ids::{DeliveryId, DeviceId, GatewayId, NodeName};
use crate::protocol::{self, Command, CommandResult, ErrorCode, LoginResponse};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum Request {
    Register {
        username: String,
        password: String,
        invite: Option<String>,
        /// The client's address, as the gateway worked it out (added later:
        /// optional; without it the per-address limits cannot apply).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<IpAddr>,
    },
    Login {
        username: String,
        password: String,
        device_name: Option<String>,
        /// As for `Register`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<IpAddr>,
    },
    Authenticate {
        token: String,
    },
    Logout {
        ctx: DeviceCtx,
    },
    Dispatch {
        ctx: DeviceCtx,
        command: Command,
    },
    Backlog {
        device: DeviceId,
        after: DeliveryId,
        limit: usize,
    },
    Pending {
        device: DeviceId,
        ids: Vec<DeliveryId>,
    },
    /// A device connected at a gateway: the core routes its deliveries there from
    /// now on (and displaces a connection at another gateway).
    SessionStart {
        device: DeviceId,
        gateway: GatewayId,
        /// The gateway's presence round when the device attached.
        #[serde(default)]
        round: u64,
    },
    Touch {
        device: DeviceId,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Response {
    UserId(String),
    Login(LoginResponse),
    Device(DeviceCtx),
    Result(CommandResult),
    Frames(Frames),
    Done,
}

/// A refusal or fault, as the client will see it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
    /// With `rate_limited`: when a retry may succeed (added later: optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// What travels back over NATS.
pub type Reply = Result<Response, Refusal>;

/// An answer to come.
pub type Answer<T> = Pin<Box<dyn Future<Output = Result<T, CoreError>> + Send>>;

/// An answer that is already known.
pub fn answered<T: Send + 'static>(result: Result<T, CoreError>) -> Answer<T> {
    Box::pin(ready(result))
}

impl Core {
    /// Carries out `request`. What must happen in the caller's order (a command
    /// queued on the writer) has happened when this returns; the returned future
    /// gives the answer. Everything else runs inside the returned future, so a
    /// slow request (a password hash) never holds up the next one.
    pub async fn handle(&self, request: Request) -> Answer<Response> {
        match request {
            Request::Dispatch { ctx, command } => {
                let pending = self.dispatch(&ctx, command).await;
                return Box::pin(async move { pending.await.map(Response::Result) });
            }
            // Fire and forget: callers need not poll the answer.
            Request::Touch { device } => {
                self.touch(device);
                return answered(Ok(Response::Done));
            }
            _ => {}
        }
        let core = self.clone();
        Box::pin(async move { core.answer(request).await })
    }

    async fn answer(&self, request: Request) -> Result<Response, CoreError> {
        Ok(match request {
            Request::Register {
                username,
                password,
                invite,
                client,
            } => Response::UserId(self.register(&username, &password, invite, client).await?),
            Request::Login {
                username,
                password,
                device_name,
                client,
            } => Response::Login(
                self.login(&username, &password, device_name, client)
                    .await?,
            ),
            Request::Authenticate { token } => Response::Device(self.authenticate(&token).await?),
            Request::Logout { ctx } => {
                self.logout(&ctx).await?;
                Response::Done
            }
            Request::Dispatch { ctx, command } => {
                Response::Result(self.dispatch(&ctx, command).await.await?)
            }
            Request::Backlog {
                device,
                after,
                limit,
            } => Response::Frames(self.backlog(device, after, limit).await?),
            Request::Pending { device, ids } => Response::Frames(self.pending(device, ids).await?),
            Request::SessionStart {
                device,
                gateway,
                round,
            } => {
                self.session_started(device, &gateway, round).await;
                Response::Done
            }
            Request::Touch { device } => {
                self.touch(device);
                Response::Done
            }
        })
    }
}

/// The most inbox entries one `Backlog` request reads (a gateway asks for at
/// most its window; a larger ask is served in parts, marked incomplete).
pub const MAX_BACKLOG_READ: usize = 10_000;

impl Request {
    /// What a request from another process must pass before the core acts on
    /// it: a command meets the same decoder and limits as a client frame
    /// ([`protocol::recheck_command`]), and inbox reads are bounded. A
    /// gateway's NATS credentials therefore buy nothing a WebSocket client
    /// could not do. (Account requests are checked by the core itself.)
    pub fn recheck(self, local: &NodeName) -> Result<Self, CoreError> {
        Ok(match self {
            Request::Dispatch { ctx, command } => Request::Dispatch {
                ctx,
                command: protocol::recheck_command(&command, local)
                    .map_err(|e| CoreError::reject(e.code, e.message))?,
            },
            Request::Backlog {
                device,
                after,
                limit,
            } => Request::Backlog {
                device,
                after,
                limit: limit.min(MAX_BACKLOG_READ),
            },
            other => other,
        })
    }
}

/// What a core error looks like on the wire.
pub fn refusal(e: &CoreError) -> Refusal {
    Refusal {
        code: e.code(),
        message: e.public_message(),
        retry_after_ms: e.retry_after_ms(),
    }
}

/// The core's side of the NATS request/reply: answers gateways with `core`.
/// Commands go to their device's lane ([`RpcLanes`]): the loop only queues
/// them, so a command that waits (on the object store) holds up its own
/// device's later commands and nobody else's.
pub fn serve(nats: Nats, core: Core, tasks: &TaskTracker, cancel: CancellationToken) {
    let lanes = RpcLanes::new(core.clone());
    // The handler's future yields the answer's future on purpose: the first part
    // runs in arrival order, the second apart (see `rpc::serve`).
    #[allow(clippy::async_yields_async)]
    rpc::serve(
        nats,
        move |payload: Bytes| {
            let core = core.clone();
            let lanes = lanes.clone();
            async move {
                let request = serde_json::from_slice::<Request>(&payload)
                    .map_err(|e| {
                        CoreError::reject(ErrorCode::BadRequest, format!("unreadable request: {e}"))
                    })
                    .and_then(|request| request.recheck(core.node()));
                let answer = match request {
                    Ok(Request::Dispatch { ctx, command }) => {
                        let device = ctx.device;
                        lanes.submit(device, Request::Dispatch { ctx, command })
                    }
                    Ok(request) => core.handle(request).await,
                    Err(e) => answered(Err(e)),
                };
                async move {
                    let reply: Reply = answer.await.map_err(|e| {
                        if !e.is_refusal() {
                            tracing::error!(error = %e, "request failed");
                        }
                        refusal(&e)
                    });
                    // A reply is plain data: encoding it cannot fail.
                    serde_json::to_vec(&reply).unwrap_or_default()
                }
            }
        },
        tasks,
        cancel,
    );
}
