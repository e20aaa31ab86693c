//! [`CoreClient`]: what a gateway talks to — the core in this process, or a core
//! in another process over NATS request/reply. Same operations, same errors.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::rpc::{RpcRequest, RpcResponse};
use super::{Core, CoreError, DeviceCtx, Frames};
use crate::delivery::nats;
use crate::delivery::rpc::RpcClient;
use crate::ids::{DeliveryId, DeviceId, NodeName};
use crate::protocol::{Command, CommandResult, LoginResponse};

type Pending = Pin<Box<dyn Future<Output = Result<CommandResult, CoreError>> + Send>>;

#[derive(Clone)]
pub enum CoreClient {
    Local(Core),
    Remote { rpc: Arc<RpcClient>, node: NodeName },
}

fn unexpected(response: RpcResponse) -> CoreError {
    CoreError::Internal(format!("the core answered with an unexpected {response:?}"))
}

impl CoreClient {
    pub fn node(&self) -> &NodeName {
        match self {
            Self::Local(core) => core.node(),
            Self::Remote { node, .. } => node,
        }
    }

    pub async fn register(
        &self,
        username: &str,
        password: &str,
        invite: Option<String>,
    ) -> Result<String, CoreError> {
        match self {
            Self::Local(core) => core.register(username, password, invite).await,
            Self::Remote { rpc, .. } => match rpc
                .request(&RpcRequest::Register {
                    username: username.to_owned(),
                    password: password.to_owned(),
                    invite,
                })
                .await?
            {
                RpcResponse::UserId(id) => Ok(id),
                other => Err(unexpected(other)),
            },
        }
    }

    pub async fn login(
        &self,
        username: &str,
        password: &str,
        device_name: Option<String>,
    ) -> Result<LoginResponse, CoreError> {
        match self {
            Self::Local(core) => core.login(username, password, device_name).await,
            Self::Remote { rpc, .. } => match rpc
                .request(&RpcRequest::Login {
                    username: username.to_owned(),
                    password: password.to_owned(),
                    device_name,
                })
                .await?
            {
                RpcResponse::Login(login) => Ok(login),
                other => Err(unexpected(other)),
            },
        }
    }

    pub async fn authenticate(&self, token: &str) -> Result<DeviceCtx, CoreError> {
        match self {
            Self::Local(core) => core.authenticate(token).await,
            Self::Remote { rpc, .. } => match rpc
                .request(&RpcRequest::Authenticate {
                    token: token.to_owned(),
                })
                .await?
            {
                RpcResponse::Device(ctx) => Ok(ctx),
                other => Err(unexpected(other)),
            },
        }
    }

    pub async fn logout(&self, ctx: &DeviceCtx) -> Result<(), CoreError> {
        match self {
            Self::Local(core) => core.logout(ctx).await,
            Self::Remote { rpc, .. } => {
                rpc.request(&RpcRequest::Logout { ctx: ctx.clone() })
                    .await?;
                Ok(())
            }
        }
    }

    /// Starts a command; see [`Core::dispatch`]. Commands dispatched one after
    /// another are applied in that order, in both cases.
    pub async fn dispatch(&self, ctx: &DeviceCtx, command: Command) -> Pending {
        match self {
            Self::Local(core) => core.dispatch(ctx, command).await,
            Self::Remote { rpc, .. } => {
                let call = rpc
                    .call(&RpcRequest::Dispatch {
                        ctx: ctx.clone(),
                        command,
                    })
                    .await;
                Box::pin(async move {
                    match call?.await? {
                        RpcResponse::Result(result) => Ok(result),
                        other => Err(unexpected(other)),
                    }
                })
            }
        }
    }

    pub async fn backlog(
        &self,
        device: DeviceId,
        after: DeliveryId,
        limit: usize,
    ) -> Result<Frames, CoreError> {
        match self {
            Self::Local(core) => core.backlog(device, after, limit).await,
            Self::Remote { rpc, .. } => match rpc
                .request(&RpcRequest::Backlog {
                    device,
                    after,
                    limit,
                })
                .await?
            {
                RpcResponse::Frames(frames) => Ok(frames),
                other => Err(unexpected(other)),
            },
        }
    }

    pub async fn pending(
        &self,
        device: DeviceId,
        ids: Vec<DeliveryId>,
    ) -> Result<Frames, CoreError> {
        match self {
            Self::Local(core) => core.pending(device, ids).await,
            Self::Remote { rpc, .. } => {
                match rpc.request(&RpcRequest::Pending { device, ids }).await? {
                    RpcResponse::Frames(frames) => Ok(frames),
                    other => Err(unexpected(other)),
                }
            }
        }
    }

    /// A session of `device` starts here. With a remote core, deliveries are routed
    /// to this gateway from when this returns (so the inbox read that follows
    /// misses nothing).
    pub async fn session_started(&self, device: DeviceId, round: u64) -> Result<(), CoreError> {
        match self {
            Self::Local(core) => {
                core.touch(device);
                Ok(())
            }
            Self::Remote { rpc, .. } => {
                rpc.request(&RpcRequest::SessionStart {
                    device,
                    gateway: rpc.gateway().to_owned(),
                    round,
                })
                .await?;
                Ok(())
            }
        }
    }

    pub async fn session_ended(&self, device: DeviceId) {
        match self {
            Self::Local(core) => core.touch(device),
            Self::Remote { rpc, .. } => {
                nats::session_ended(rpc.nats(), rpc.gateway(), device).await;
                if let Ok(call) = rpc.call(&RpcRequest::Touch { device }).await {
                    drop(call);
                }
            }
        }
    }

    /// Records that a device is still active (hourly while connected).
    pub async fn touch(&self, device: DeviceId) {
        match self {
            Self::Local(core) => core.touch(device),
            Self::Remote { rpc, .. } => {
                if let Ok(call) = rpc.call(&RpcRequest::Touch { device }).await {
                    drop(call);
                }
            }
        }
    }
}
