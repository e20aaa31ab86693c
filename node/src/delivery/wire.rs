//! The messages of the delivery fabric between processes: presence reports from
//! gateways to the core, and orders from the core to one gateway.
//!
//! **Boundary**: these are serialized (JSON) between processes that may run
//! different builds during a rolling upgrade; add variants and optional fields,
//! never change existing ones.

use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, GatewayId};

/// Presence reports from gateways (published, not requested).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub(crate) enum PresenceReport {
    /// Everything connected at `gateway` now, sent periodically in `parts`
    /// messages (so a gateway with many devices stays under NATS' payload limit).
    Heartbeat {
        gateway: GatewayId,
        /// Which beat the parts belong to.
        round: u64,
        part: u32,
        parts: u32,
        devices: Vec<DeviceId>,
    },
    SessionEnd {
        gateway: GatewayId,
        device: DeviceId,
    },
}

/// Instructions from the core to one gateway.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub(crate) enum GatewayControl {
    /// The device connected elsewhere: close it here.
    Displace { device: DeviceId },
    /// A delivery for the device may have been lost: re-read its inbox.
    Resync { device: DeviceId },
    /// The device logged out or its user was disabled: close its connection.
    Revoke { device: DeviceId },
}
