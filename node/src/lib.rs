//! natter: a self-hostable, federated chat node.
//!
//! The crate is the library behind the `natterd` binary; `main.rs` only parses
//! flags and calls [`server::serve`]. docs/ARCHITECTURE.md maps the modules.

pub mod auth;
pub mod clock;
pub mod config;
pub mod core;
pub mod delivery;
pub mod federation;
pub mod gateway;
pub mod identity;
pub mod ids;
pub mod media;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod store;
