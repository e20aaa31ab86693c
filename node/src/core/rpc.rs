//! What gateways ask the core, and what it answers: the messages of the NATS
//! request/reply boundary between a `natterd gateway` and a `natterd core`.
//!
//! **Boundary**: these are serialized (JSON) between processes that may run
//! different builds during a rolling upgrade; add variants and optional fields,
//! never change existing ones.

use serde::{Deserialize, Serialize};

use super::{DeviceCtx, Frames};
use crate::ids::{DeliveryId, DeviceId};
use crate::protocol::{Command, CommandResult, ErrorCode, LoginResponse};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum RpcRequest {
    Register {
        username: String,
        password: String,
        invite: Option<String>,
    },
    Login {
        username: String,
        password: String,
        device_name: Option<String>,
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
        gateway: String,
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
pub enum RpcResponse {
    UserId(String),
    Login(LoginResponse),
    Device(DeviceCtx),
    Result(CommandResult),
    Frames(Frames),
    Done,
}

/// A refusal or fault, as the client will see it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RpcError {
    pub code: ErrorCode,
    pub message: String,
}

pub type RpcReply = Result<RpcResponse, RpcError>;

/// Presence reports from gateways (published, not requested).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum PresenceReport {
    /// Everything connected at `gateway` now, sent periodically in `parts`
    /// messages (so a gateway with many devices stays under NATS' payload limit).
    Heartbeat {
        gateway: String,
        /// Which beat the parts belong to.
        round: u64,
        part: u32,
        parts: u32,
        devices: Vec<DeviceId>,
    },
    SessionEnd {
        gateway: String,
        device: DeviceId,
    },
}

/// Instructions from the core to one gateway.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum GatewayControl {
    /// The device connected elsewhere: close it here.
    Displace { device: DeviceId },
    /// A delivery for the device may have been lost: re-read its inbox.
    Resync { device: DeviceId },
    /// The device logged out: close its connection.
    Revoke { device: DeviceId },
}
