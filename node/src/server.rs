//! Wiring: builds the parts of a node from its [`Config`] and runs them until
//! shutdown, in one of three roles (DESIGN §1):
//! - **all-in-one** (`serve`): store, core and gateway in one process; the live hop
//!   is in-process, or JetStream with `--nats`;
//! - **core**: store and core; answers gateways over NATS, routes deliveries to
//!   them through JetStream by presence; serves peers and embedded media;
//! - **gateway**: no state; client HTTP and WebSockets, forwarded to the core.
//!
//! Every role serves two listeners: the public one (`listen`: clients, peers,
//! media, health) and the admin one (`admin.listen`: the admin API, `/metrics`,
//! health), so the admin API is never reachable where clients are.
//!
//! Every spawned task has an owner: background tasks are tracked here, client
//! sessions by the gateway's tracker. Shutdown order: stop accepting, let
//! sessions answer what they took and close with 1001, stop background tasks, let
//! the writer commit what is queued and persist the store.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth;
use crate::clock::{Clock, millis};
use crate::config::{Config, Role};
use crate::core::client::{CoreClient, Transport};
use crate::core::{Core, CoreConfig, CoreError, rpc as core_rpc};
use crate::delivery::nats::{self, JsPublisher, Nats, NatsError, NatsRole};
use crate::delivery::outbox::OutboxStream;
use crate::delivery::presence::PresenceTable;
use crate::delivery::{Hub, Presence, Publisher, rpc};
use crate::gateway::listener::{self, Serving};
use crate::gateway::web::Site;
use crate::gateway::{self, Endpoints, Gateway, Shared};
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
    #[error(transparent)]
    Nats(#[from] NatsError),
    #[error("serving: {0}")]
    Serve(std::io::Error),
}

/// The two sockets a node serves: clients, peers and media on `public`; the
/// admin API and `/metrics` on `admin`.
pub struct Listeners {
    pub public: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds `listen` and `admin.listen` of `config`.
    pub fn bind(config: &Config) -> Result<Self, NodeError> {
        let open = |addr| bind(addr).map_err(|source| NodeError::Listen { addr, source });
        Ok(Self {
            public: open(config.listen)?,
            admin: open(config.admin_listen)?,
        })
    }
}

/// Binds the configured addresses and runs the node until `shutdown`.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), NodeError> {
    let listeners = Listeners::bind(&config)?;
    run(config, listeners, shutdown).await
}

/// Binds with a deep accept queue: the default (128) overflows when hundreds of
/// clients reconnect at once, and each overflow costs a client a 1 s SYN retry.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Runs the configured role on `listeners` until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    match config.role {
        Role::All | Role::Core => run_with_store(config, listeners, shutdown).await,
        Role::Gateway => run_gateway(config, listeners, shutdown).await,
    }
}

async fn connect_nats(config: &Config) -> Result<Option<Nats>, NodeError> {
    let Some(nats_config) = &config.nats else {
        return Ok(None);
    };
    let role = match config.role {
        Role::All => "serve",
        Role::Core => "core",
        Role::Gateway => "gateway",
    };
    let name = format!("natterd-{role}-{}", config.gateway_id);
    let side = match config.role {
        Role::Gateway => NatsRole::Gateway(config.gateway_id.clone()),
        Role::All | Role::Core => NatsRole::Core,
    };
    let nats = Nats::connect(nats_config.clone(), config.node.clone(), side, &name).await?;
    tracing::info!(
        url = %nats::redact_url(&nats_config.url),
        auth = %nats_config.auth.kind(),
        tls = nats_config.tls.required || nats_config.tls.ca_file.is_some(),
        gateway = %config.gateway_id,
        "using NATS"
    );
    Ok(Some(nats))
}

