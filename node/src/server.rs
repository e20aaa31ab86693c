//! Wiring: builds the parts of a node from its [`Config`] and runs them until
//! shutdown.
//!
//! Every spawned task has an owner: the sweeper is tracked here, client sessions
//! by the gateway's tracker; both stop when `shutdown` is cancelled. Shutdown
//! order: stop accepting, let sessions answer what they took and close with 1001,
//! then let the writer commit what is queued and persist the store.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth;
use crate::clock::Clock;
use crate::config::Config;
use crate::core::{Core, CoreConfig, CoreError};
use crate::delivery::Hub;
use crate::gateway::{self, Gateway};
use crate::identity::{self, IdentityError};
use crate::media::{Media, MediaError};
use crate::store::{Store, StoreError, StoreOptions};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("opening the store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error(transparent)]
    Media(#[from] MediaError),
    #[error("serving: {0}")]
    Serve(std::io::Error),
}

/// Binds the configured address and runs the node until `shutdown`.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), NodeError> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| NodeError::Listen {
            addr: config.listen,
            source,
        })?;
    run(config, listener, shutdown).await
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Runs an all-in-one node on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    let new = identity::prepare_data_dir(&config.data)?;
    let key = identity::load_or_create_key(&config.data)?;
    let admin = identity::load_or_create_admin_token(&config.data)?;
    if new {
        tracing::info!(data = %config.data.display(), "created the data folder");
    }
    tracing::info!(
        key = %key.key_path.display(),
        public_key = %key.public_key(),
        created = key.created,
        "node identity"
    );
    tracing::info!(
        token_file = %admin.path.display(),
        created = admin.created,
        "admin token (for the natter CLI)"
    );

    let store = Store::open(
        &config.data.join("store"),
        StoreOptions {
            cache_bytes: config.store.cache_bytes,
            memtable_bytes: config.store.memtable_bytes,
        },
    )?;
    let clock = if config.adjustable_clock {
        tracing::warn!("testing.adjustable_clock is on: the admin API can move time forward");
        Clock::adjustable()
    } else {
        Clock::system()
    };
    let addr = listener.local_addr().map_err(NodeError::Serve)?;
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let media = Media::open(
        config.media.clone(),
        identity::load_or_create_media_key(&config.data)?,
        public_url,
        clock.clone(),
    )?;
    let hub = Hub::default();
    let (core, writer) = Core::start(
        store,
        hub.clone(),
        media,
        clock,
        CoreConfig {
            node: config.node.clone(),
            registration: config.registration,
            retention_ms: millis(config.retention.inbox),
            device_ttl_ms: millis(config.retention.device_ttl),
            invite_ttl_ms: millis(config.retention.invite_ttl),
            max_group: config.store.max_group,
        },
    )?;
    let ready = Arc::new(AtomicBool::new(false));
    let gw = Gateway {
        core: core.clone(),
        hub,
        ws: Arc::new(config.websocket.clone()),
        limits: config.limits.clone(),
        shutdown: shutdown.clone(),
        sessions: TaskTracker::new(),
        admin_token_hash: auth::token_hash(&admin.token),
        ready: ready.clone(),
    };

    let tasks = TaskTracker::new();
    tasks.spawn(sweeper(
        core.clone(),
        config.retention.sweep_interval,
        shutdown.clone(),
    ));

    tracing::info!(
        url = %format!("http://{addr}"),
        node = %config.node,
        registration = ?config.registration,
        "listening"
    );
    ready.store(true, Ordering::Release);
    let served = axum::serve(listener, gateway::router(gw.clone()))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await;
    ready.store(false, Ordering::Release);
    tracing::info!("shutting down: closing sessions");
    gw.sessions.close();
    if tokio::time::timeout(config.shutdown_grace, gw.sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!("some sessions did not close within the grace period");
    }
    tasks.close();
    tasks.wait().await;
    core.stop().await;
    writer.join().await;
    tracing::info!("stopped");
    served.map_err(NodeError::Serve)
}

/// Runs retention and device expiry every `interval`.
async fn sweeper(core: Core, interval: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        match core.sweep().await {
            Ok(report) => tracing::info!(?report, "retention sweep"),
            Err(e) => tracing::error!(error = %e, "retention sweep failed"),
        }
    }
}
