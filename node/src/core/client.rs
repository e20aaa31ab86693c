//! [`CoreClient`]: what a gateway talks to — the core in this process, or a core
//! in another process over NATS request/reply. Both carry the same [`Request`]
//! to [`Core::handle`], so an operation has one path whichever way it travels.

use std::net::IpAddr;
use std::sync::Arc;

use super::rpc::{Answer, Refusal, Reply, Request, Response, answered};
use super::{Core, CoreError, DeviceCtx, Frames};
use crate::delivery::nats;
use crate::delivery::rpc::RpcClient;
use crate::ids::{DeliveryId, DeviceId, GatewayId, NodeName};
use crate::protocol::{Command, CommandResult, ErrorCode, LoginResponse};

/// How requests reach the core.
#[derive(Clone)]
pub enum Transport {
    Local(Core),
    Nats(Arc<RpcClient>),
}

/// A gateway's handle on the core. Cheap to clone.
#[derive(Clone)]
pub struct CoreClient {
    transport: Transport,
    node: NodeName,
    /// This process, as presence knows it.
    gateway: GatewayId,
}

/// The answer was of the wrong kind: a core of another build, or a bug.
fn unexpected(response: Response) -> CoreError {
    CoreError::Internal(format!("the core answered with an unexpected {response:?}"))
}

/// Takes the one variant of [`Response`] an operation answers with.
macro_rules! expect {
    ($answer:expr, $variant:path) => {
        match $answer {
            $variant(value) => Ok(value),
            other => Err(unexpected(other)),
        }
    };
}

impl CoreClient {
    pub fn new(transport: Transport, node: NodeName, gateway: GatewayId) -> Self {
        Self {
            transport,
            node,
            gateway,
        }
    }

    pub fn node(&self) -> &NodeName {
        &self.node
    }

    /// Sends `request`; see [`Core::handle`]. Requests started one after another
    /// are carried out in that order, on either transport.
    pub async fn send(&self, request: Request) -> Answer<Response> {
        match &self.transport {
            Transport::Local(core) => core.handle(request).await,
            Transport::Nats(rpc) => {
                let payload = match serde_json::to_vec(&request) {
                    Ok(payload) => payload,
                    Err(e) => return answered(Err(CoreError::Encode(e))),
                };
                match rpc.call(payload).await {
                    Ok(reply) => Box::pin(async move { decode(&reply.await?) }),
                    Err(e) => answered(Err(e.into())),
                }
            }
        }
    }

    pub async fn request(&self, request: Request) -> Result<Response, CoreError> {
        self.send(request).await.await
    }

    /// `client` is the client's address (`gateway::client_ip`).
    pub async fn register(
        &self,
        username: String,
        password: String,
        invite: Option<String>,
        client: IpAddr,
    ) -> Result<String, CoreError> {
        let request = Request::Register {
            username,
            password,
            invite,
            client: Some(client),
        };
        expect!(self.request(request).await?, Response::UserId)
    }

    /// `client` is the client's address (`gateway::client_ip`).
    pub async fn login(
        &self,
        username: String,
        password: String,
        device_name: Option<String>,
        client: IpAddr,
    ) -> Result<LoginResponse, CoreError> {
        let request = Request::Login {
            username,
            password,
            device_name,
            client: Some(client),
        };
        expect!(self.request(request).await?, Response::Login)
    }

    pub async fn authenticate(&self, token: &str) -> Result<DeviceCtx, CoreError> {
        let token = token.to_owned();
        expect!(
            self.request(Request::Authenticate { token }).await?,
            Response::Device
        )
    }

    pub async fn logout(&self, ctx: &DeviceCtx) -> Result<(), CoreError> {
        self.request(Request::Logout { ctx: ctx.clone() }).await?;
        Ok(())
    }

    /// Starts a command; the answer comes later. Commands dispatched one after
    /// another are applied in that order.
    pub async fn dispatch(&self, ctx: &DeviceCtx, command: Command) -> Answer<CommandResult> {
        let ctx = ctx.clone();
        let answer = self.send(Request::Dispatch { ctx, command }).await;
        Box::pin(async move { expect!(answer.await?, Response::Result) })
    }

    pub async fn backlog(
        &self,
        device: DeviceId,
        after: DeliveryId,
        limit: usize,
    ) -> Result<Frames, CoreError> {
        let request = Request::Backlog {
            device,
            after,
            limit,
        };
        expect!(self.request(request).await?, Response::Frames)
    }

    pub async fn pending(
        &self,
        device: DeviceId,
        ids: Vec<DeliveryId>,
    ) -> Result<Frames, CoreError> {
        let request = Request::Pending { device, ids };
        expect!(self.request(request).await?, Response::Frames)
    }

    /// A session of `device` starts here. Deliveries are routed to this process
    /// from when this returns (so the inbox read that follows misses nothing).
    pub async fn session_started(&self, device: DeviceId, round: u64) -> Result<(), CoreError> {
        let request = Request::SessionStart {
            device,
            gateway: self.gateway.clone(),
            round,
        };
        self.request(request).await?;
        Ok(())
    }

    pub async fn session_ended(&self, device: DeviceId) {
        if let Transport::Nats(rpc) = &self.transport {
            nats::session_ended(rpc.nats(), &self.gateway, device).await;
        }
        self.touch(device).await;
    }

    /// Records that a device is still active (hourly while connected). Fire and
    /// forget: the answer is not awaited.
    pub async fn touch(&self, device: DeviceId) {
        drop(self.send(Request::Touch { device }).await);
    }
}

/// A reply from a core in another process.
fn decode(bytes: &[u8]) -> Result<Response, CoreError> {
    let reply: Reply = serde_json::from_slice(bytes).map_err(CoreError::Decode)?;
    reply.map_err(
        |Refusal {
             code,
             message,
             retry_after_ms,
         }| match (code, retry_after_ms) {
            (ErrorCode::Internal, _) => CoreError::Internal(message),
            (ErrorCode::Unavailable, _) => CoreError::Unavailable(message),
            (ErrorCode::RateLimited, Some(retry_after_ms)) => CoreError::RateLimited {
                message,
                retry_after_ms,
            },
            (code, _) => CoreError::Rejected { code, message },
        },
    )
}
