//! Federation between natter nodes (DESIGN §5). So far: the request-signing
//! layer, a pure library with no I/O and no HTTP, store or NATS types.
//!
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

pub mod digest;
pub mod error;
pub mod keys;
pub mod nonce;
pub mod rfc9421;
pub mod signing;
pub mod verify;