async fn run_with_store(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    let (key, admin) = prepare_identity(&config)?;
    let store = open_store(&config)?;
    let clock = if config.adjustable_clock {
        tracing::warn!("testing.adjustable_clock is on: the admin API can move time forward");
        Clock::adjustable()
    } else {
        Clock::system()
    };
    let addr = listeners.public.local_addr().map_err(NodeError::Serve)?;
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let media = Media::open(
        config.media.clone(),
        identity::load_or_create_media_key(&config.data)?,
        public_url.clone(),
        clock.clone(),
    )?;

    // Background work stops after the sessions are gone, before the writer.
    let background = CancellationToken::new();
    let tasks = TaskTracker::new();
    let hub = Hub::default();
    let nats = connect_nats(&config).await?;
    let live = LiveHop::new(&config, &nats, &hub, &tasks, &background);
    let (core, writer) = Core::start(
        store,
        live.publisher,
        live.presence,
        media,
        clock,
        core_config(&config, public_url.clone()),
        key,
    )?;
    // With NATS the core's federation outboxes go through JetStream.
    let outbox = nats
        .as_ref()
        .map(|n| OutboxStream::new(n.clone(), config.federation.outbox_limits()));
    core.start_federation(&tasks, background.clone(), outbox)
        .await?;
    if let Some(nats) = &nats {
        start_nats_roles(&config, nats, &core, &hub, live.table, &tasks, &background);
    }
    tasks.spawn(sweeper(
        core.clone(),
        config.retention.sweep_interval,
        background.clone(),
    ));

    let gw = Gateway::new(Shared {
        core: CoreClient::new(
            Transport::Local(core.clone()),
            config.node.clone(),
            config.gateway_id.clone(),
        ),
        local: Some(core.clone()),
        nats,
        hub,
        ws: Arc::new(config.websocket.clone()),
        limits: config.limits.clone(),
        shutdown: shutdown.clone(),
        sessions: TaskTracker::new(),
        admin_token_hash: auth::token_hash(&admin.token),
        ready: Arc::new(AtomicBool::new(false)),
        trusted_proxies: config.trusted_proxies.clone(),
        site: Arc::new(Site::new(&config, &public_url)),
        http: config.http,
        backup: Some(backup_source(&config)),
    });
    let endpoints = Endpoints {
        clients: config.role == Role::All,
        store: true,
    };
    let served = serve_until_shutdown(&config, listeners, gw, endpoints, shutdown).await;
    background.cancel();
    tasks.close();
    tasks.wait().await;
    core.stop().await;
    writer.join().await;
    tracing::info!("stopped");
    served
}

/// Makes (on first start) or loads the data folder, the node key and the admin
/// token, and says where they are.
fn prepare_identity(
    config: &Config,
) -> Result<(identity::NodeKeys, identity::AdminToken), NodeError> {
    let new = identity::prepare_data_dir(&config.data)?;
    let (keys, key) = identity::NodeKeys::load(&config.data)?;
    let admin = identity::load_or_create_admin_token(&config.data)?;
    if new {
        tracing::info!(data = %config.data.display(), "created the data folder");
    }
    tracing::info!(
        key = %key.key_path.display(),
        public_key = %key.public_key(),
        created = key.created,
        previous_keys = keys.previous.len(),
        "node identity"
    );
    tracing::info!(
        token_file = %admin.path.display(),
        created = admin.created,
        "admin token (for the natter CLI)"
    );
    Ok((keys, admin))
}

/// Opens the store (checking its format), with the testing switches.
fn open_store(config: &Config) -> Result<Store, NodeError> {
    let store = Store::open(
        &config.data.join("store"),
        StoreOptions {
            cache_bytes: config.store.cache_bytes,
            memtable_bytes: config.store.memtable_bytes,
        },
    )?;
    if config.store_faults {
        tracing::warn!("testing.store_faults is on: the admin API can make a commit fail");
        store.allow_faults();
    }
    if config.inbox_read_gate {
        tracing::warn!("testing.inbox_read_gate is on: the admin API can hold inbox reads");
    }
    Ok(store)
}

/// The data folder, config file and embedded media folder a backup reads.
fn backup_source(config: &Config) -> crate::backup::Source {
    crate::backup::Source {
        data: config.data.clone(),
        config_file: config.config_file.clone(),
        media_root: match &config.media.backend {
            crate::media::MediaBackend::Local { root } => Some(root.clone()),
            crate::media::MediaBackend::S3(_) => None,
        },
    }
}

fn core_config(config: &Config, public_url: String) -> CoreConfig {
    CoreConfig {
        node: config.node.clone(),
        registration: config.registration,
        retention_ms: millis(config.retention.inbox),
        device_ttl_ms: millis(config.retention.device_ttl),
        sweep_step_rows: config.retention.sweep_step_rows,
        invite_ttl_ms: millis(config.retention.invite_ttl),
        max_group: config.store.max_group,
        federation: config.federation.clone(),
        public_url,
        rates: config.limits.user.clone(),
        quotas: config.limits.quotas.clone(),
        logins: config.logins.clone(),
        admin: config.admin.clone(),
        inbox_reads_in_flight: config.limits.inbox_reads_in_flight,
        inbox_read_gate: config.inbox_read_gate,
        rpc_lanes: config.limits.rpc_lanes,
        rpc_lane_commands: config.limits.rpc_lane_commands,
    }
}

/// How a process that owns the store gets deliveries to connections.
struct LiveHop {
    publisher: Publisher,
    presence: Presence,
    /// The presence table, when gateways are other processes (core role).
    table: Option<Arc<PresenceTable>>,
}

impl LiveHop {
    fn new(
        config: &Config,
        nats: &Option<Nats>,
        hub: &Hub,
        tasks: &TaskTracker,
        background: &CancellationToken,
    ) -> Self {
        let here = Presence::Local {
            hub: hub.clone(),
            gateway: config.gateway_id.clone(),
        };
        let Some(nats) = nats else {
            return Self {
                publisher: Publisher::Local(hub.clone()),
                presence: here,
                table: None,
            };
        };
        let (presence, table) = match config.role {
            Role::Core => {
                let table = Arc::new(PresenceTable::new(nats.config.heartbeat * 3));
                let presence = Presence::Table {
                    table: table.clone(),
                    nats: Box::new(nats.clone()),
                };
                (presence, Some(table))
            }
            _ => (here, None),
        };
        let publisher =
            JsPublisher::start(nats.clone(), presence.clone(), tasks, background.clone());
        Self {
            publisher: Publisher::Nats(Box::new(publisher)),
            presence,
            table,
        }
    }
}

