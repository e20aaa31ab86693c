//! natter: a self-hostable, federated chat node.
//!
//! The crate is the library behind the `natterd` binary; `main.rs` only parses
//! flags and calls [`server::serve`]. docs/ARCHITECTURE.md maps the modules.

pub(crate) mod auth;
pub mod backup;
pub mod clock;
pub mod config;
pub mod config_check;
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

/// The store's format version (docs/ARCHITECTURE.md, "Store format"):
/// what `natterd --version` names, and for tests and recovery tools a way to
/// record a format in a closed store.
pub mod store_format {
    pub use crate::store::format::{CURRENT, stamp};
}

/// The git revision natterd was built from (`unknown` outside a git checkout,
/// e.g. from a tarball, unless `NATTER_GIT_REV` is set at build time).
pub const GIT_REVISION: &str = env!("NATTER_GIT_REV");

/// `natterd --version`: the release, the git revision and the store format.
pub fn long_version() -> &'static str {
    static VERSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "{} (git {GIT_REVISION}, store format {})",
            env!("CARGO_PKG_VERSION"),
            store::format::CURRENT
        )
    });
    &VERSION
}
