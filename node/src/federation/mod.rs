//! Federation between natter nodes (DESIGN §5): what nodes say to each other
//! and how it is signed. The rules (who may send which event, applying them,
//! the outboxes) are the core's (`core::federation`, `core::writer`); here is
//! the wire format, the signing layer (a pure library: no I/O, no clock reads)
//! and the signed HTTP client.
//!
//! - [`events`]: the federation wire format (events from a chat's home,
//!   actions for it).
//! - [`client`]: [`client::PeerClient`], signed requests to peers.
//! - [`Wakers`]: one wake-up signal per peer's outbox sender.
//! - [`rfc9421`]: HTTP Message Signatures in general: component values, the
//!   signature base, the `Signature-Input` and `Signature` fields.
//! - [`digest`]: `Content-Digest` with sha-256 (RFC 9530).
//! - [`signing`]: natter's profile of RFC 9421: what a node signs and how a
//!   signature is read back and checked against a key.
//! - [`keys`]: a peer's keys with their validity windows, and how the verifier
//!   looks them up.
//! - [`nonce`]: the bounded replay cache.
//! - [`verify`]: the [`verify::Verifier`] that runs every check in the order
//!   docs/federation.md gives.
//! - [`error`]: why a request was refused, with its stable code and status.
//!
//! Time is always passed in (`now_ms`, from [`crate::clock::Clock`]) and nonces
//! are made by the caller, so every function here is deterministic.

pub mod client;
pub mod digest;
pub mod error;
pub mod events;
pub mod keys;
pub mod nonce;
pub mod rfc9421;
pub mod signing;
pub mod verify;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::ids::NodeName;

/// One wake-up signal per peer: the writer rings it after committing events
/// for the peer, and an inbound request from the peer rings it too (a peer that
/// talks to us is up: retry now). Cheap to clone.
#[derive(Clone, Default)]
pub struct Wakers(Arc<Mutex<HashMap<NodeName, Arc<Notify>>>>);

impl Wakers {
    /// The signal of `node`'s outbox sender.
    pub fn of(&self, node: &NodeName) -> Arc<Notify> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(node.clone())
            .or_default()
            .clone()
    }

    pub fn wake(&self, node: &NodeName) {
        self.of(node).notify_one();
    }
}