/// What a store-owning process runs on NATS: the delivery stream, and either
/// the core's side (presence from gateways, their requests) or, all-in-one,
/// this process's own gateway link.
fn start_nats_roles(
    config: &Config,
    nats: &Nats,
    core: &Core,
    hub: &Hub,
    table: Option<Arc<PresenceTable>>,
    tasks: &TaskTracker,
    background: &CancellationToken,
) {
    let ensure = nats.clone();
    let stop = background.clone();
    tasks.spawn(async move {
        if ensure.wait_for_stream(&stop).await.is_some() {
            tracing::info!("delivery stream ready");
        }
    });
    match table {
        Some(table) => {
            nats::start_presence_listener(nats.clone(), table, tasks, background.clone());
            core_rpc::serve(nats.clone(), core.clone(), tasks, background.clone());
        }
        None => nats::start_gateway_link(
            nats.clone(),
            config.gateway_id.clone(),
            hub.clone(),
            false,
            tasks,
            background.clone(),
        ),
    }
}

async fn run_gateway(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    let nats = connect_nats(&config)
        .await?
        .ok_or(NodeError::Nats(NatsError::NotConfigured("a gateway")))?;
    let background = CancellationToken::new();
    let tasks = TaskTracker::new();
    let hub = Hub::default();
    let gateway_id = config.gateway_id.clone();
    let addr = listeners.public.local_addr().map_err(NodeError::Serve)?;
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let rpc = rpc::RpcClient::start(nats.clone(), gateway_id.clone(), &tasks, background.clone())
        .await
        .map_err(CoreError::from)?;
    nats::start_gateway_link(
        nats.clone(),
        gateway_id.clone(),
        hub.clone(),
        true,
        &tasks,
        background.clone(),
    );
    let gw = Gateway::new(Shared {
        core: CoreClient::new(Transport::Nats(rpc), config.node.clone(), gateway_id),
        local: None,
        nats: Some(nats),
        hub,
        ws: Arc::new(config.websocket.clone()),
        limits: config.limits.clone(),
        shutdown: shutdown.clone(),
        sessions: TaskTracker::new(),
        // No admin API here; nothing matches this.
        admin_token_hash: auth::token_hash(&auth::new_token()),
        ready: Arc::new(AtomicBool::new(false)),
        trusted_proxies: config.trusted_proxies.clone(),
        site: Arc::new(Site::new(&config, &public_url)),
        http: config.http,
        backup: None,
    });
    let endpoints = Endpoints {
        clients: true,
        store: false,
    };
    let served = serve_until_shutdown(&config, listeners, gw, endpoints, shutdown).await;
    background.cancel();
    tasks.close();
    tasks.wait().await;
    tracing::info!("stopped");
    served
}

/// Serves HTTP until `shutdown`, then closes the sessions (within the grace).
async fn serve_until_shutdown(
    config: &Config,
    listeners: Listeners,
    gw: Gateway,
    endpoints: Endpoints,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    let addr = listeners.public.local_addr().map_err(NodeError::Serve)?;
    let admin_addr = listeners.admin.local_addr().map_err(NodeError::Serve)?;
    tracing::info!(
        url = %format!("http://{addr}"),
        admin = %format!("http://{admin_addr}"),
        node = %config.node,
        role = ?config.role,
        registration = ?config.registration,
        "listening"
    );
    gw.ready.store(true, Ordering::Release);
    let serving = |name, nodelay| Serving {
        name,
        http: config.http,
        trusted_proxies: config.trusted_proxies.clone(),
        nodelay,
        grace: config.shutdown_grace,
    };
    let admin = tokio::spawn(listener::serve(
        listeners.admin,
        gateway::admin_router(gw.clone(), endpoints),
        serving("admin", false),
        shutdown.clone(),
    ));
    // Small frames on the public listener must not wait for the client's TCP
    // ack (`nodelay`); each request carries its peer's address, the client's
    // or its trusted proxy's (gateway::client_ip).
    // Boxed: the accept loop's future is large, and runs once.
    Box::pin(listener::serve(
        listeners.public,
        gateway::router(gw.clone(), endpoints),
        serving("public", true),
        shutdown.clone(),
    ))
    .await;
    if let Err(e) = admin.await {
        tracing::error!(error = %e, "admin listener failed");
    }
    gw.ready.store(false, Ordering::Release);
    tracing::info!("shutting down: closing sessions");
    gw.sessions.close();
    if tokio::time::timeout(config.shutdown_grace, gw.sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!("some sessions did not close within the grace period");
    }
    Ok(())
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
