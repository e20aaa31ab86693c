//! Integration tests: the real `natterd` binary over real sockets.
//!
//! One test binary (`cargo test --test it`), one module per area.

mod support;

mod admin;
mod backup;
mod config_check;
mod connections;
mod crash;
mod delivery;
mod errors;
mod examples;
mod federation;
mod federation_media;
mod federation_outbox;
mod federation_trust;
mod http;
mod inbox_reads;
mod key_rotation;
mod lifecycle;
mod limits;
mod logins;
mod media;
mod nats_auth;
mod nats_faults;
mod read_positions;
mod upgrade;
mod web;
