//! natter: a self-hostable, federated chat node.
//!
//! The crate is the library behind the `natterd` binary; `main.rs` only parses
//! flags and calls [`server::serve`]. docs/ARCHITECTURE.md maps the modules.

pub(crate) mod auth;
pub mod clock;
pub mod config;
pub mod core;
pub(crate) mod delivery;
pub mod federation;
pub mod gateway;
pub(crate) mod identity;
pub mod ids;
pub(crate) mod media;
pub(crate) mod metrics;
pub mod protocol;
pub mod server;
pub(crate) mod store;
