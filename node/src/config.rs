//! Configuration: the only place that reads files, environment variables and
//! flags.
//!
//! Precedence: command-line flag, then `NATTER_*` environment variable (clap reads
//! both), then the TOML file given by `--config`, then the built-in default. The
//! raw inputs are validated once into [`Config`]; nothing downstream sees a raw
//! string. docs/configuration.md lists every setting.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

use crate::core::Registration;
use crate::core::federation::FederationConfig;
use crate::core::limits::{Quotas, Rate, UserRateConfig};
use crate::core::login_limits::LoginLimitsConfig;
use crate::delivery::nats::{NatsAuth, NatsConfig, NatsTls, Secret};
use crate::gateway::client_ip::TrustedProxies;
use crate::gateway::listener::HttpConfig;
use crate::ids::{GatewayId, NodeName};
use crate::media::{MediaBackend, MediaConfig, S3Config};

#[derive(Debug, Parser)]
#[command(
    name = "natterd",
    version = crate::long_version(),
    about = "natter: a self-hostable, federated chat node"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: CliCommand,
}

#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Run the all-in-one node: gateway and core in one process. With --nats,
    /// deliveries go over NATS JetStream.
    Serve(ServeArgs),
    /// Run the core: owns the store, answers gateways over NATS (needs --nats).
    /// Serves peers and embedded media on --listen (default 127.0.0.1:7072), the
    /// admin API on --admin-listen (default 127.0.0.1:7071).
    Core(ServeArgs),
    /// Run a stateless gateway: client WebSockets and HTTP, forwarded to the core
    /// over NATS (needs --nats).
    Gateway(ServeArgs),
    /// Work with the configuration without running a node.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Restore a backup (`natter backup create`) into a new or empty data
    /// folder, checking it as it is read; opens nothing else. Exits 1 with the
    /// reason, leaving the folder as it was, when the backup is damaged.
    Restore(RestoreArgs),
}

#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// The backup file.
    pub file: PathBuf,
    /// The data folder to restore into: missing or empty.
    #[arg(long)]
    pub data: PathBuf,
    /// Print what was restored as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration (file, environment, flags) and print the
    /// effective settings, secrets redacted, each with where it came from.
    /// Exits 1 with the reason when it is not valid. Opens nothing else.
    Check(CheckArgs),
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// The role whose settings to check (their defaults differ).
    #[arg(long, value_enum, default_value_t = CheckRole::Serve)]
    pub role: CheckRole,
    #[command(flatten)]
    pub args: ServeArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CheckRole {
    Serve,
    Core,
    Gateway,
}

impl CheckRole {
    pub fn role(self) -> Role {
        match self {
            Self::Serve => Role::All,
            Self::Core => Role::Core,
            Self::Gateway => Role::Gateway,
        }
    }
}

impl CliCommand {
    /// The role to run and its arguments; `None` for `config` commands.
    pub fn into_parts(self) -> Option<(Role, ServeArgs)> {
        match self {
            Self::Serve(args) => Some((Role::All, args)),
            Self::Core(args) => Some((Role::Core, args)),
            Self::Gateway(args) => Some((Role::Gateway, args)),
            Self::Config(_) | Self::Restore(_) => None,
        }
    }
}

/// What a `natterd` process is (DESIGN §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Gateway and core in one process.
    All,
    Core,
    Gateway,
}

#[derive(Debug, Default, Clone, Args)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "NATTER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data folder: store, node key, admin token, media. Default ./natter-data
    #[arg(long, env = "NATTER_DATA")]
    pub data: Option<PathBuf>,
    /// Address to listen on for clients, peers and media. Default 127.0.0.1:7070
    /// (127.0.0.1:7072 for `core`)
    #[arg(long, env = "NATTER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Address of the admin API and /metrics, never served on --listen.
    /// Default 127.0.0.1:7071 (`serve`, `core`), 127.0.0.1:0 (`gateway`: a free port)
    #[arg(long, env = "NATTER_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// The node's name (DNS-like); users are name@node. Default localhost
    #[arg(long, env = "NATTER_NAME")]
    pub name: Option<String>,
    /// Who may register: open, invite or closed. Default invite
    #[arg(long, env = "NATTER_REGISTRATION")]
    pub registration: Option<Registration>,
    /// Log format. Default human
    #[arg(long, env = "NATTER_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// How long undelivered events wait for a device, e.g. 30d. Default 30d
    #[arg(long, env = "NATTER_RETENTION")]
    pub retention: Option<humantime::Duration>,
    /// Devices unused this long are deactivated, e.g. 90d. Default 90d
    #[arg(long, env = "NATTER_DEVICE_TTL")]
    pub device_ttl: Option<humantime::Duration>,
    /// Where attachments go: `local` (under the data folder) or `s3://bucket/prefix`
    /// (endpoint and credentials in [media.s3]). Default local
    #[arg(long, env = "NATTER_MEDIA")]
    pub media: Option<String>,
    /// Base URL clients use to reach this node, for embedded-mode media URLs.
    /// Default http://<listen address>
    #[arg(long, env = "NATTER_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// NATS server URL, e.g. nats://127.0.0.1:4222. Required for core and gateway.
    #[arg(long, env = "NATTER_NATS")]
    pub nats: Option<String>,
    /// This gateway's id on NATS (1-32 of a-z 0-9 -). Default: random per start
    #[arg(long, env = "NATTER_GATEWAY_ID")]
    pub gateway_id: Option<String>,
    /// Reverse proxies (addresses or CIDRs, comma-separated) whose Forwarded /
    /// X-Forwarded-For header names the client. Default: none
    #[arg(long, env = "NATTER_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,
    #[command(flatten)]
    pub nats_auth: NatsArgs,
}

/// How natterd proves itself to NATS, and TLS (docs/configuration.md, "NATS
/// credentials"). At most one of user/password, token, nkey, creds. Secrets are
/// better given by environment or file than by flag (flags show in `ps`).
#[derive(Debug, Default, Clone, Args)]
pub struct NatsArgs {
    /// NATS user name (with --nats-password)
    #[arg(long, env = "NATTER_NATS_USER")]
    pub nats_user: Option<String>,
    /// NATS password (with --nats-user)
    #[arg(long, env = "NATTER_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// NATS authentication token
    #[arg(long, env = "NATTER_NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,
    /// File holding a NATS user nkey seed (SU…)
    #[arg(long, env = "NATTER_NATS_NKEY_FILE")]
    pub nats_nkey_file: Option<PathBuf>,
    /// NATS credentials file (.creds: user JWT and nkey seed)
    #[arg(long, env = "NATTER_NATS_CREDS_FILE")]
    pub nats_creds_file: Option<PathBuf>,
    /// CA certificate(s) (PEM) to trust for the NATS server's TLS certificate
    #[arg(long, env = "NATTER_NATS_TLS_CA")]
    pub nats_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for NATS servers that verify clients (with --nats-tls-key)
    #[arg(long, env = "NATTER_NATS_TLS_CERT")]
    pub nats_tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM)
    #[arg(long, env = "NATTER_NATS_TLS_KEY")]
    pub nats_tls_key: Option<PathBuf>,
    /// Refuse a NATS server that does not offer TLS. Default false
    #[arg(long, env = "NATTER_NATS_TLS_REQUIRED", num_args = 0..=1, default_missing_value = "true")]
    pub nats_tls_required: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

// ----------------------------------------------------------- file shape

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data: Option<PathBuf>,
    listen: Option<SocketAddr>,
    name: Option<String>,
    registration: Option<Registration>,
    #[serde(default)]
    log: FileLog,
    #[serde(default)]
    retention: FileRetention,
    #[serde(default)]
    websocket: FileWebsocket,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    store: FileStore,
    #[serde(default)]
    testing: FileTesting,
    #[serde(default)]
    media: FileMedia,
    public_url: Option<String>,
    #[serde(default)]
    nats: FileNats,
    gateway_id: Option<String>,
    #[serde(default, with = "humantime_serde")]
    shutdown_grace: Option<Duration>,
    #[serde(default)]
    federation: FileFederation,
    #[serde(default)]
    admin: FileAdmin,
    trusted_proxies: Option<Vec<String>>,
    #[serde(default)]
    logins: FileLogins,
    #[serde(default)]
    web: FileWeb,
    #[serde(default)]
    http: FileHttp,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWeb {
    enabled: Option<bool>,
    media_origin: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHttp {
    #[serde(default, with = "humantime_serde")]
    header_read_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    body_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    upload_timeout: Option<Duration>,
    max_connections: Option<usize>,
    max_connections_per_address: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAdmin {
    listen: Option<SocketAddr>,
    inbox_count_cap: Option<usize>,
    stats_inbox_scan: Option<usize>,
    max_chat_page: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLogins {
    attempt_rate: Option<f64>,
    attempt_burst: Option<u32>,
    free_failures: Option<u32>,
    free_failures_per_address: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    delay: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    max_delay: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    forget_after: Option<Duration>,
    max_records: Option<usize>,
    max_addresses: Option<usize>,
    ipv6_prefix: Option<u8>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFederation {
    #[serde(default, with = "humantime_serde")]
    request_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    dead_letter_after: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    max_backoff: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    key_overlap: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    outbox_stream_max_age: Option<Duration>,
    outbox_stream_max_mb: Option<u64>,
    max_actions_in_flight: Option<usize>,
    max_batches_in_flight: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLog {
    format: Option<LogFormat>,
    filter: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRetention {
    #[serde(default, with = "humantime_serde")]
    inbox: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    device_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    sweep_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    invite_ttl: Option<Duration>,
    sweep_step_rows: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWebsocket {
    #[serde(default, with = "humantime_serde")]
    ping_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    ping_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    auth_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    resend_after: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    write_timeout: Option<Duration>,
    window: Option<usize>,
    send_queue: Option<usize>,
    send_queue_kb: Option<usize>,
    max_in_flight: Option<usize>,
    read_buffer: Option<usize>,
    write_buffer: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    send_rate: Option<f64>,
    send_burst: Option<u32>,
    user_send_rate: Option<f64>,
    user_send_burst: Option<u32>,
    user_chat_rate: Option<f64>,
    user_chat_burst: Option<u32>,
    user_upload_rate: Option<f64>,
    user_upload_burst: Option<u32>,
    user_read_rate: Option<f64>,
    user_read_burst: Option<u32>,
    tracked_users: Option<usize>,
    chats_per_user: Option<usize>,
    devices_per_user: Option<usize>,
    pending_uploads_per_user: Option<usize>,
    pending_upload_mb_per_user: Option<u64>,
    inbox_reads_in_flight: Option<usize>,
    rpc_lanes: Option<usize>,
    rpc_lane_commands: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileStore {
    cache_mb: Option<u64>,
    memtable_mb: Option<u64>,
    max_group: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNats {
    url: Option<String>,
    #[serde(default, with = "humantime_serde")]
    stream_max_age: Option<Duration>,
    stream_max_mb: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    heartbeat: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    request_timeout: Option<Duration>,
    user: Option<String>,
    password: Option<String>,
    token: Option<String>,
    nkey_file: Option<PathBuf>,
    creds_file: Option<PathBuf>,
    #[serde(default)]
    tls: FileNatsTls,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNatsTls {
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    required: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMedia {
    store: Option<String>,
    root: Option<PathBuf>,
    max_size: Option<u64>,
    allowed_types: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    upload_expiry: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    download_expiry: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    orphan_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    retention: Option<Duration>,
    #[serde(default)]
    s3: FileS3,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileS3 {
    bucket: Option<String>,
    prefix: Option<String>,
    endpoint: Option<String>,
    region: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    path_style: Option<bool>,
    allow_http: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTesting {
    adjustable_clock: Option<bool>,
    store_faults: Option<bool>,
    inbox_read_gate: Option<bool>,
}

// ----------------------------------------------------------- typed config

#[derive(Debug, Clone)]
pub struct Config {
    pub data: PathBuf,
    /// The configuration file the settings were read from, if any (a backup
    /// holds its text).
    pub config_file: Option<PathBuf>,
    pub listen: SocketAddr,
    /// The admin API and `/metrics` (never on `listen`).
    pub admin_listen: SocketAddr,
    /// Bounds on what one admin read may scan (`[admin]`).
    pub admin: crate::core::AdminLimits,
    pub node: NodeName,
    pub registration: Registration,
    pub log: LogConfig,
    pub retention: RetentionConfig,
    pub websocket: WsConfig,
    pub limits: LimitsConfig,
    pub store: StoreConfig,
    /// Lets the admin API move the node's clock forward (tests only).
    pub adjustable_clock: bool,
    /// Lets the admin API make the store's next commit fail (tests only).
    pub store_faults: bool,
    /// Lets the admin API hold inbox reads (tests only).
    pub inbox_read_gate: bool,
    /// How long shutdown waits for connections to close.
    pub shutdown_grace: Duration,
    pub media: MediaConfig,
    /// Base URL clients reach this node at; `None` means `http://<bound address>`.
    pub public_url: Option<String>,
    pub role: Role,
    /// NATS, when configured (required for the core and gateway roles).
    pub nats: Option<NatsConfig>,
    /// This process's id on NATS (its delivery subjects and consumer).
    pub gateway_id: GatewayId,
    pub federation: FederationConfig,
    /// Reverse proxies whose forwarding headers name the client.
    pub trusted_proxies: TrustedProxies,
    /// Limits on logins and registrations.
    pub logins: LoginLimitsConfig,
    /// Timeouts and connection caps of every HTTP listener.
    pub http: HttpConfig,
    pub web: WebConfig,
}

/// The web client served at `/` (`[web]`).
#[derive(Clone, Debug)]
pub struct WebConfig {
    /// Serve the client at `/` (`/v1/info` is served either way).
    pub enabled: bool,
    /// The media store's origin for the client's Content-Security-Policy, when
    /// natter cannot tell it (a gateway in front of a core with embedded media).
    pub media_origin: Option<String>,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    /// `tracing` filter directives, e.g. `info,natter=debug`. `RUST_LOG` wins.
    pub filter: String,
}

#[derive(Debug, Clone)]
pub struct RetentionConfig {
    pub inbox: Duration,
    pub device_ttl: Duration,
    pub sweep_interval: Duration,
    pub invite_ttl: Duration,
    /// Inbox entries, chat updates or idempotency keys one sweep step handles.
    pub sweep_step_rows: usize,
}

#[derive(Debug, Clone)]
pub struct WsConfig {
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub auth_timeout: Duration,
    pub resend_after: Duration,
    pub write_timeout: Duration,
    /// Unacknowledged events in flight per connection; more wait in the inbox.
    pub window: usize,
    /// Frames queued for the socket before the client counts as too slow.
    pub send_queue: usize,
    /// Bytes of frames queued for the socket before the client counts as too
    /// slow (with `max_in_flight`, what bounds a connection's memory).
    pub send_queue_bytes: usize,
    /// Commands of one connection being carried out at once; further frames
    /// wait in the socket until one is answered.
    pub max_in_flight: usize,
    pub read_buffer: usize,
    pub write_buffer: usize,
}

#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Sustained sends per second per connection (the gateway's first line).
    pub send_rate: f64,
    /// Sends a connection may burst above the rate.
    pub send_burst: u32,
    /// Per-user rates, kept by the core.
    pub user: UserRateConfig,
    pub quotas: Quotas,
    /// Inbox reads (backlogs, resends) the core runs at once.
    pub inbox_reads_in_flight: usize,
    /// Devices whose commands over NATS the core queues at once.
    pub rpc_lanes: usize,
    /// Commands of one device the core queues.
    pub rpc_lane_commands: usize,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub cache_bytes: u64,
    pub memtable_bytes: u64,
    pub max_group: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid setting {setting}: {reason}")]
    Invalid {
        setting: &'static str,
        reason: String,
    },
}

const DAY: u64 = 24 * 3600;

/// The log filter unless `log.filter` (or `RUST_LOG`) says otherwise: the
/// store engine's routine INFO lines (table ingests, recovery) stay out of
/// the log; its warnings and errors do not.
pub const DEFAULT_LOG_FILTER: &str = "info,lsm_tree=warn,fjall=warn";

fn default_log_filter() -> String {
    DEFAULT_LOG_FILTER.to_owned()
}

/// `[limits]`: every rate positive, every quota at least 1.
fn limits_config(file: FileLimits) -> Result<LimitsConfig, ConfigError> {
    let rate = |per_second: Option<f64>, burst: Option<u32>, default: Rate, setting| {
        let rate = Rate::new(
            per_second.unwrap_or(default.per_second),
            burst.unwrap_or(default.burst),
        );
        match rate.is_valid() {
            true => Ok(rate),
            false => Err(invalid(setting, "rates and bursts must be positive")),
        }
    };
    let user = UserRateConfig::default();
    let quota = Quotas::default();
    let at_least_one = |value: Option<usize>, default: usize, setting| match value {
        Some(0) => Err(invalid(setting, "must be at least 1")),
        value => Ok(value.unwrap_or(default)),
    };
    let connection = rate(
        file.send_rate,
        file.send_burst,
        Rate::new(20.0, 100),
        "limits.send_rate",
    )?;
    Ok(LimitsConfig {
        send_rate: connection.per_second,
        send_burst: connection.burst,
        user: UserRateConfig {
            send: rate(
                file.user_send_rate,
                file.user_send_burst,
                user.send,
                "limits.user_send_rate",
            )?,
            chat: rate(
                file.user_chat_rate,
                file.user_chat_burst,
                user.chat,
                "limits.user_chat_rate",
            )?,
            upload: rate(
                file.user_upload_rate,
                file.user_upload_burst,
                user.upload,
                "limits.user_upload_rate",
            )?,
            read: rate(
                file.user_read_rate,
                file.user_read_burst,
                user.read,
                "limits.user_read_rate",
            )?,
            tracked_users: at_least_one(
                file.tracked_users,
                user.tracked_users,
                "limits.tracked_users",
            )?,
        },
        quotas: Quotas {
            chats: at_least_one(file.chats_per_user, quota.chats, "limits.chats_per_user")?,
            devices: at_least_one(
                file.devices_per_user,
                quota.devices,
                "limits.devices_per_user",
            )?,
            pending_uploads: at_least_one(
                file.pending_uploads_per_user,
                quota.pending_uploads,
                "limits.pending_uploads_per_user",
            )?,
            pending_upload_bytes: match file.pending_upload_mb_per_user {
                Some(0) => {
                    return Err(invalid(
                        "limits.pending_upload_mb_per_user",
                        "must be at least 1",
                    ));
                }
                Some(mb) => mb.saturating_mul(1 << 20),
                None => quota.pending_upload_bytes,
            },
        },
        inbox_reads_in_flight: at_least_one(
            file.inbox_reads_in_flight,
            crate::core::inbox_reads::DEFAULT_IN_FLIGHT,
            "limits.inbox_reads_in_flight",
        )?,
        rpc_lanes: at_least_one(
            file.rpc_lanes,
            crate::core::rpc_lanes::DEFAULT_LANES,
            "limits.rpc_lanes",
        )?,
        rpc_lane_commands: at_least_one(
            file.rpc_lane_commands,
            crate::core::rpc_lanes::DEFAULT_LANE_COMMANDS,
            "limits.rpc_lane_commands",
        )?,
    })
}

impl Config {
    /// Defaults, as `natterd serve` with nothing else uses them.
    pub fn defaults() -> Self {
        Self::resolve(ServeArgs::default())
            .unwrap_or_else(|e| unreachable!("defaults are valid: {e}"))
    }

    /// Resolves the settings of an all-in-one node.
    pub fn resolve(args: ServeArgs) -> Result<Self, ConfigError> {
        Self::resolve_for(Role::All, args)
    }

    pub fn resolve_for(role: Role, args: ServeArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let name = args
            .name
            .or(file.name)
            .unwrap_or_else(|| "localhost".to_owned());
        let node = NodeName::parse(&name).ok_or_else(|| {
            invalid(
                "name",
                "a DNS-like name: lowercase letters, digits, '-' and '.'",
            )
        })?;
        let websocket = websocket_config(file.websocket)?;
        let retention = retention_config(args.retention, args.device_ttl, file.retention)?;
        let limits = limits_config(file.limits)?;
        let store = StoreConfig {
            cache_bytes: file.store.cache_mb.unwrap_or(32) << 20,
            memtable_bytes: file.store.memtable_mb.unwrap_or(16) << 20,
            max_group: file.store.max_group.unwrap_or(1024).max(1),
        };
        let data = args
            .data
            .or(file.data)
            .unwrap_or_else(|| PathBuf::from("natter-data"));
        let media = media_config(args.media, file.media, &data)?;
        let nats = nats_config(role, args.nats, args.nats_auth, file.nats)?;
        let gateway_id = match args.gateway_id.or(file.gateway_id) {
            Some(id) => {
                GatewayId::parse(&id).ok_or_else(|| invalid("gateway_id", "1-32 of a-z 0-9 -"))?
            }
            None => GatewayId::generate(),
        };
        let (listen, admin_listen) = listen_addresses(
            role,
            args.listen.or(file.listen),
            args.admin_listen.or(file.admin.listen),
        )?;
        let proxies = match args.trusted_proxies.is_empty() {
            false => args.trusted_proxies,
            true => file.trusted_proxies.unwrap_or_default(),
        };
        let trusted_proxies =
            TrustedProxies::parse(&proxies).map_err(|e| ConfigError::Invalid {
                setting: "trusted_proxies",
                reason: e,
            })?;
        let logins = logins_config(file.logins)?;
        let admin = admin_limits(&file.admin)?;
        let http = http_config(file.http)?;
        let public_url = args.public_url.or(file.public_url);
        if let Some(url) = &public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(invalid("public_url", "must start with http:// or https://"));
        }
        Ok(Self {
            data,
            config_file: args.config.clone(),
            listen,
            admin_listen,
            admin,
            node,
            registration: args
                .registration
                .or(file.registration)
                .unwrap_or(Registration::Invite),
            log: LogConfig {
                format: args.log_format.or(file.log.format).unwrap_or_default(),
                filter: file.log.filter.unwrap_or_else(default_log_filter),
            },
            retention,
            websocket,
            limits,
            store,
            adjustable_clock: file.testing.adjustable_clock.unwrap_or(false),
            store_faults: file.testing.store_faults.unwrap_or(false),
            inbox_read_gate: file.testing.inbox_read_gate.unwrap_or(false),
            shutdown_grace: file.shutdown_grace.unwrap_or(Duration::from_secs(10)),
            media,
            public_url: public_url.map(|u| u.trim_end_matches('/').to_owned()),
            role,
            nats,
            gateway_id,
            federation: federation_config(file.federation)?,
            trusted_proxies,
            logins,
            web: web_config(file.web)?,
            http,
        })
    }
}

/// The client and admin listen addresses, given or the role's defaults.
fn listen_addresses(
    role: Role,
    listen: Option<SocketAddr>,
    admin: Option<SocketAddr>,
) -> Result<(SocketAddr, SocketAddr), ConfigError> {
    let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let (default_listen, default_admin) = match role {
        Role::All => (local(7070), local(7071)),
        Role::Core => (local(7072), local(7071)),
        Role::Gateway => (local(7070), local(0)),
    };
    let listen = listen.unwrap_or(default_listen);
    let admin = admin.unwrap_or(default_admin);
    if admin == listen && listen.port() != 0 {
        return Err(invalid(
            "admin.listen",
            "must differ from listen: the admin API is never served to clients",
        ));
    }
    Ok((listen, admin))
}

fn web_config(file: FileWeb) -> Result<WebConfig, ConfigError> {
    if let Some(origin) = &file.media_origin
        && (!(origin.starts_with("http://") || origin.starts_with("https://"))
            || origin
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .contains('/')
            || origin.contains([' ', ';', ',', '\'']))
    {
        return Err(invalid(
            "web.media_origin",
            "an origin: http(s)://host[:port], without a path",
        ));
    }
    Ok(WebConfig {
        enabled: file.enabled.unwrap_or(true),
        media_origin: file.media_origin,
    })
}

fn invalid(setting: &'static str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        setting,
        reason: reason.to_owned(),
    }
}

fn federation_config(file: FileFederation) -> Result<FederationConfig, ConfigError> {
    let defaults = FederationConfig::default();
    for (setting, value, max) in [
        (
            "federation.max_actions_in_flight",
            file.max_actions_in_flight,
            4096,
        ),
        (
            "federation.max_batches_in_flight",
            file.max_batches_in_flight,
            64,
        ),
    ] {
        if value.is_some_and(|n| !(1..=max).contains(&n)) {
            return Err(invalid(setting, &format!("must be between 1 and {max}")));
        }
    }
    Ok(FederationConfig {
        request_timeout: file.request_timeout.unwrap_or(defaults.request_timeout),
        dead_letter_after: file.dead_letter_after.unwrap_or(defaults.dead_letter_after),
        max_backoff: file.max_backoff.unwrap_or(defaults.max_backoff),
        key_overlap: file.key_overlap.unwrap_or(defaults.key_overlap),
        outbox_stream_max_age: file.outbox_stream_max_age,
        outbox_stream_max_bytes: file
            .outbox_stream_max_mb
            .map_or(defaults.outbox_stream_max_bytes, |mb| mb << 20),
        max_actions_in_flight: file
            .max_actions_in_flight
            .unwrap_or(defaults.max_actions_in_flight),
        max_batches_in_flight: file
            .max_batches_in_flight
            .unwrap_or(defaults.max_batches_in_flight),
    })
}

fn logins_config(file: FileLogins) -> Result<LoginLimitsConfig, ConfigError> {
    let d = LoginLimitsConfig::default();
    let ms = |value: Option<Duration>, default: i64| value.map_or(default, crate::clock::millis);
    let config = LoginLimitsConfig {
        attempt_rate: file.attempt_rate.unwrap_or(d.attempt_rate),
        attempt_burst: file.attempt_burst.unwrap_or(d.attempt_burst),
        free_failures: file.free_failures.unwrap_or(d.free_failures),
        free_failures_per_address: file
            .free_failures_per_address
            .unwrap_or(d.free_failures_per_address),
        delay_ms: ms(file.delay, d.delay_ms),
        max_delay_ms: ms(file.max_delay, d.max_delay_ms),
        forget_after_ms: ms(file.forget_after, d.forget_after_ms),
        max_records: file.max_records.unwrap_or(d.max_records),
        max_addresses: file.max_addresses.unwrap_or(d.max_addresses),
        ipv6_prefix: file.ipv6_prefix.unwrap_or(d.ipv6_prefix),
    };
    match config.problem() {
        Some(reason) => Err(invalid("logins", reason)),
        None => Ok(config),
    }
}

fn http_config(file: FileHttp) -> Result<HttpConfig, ConfigError> {
    let d = HttpConfig::default();
    let config = HttpConfig {
        header_read_timeout: file.header_read_timeout.unwrap_or(d.header_read_timeout),
        idle_timeout: file.idle_timeout.unwrap_or(d.idle_timeout),
        body_timeout: file.body_timeout.unwrap_or(d.body_timeout),
        upload_timeout: file.upload_timeout.unwrap_or(d.upload_timeout),
        max_connections: file.max_connections.unwrap_or(d.max_connections),
        max_connections_per_address: file
            .max_connections_per_address
            .unwrap_or(d.max_connections_per_address),
    };
    match config.problem() {
        Some(reason) => Err(invalid("http", reason)),
        None => Ok(config),
    }
}

fn websocket_config(ws: FileWebsocket) -> Result<WsConfig, ConfigError> {
    let websocket = WsConfig {
        ping_interval: ws.ping_interval.unwrap_or(Duration::from_secs(20)),
        ping_timeout: ws.ping_timeout.unwrap_or(Duration::from_secs(60)),
        auth_timeout: ws.auth_timeout.unwrap_or(Duration::from_secs(10)),
        resend_after: ws.resend_after.unwrap_or(Duration::from_secs(30)),
        write_timeout: ws.write_timeout.unwrap_or(Duration::from_secs(15)),
        window: ws.window.unwrap_or(512),
        send_queue: ws.send_queue.unwrap_or(1024),
        send_queue_bytes: ws.send_queue_kb.unwrap_or(8192) << 10,
        max_in_flight: ws.max_in_flight.unwrap_or(32).max(1),
        read_buffer: ws.read_buffer.unwrap_or(2048),
        write_buffer: ws.write_buffer.unwrap_or(2048),
    };
    if websocket.ping_interval.is_zero() || websocket.ping_timeout <= websocket.ping_interval {
        return Err(invalid(
            "websocket.ping_timeout",
            "must be longer than a non-zero ping_interval",
        ));
    }
    if websocket.send_queue_bytes < 1 << 20 {
        // One answer may be ~512 KiB (a page of history).
        return Err(invalid("websocket.send_queue_kb", "must be at least 1024"));
    }
    if websocket.window == 0 || websocket.send_queue <= websocket.window {
        return Err(invalid(
            "websocket.send_queue",
            "must be larger than a non-zero window",
        ));
    }
    Ok(websocket)
}

fn retention_config(
    inbox: Option<humantime::Duration>,
    device_ttl: Option<humantime::Duration>,
    file: FileRetention,
) -> Result<RetentionConfig, ConfigError> {
    let retention = RetentionConfig {
        inbox: inbox
            .map(Into::into)
            .or(file.inbox)
            .unwrap_or(Duration::from_secs(30 * DAY)),
        device_ttl: device_ttl
            .map(Into::into)
            .or(file.device_ttl)
            .unwrap_or(Duration::from_secs(90 * DAY)),
        sweep_interval: file.sweep_interval.unwrap_or(Duration::from_secs(3600)),
        invite_ttl: file.invite_ttl.unwrap_or(Duration::from_secs(7 * DAY)),
        sweep_step_rows: file.sweep_step_rows.unwrap_or(10_000),
    };
    if retention.sweep_step_rows == 0 {
        return Err(invalid("retention.sweep_step_rows", "must not be zero"));
    }
    if retention.sweep_interval.is_zero() {
        return Err(invalid("retention.sweep_interval", "must not be zero"));
    }
    Ok(retention)
}

fn nats_config(
    role: Role,
    url: Option<String>,
    flags: NatsArgs,
    mut file: FileNats,
) -> Result<Option<NatsConfig>, ConfigError> {
    let nats = match url.or(file.url.take()) {
        Some(url) => Some(NatsConfig {
            url,
            auth: nats_auth(&flags, &mut file)?,
            tls: nats_tls(flags, &mut file.tls)?,
            stream_max_age: file.stream_max_age.unwrap_or(Duration::from_secs(3600)),
            stream_max_bytes: file.stream_max_mb.unwrap_or(1024) << 20,
            heartbeat: file.heartbeat.unwrap_or(Duration::from_secs(5)),
            request_timeout: file.request_timeout.unwrap_or(Duration::from_secs(10)),
        }),
        None if role != Role::All => {
            return Err(invalid(
                "nats",
                "the core and gateway roles need --nats URL",
            ));
        }
        None => None,
    };
    Ok(nats)
}

/// The one way (if any) this process authenticates to NATS; secret files are
/// read here, once.
fn nats_auth(flags: &NatsArgs, file: &mut FileNats) -> Result<NatsAuth, ConfigError> {
    let user = flags.nats_user.clone().or(file.user.take());
    let password = flags.nats_password.clone().or(file.password.take());
    let token = flags.nats_token.clone().or(file.token.take());
    let nkey_file = flags.nats_nkey_file.clone().or(file.nkey_file.take());
    let creds_file = flags.nats_creds_file.clone().or(file.creds_file.take());
    let ways = [
        user.is_some() || password.is_some(),
        token.is_some(),
        nkey_file.is_some(),
        creds_file.is_some(),
    ];
    if ways.iter().filter(|w| **w).count() > 1 {
        return Err(invalid(
            "nats",
            "give one of user and password, token, nkey_file or creds_file",
        ));
    }
    Ok(match (user, password) {
        (Some(user), Some(password)) => NatsAuth::UserPassword {
            user,
            password: Secret::new(password),
        },
        (Some(_), None) | (None, Some(_)) => {
            return Err(invalid("nats.user", "user and password go together"));
        }
        (None, None) => match (token, nkey_file, creds_file) {
            (Some(token), _, _) => NatsAuth::Token(Secret::new(token)),
            (_, Some(path), _) => {
                let seed = read_secret(&path)?;
                if !seed.starts_with("SU") {
                    return Err(invalid(
                        "nats.nkey_file",
                        "the file must hold a user nkey seed (SU…)",
                    ));
                }
                NatsAuth::NKey(Secret::new(seed))
            }
            (_, _, Some(path)) => NatsAuth::Credentials(Secret::new(read_secret(&path)?)),
            (None, None, None) => NatsAuth::None,
        },
    })
}

fn nats_tls(flags: NatsArgs, file: &mut FileNatsTls) -> Result<NatsTls, ConfigError> {
    let ca_file = flags.nats_tls_ca.or(file.ca_file.take());
    let cert = flags.nats_tls_cert.or(file.cert_file.take());
    let key = flags.nats_tls_key.or(file.key_file.take());
    let client_cert = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => {
            return Err(invalid(
                "nats.tls.cert_file",
                "a client certificate needs its key_file (and the other way round)",
            ));
        }
    };
    let files = ca_file
        .iter()
        .chain(client_cert.iter().flat_map(|(c, k)| [c, k]));
    for path in files {
        if !path.is_file() {
            return Err(ConfigError::Invalid {
                setting: "nats.tls",
                reason: format!("no such file: {}", path.display()),
            });
        }
    }
    Ok(NatsTls {
        ca_file,
        client_cert,
        required: flags.nats_tls_required.or(file.required).unwrap_or(false),
    })
}

/// A secret file's contents, trimmed (never logged).
fn read_secret(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map(|text| text.trim().to_owned())
        .map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })
}

fn media_config(
    flag: Option<String>,
    file: FileMedia,
    data: &Path,
) -> Result<MediaConfig, ConfigError> {
    let invalid = |setting, reason: String| ConfigError::Invalid { setting, reason };
    let store = flag.or(file.store).unwrap_or_else(|| "local".to_owned());
    let s3 = file.s3;
    let backend = if store == "local" {
        MediaBackend::Local {
            root: file.root.unwrap_or_else(|| data.join("media")),
        }
    } else if store == "s3" || store.starts_with("s3://") {
        // `s3://bucket/prefix` names the bucket and prefix; [media.s3] has the rest.
        let (bucket, prefix) = match store.strip_prefix("s3://") {
            Some(rest) => match rest.split_once('/') {
                Some((b, p)) => (Some(b.to_owned()), Some(p.to_owned())),
                None => (Some(rest.to_owned()), None),
            },
            None => (None, None),
        };
        let bucket = bucket
            .filter(|b| !b.is_empty())
            .or(s3.bucket)
            .ok_or_else(|| invalid("media.s3.bucket", "S3 media needs a bucket".into()))?;
        MediaBackend::S3(S3Config {
            bucket,
            prefix: prefix.or(s3.prefix).unwrap_or_default(),
            endpoint: s3.endpoint,
            region: s3.region.unwrap_or_else(|| "us-east-1".to_owned()),
            access_key_id: s3.access_key_id,
            secret_access_key: s3.secret_access_key,
            path_style: s3.path_style.unwrap_or(false),
            allow_http: s3.allow_http.unwrap_or(false),
        })
    } else {
        return Err(invalid(
            "media.store",
            format!("{store:?}: use local or s3://bucket/prefix"),
        ));
    };
    let config = MediaConfig {
        backend,
        max_size: file.max_size.unwrap_or(100 << 20),
        allowed_types: file.allowed_types.unwrap_or_default(),
        upload_expiry: file.upload_expiry.unwrap_or(Duration::from_secs(15 * 60)),
        download_expiry: file.download_expiry.unwrap_or(Duration::from_secs(3600)),
        orphan_ttl: file.orphan_ttl.unwrap_or(Duration::from_secs(DAY)),
        retention: file.retention.unwrap_or(Duration::from_secs(30 * DAY)),
    };
    let week = Duration::from_secs(7 * DAY);
    if config.upload_expiry.is_zero()
        || config.download_expiry.is_zero()
        || config.upload_expiry > week
        || config.download_expiry > week
    {
        return Err(invalid(
            "media.upload_expiry",
            "URL expiries must be between 1s and 7d (S3's limit)".into(),
        ));
    }
    if config.max_size == 0 {
        return Err(invalid("media.max_size", "must be positive".into()));
    }
    Ok(config)
}

impl clap::ValueEnum for Registration {
    fn value_variants<'a>() -> &'a [Self] {
        &[Self::Open, Self::Invite, Self::Closed]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(match self {
            Self::Open => "open",
            Self::Invite => "invite",
            Self::Closed => "closed",
        }))
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    read_toml(path)
}

/// A TOML file read and parsed as `T` (`FileConfig`, or a plain table for
/// `natterd config check`).
pub(crate) fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// The `[admin]` bounds on admin reads, each at least 1.
fn admin_limits(file: &FileAdmin) -> Result<crate::core::AdminLimits, ConfigError> {
    let defaults = crate::core::AdminLimits::default();
    let limits = crate::core::AdminLimits {
        inbox_count_cap: file.inbox_count_cap.unwrap_or(defaults.inbox_count_cap),
        stats_inbox_scan: file.stats_inbox_scan.unwrap_or(defaults.stats_inbox_scan),
        max_chat_page: file.max_chat_page.unwrap_or(defaults.max_chat_page),
    };
    for (setting, value) in [
        ("admin.inbox_count_cap", limits.inbox_count_cap),
        ("admin.stats_inbox_scan", limits.stats_inbox_scan),
        ("admin.max_chat_page", limits.max_chat_page),
    ] {
        if value == 0 {
            return Err(invalid(setting, "must not be zero"));
        }
    }
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file keys `FileConfig` accepts, found by asking serde: an unknown
    /// key in a `deny_unknown_fields` table is refused with the list of the
    /// keys it expected. A key that is itself a table is followed.
    fn accepted_keys(table: &[String], out: &mut Vec<String>) {
        let probe = |path: &[String]| -> String {
            let text = match path.is_empty() {
                true => "zz_probe = 1\n".to_owned(),
                false => format!("[{}]\nzz_probe = 1\n", path.join(".")),
            };
            match toml::from_str::<FileConfig>(&text) {
                Ok(_) => panic!("{text:?} was accepted"),
                Err(e) => e.to_string(),
            }
        };
        let message = probe(table);
        let expected = message
            .split_once("unknown field `zz_probe`, expected ")
            .unwrap_or_else(|| panic!("not a table: {table:?}: {message}"))
            .1
            .lines()
            .next()
            .unwrap();
        let fields: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        assert!(!fields.is_empty(), "{message}");
        for field in fields {
            let mut path = table.to_vec();
            path.push(field.to_owned());
            if probe(&path).contains("unknown field `zz_probe`") {
                accepted_keys(&path, out);
            } else {
                out.push(path.join("."));
            }
        }
    }

    /// Leaf keys of a TOML table, dotted.
    fn toml_keys(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
        for (key, value) in table {
            let path = match prefix.is_empty() {
                true => key.clone(),
                false => format!("{prefix}.{key}"),
            };
            match value {
                toml::Value::Table(inner) => toml_keys(&path, inner, out),
                _ => out.push(path),
            }
        }
    }

    /// docs/configuration.md and the config file's shape stay in step: every
    /// key the file accepts is in the doc's TOML blocks, and every key there
    /// is accepted (and the blocks parse as a valid config).
    #[test]
    fn every_file_key_is_documented_and_every_documented_key_is_accepted() {
        let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
        let doc = std::fs::read_to_string(&doc_path).unwrap();
        let mut documented = Vec::new();
        let mut blocks = 0;
        for block in doc.split("```toml\n").skip(1) {
            let block = block.split("```").next().unwrap();
            let table: toml::Table = toml::from_str(block)
                .unwrap_or_else(|e| panic!("a TOML block of configuration.md: {e}\n{block}"));
            toml::from_str::<FileConfig>(block)
                .unwrap_or_else(|e| panic!("configuration.md has a key natterd refuses: {e}"));
            toml_keys("", &table, &mut documented);
            blocks += 1;
        }
        assert!(blocks >= 1 && documented.len() > 50, "{documented:?}");
        let mut accepted = Vec::new();
        accepted_keys(&[], &mut accepted);
        assert!(accepted.len() > 50, "{accepted:?}");
        let documented: std::collections::BTreeSet<String> = documented.into_iter().collect();
        let accepted: std::collections::BTreeSet<String> = accepted.into_iter().collect();
        let undocumented: Vec<_> = accepted.difference(&documented).collect();
        assert!(
            undocumented.is_empty(),
            "keys missing from configuration.md: {undocumented:?}"
        );
        let checked: std::collections::BTreeSet<String> =
            crate::config_check::settings(&Config::defaults())
                .into_iter()
                .map(|(key, _)| key.to_owned())
                .collect();
        assert_eq!(
            checked, accepted,
            "`config check` prints every key, and only those"
        );
        let unknown: Vec<_> = documented.difference(&accepted).collect();
        assert!(
            unknown.is_empty(),
            "configuration.md documents keys natterd does not accept: {unknown:?}"
        );
    }

    #[test]
    fn defaults_match_the_docs() {
        let c = Config::defaults();
        assert_eq!(c.data, PathBuf::from("natter-data"));
        assert_eq!(c.listen.to_string(), "127.0.0.1:7070");
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:7071");
        assert_eq!(c.node.as_str(), "localhost");
        assert_eq!(c.registration, Registration::Invite);
        assert_eq!(c.log.filter, "info,lsm_tree=warn,fjall=warn");
        assert_eq!(c.retention.inbox, Duration::from_secs(30 * DAY));
        assert_eq!(c.retention.device_ttl, Duration::from_secs(90 * DAY));
        assert!(c.trusted_proxies.is_empty());
        let logins = &c.logins;
        assert_eq!((logins.attempt_rate, logins.attempt_burst), (1.0, 30));
        assert_eq!(
            (logins.free_failures, logins.free_failures_per_address),
            (5, 50)
        );
        assert_eq!((logins.delay_ms, logins.max_delay_ms), (1000, 900_000));
        assert_eq!(logins.forget_after_ms, 3_600_000);
        assert_eq!(
            (logins.max_records, logins.max_addresses),
            (100_000, 100_000)
        );
        assert_eq!(logins.ipv6_prefix, 64);
        let http = &c.http;
        assert_eq!(
            (http.header_read_timeout, http.idle_timeout),
            (Duration::from_secs(10), Duration::from_secs(60))
        );
        assert_eq!(
            (http.body_timeout, http.upload_timeout),
            (Duration::from_secs(30), Duration::from_secs(600))
        );
        assert_eq!(
            (http.max_connections, http.max_connections_per_address),
            (50_000, 256)
        );
    }

    #[test]
    fn http_limits_are_read_and_checked() {
        let c = with_file(
            "[http]\nheader_read_timeout = \"1s\"\nidle_timeout = \"2s\"\nbody_timeout = \"3s\"\n\
             upload_timeout = \"4s\"\nmax_connections = 5\nmax_connections_per_address = 6\n",
        )
        .unwrap();
        let secs = Duration::from_secs;
        assert_eq!(
            c.http,
            HttpConfig {
                header_read_timeout: secs(1),
                idle_timeout: secs(2),
                body_timeout: secs(3),
                upload_timeout: secs(4),
                max_connections: 5,
                max_connections_per_address: 6,
            }
        );
        for bad in ["idle_timeout = \"0s\"", "max_connections_per_address = 0"] {
            let err = with_file(&format!("[http]\n{bad}\n")).unwrap_err();
            assert!(
                matches!(
                    err,
                    ConfigError::Invalid {
                        setting: "http",
                        ..
                    }
                ),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn admin_bounds_are_read_and_checked() {
        let d = Config::defaults().admin;
        assert_eq!(
            (d.inbox_count_cap, d.stats_inbox_scan, d.max_chat_page),
            (1_000_000, 5_000_000, 10_000)
        );
        let dir = tempfile::tempdir().unwrap();
        let config = |text: &str| {
            let path = dir.path().join("natter.toml");
            std::fs::write(&path, text).unwrap();
            Config::resolve(ServeArgs {
                config: Some(path),
                ..ServeArgs::default()
            })
        };
        let c = config("[admin]\ninbox_count_cap = 10\nmax_chat_page = 5\n").unwrap();
        assert_eq!((c.admin.inbox_count_cap, c.admin.max_chat_page), (10, 5));
        assert_eq!(c.admin.stats_inbox_scan, 5_000_000);
        let zero = config("[admin]\nstats_inbox_scan = 0\n").unwrap_err();
        assert!(
            matches!(
                zero,
                ConfigError::Invalid {
                    setting: "admin.stats_inbox_scan",
                    ..
                }
            ),
            "{zero:?}"
        );
    }

    #[test]
    fn login_limits_and_trusted_proxies_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let config = |text: &str| {
            let path = dir.path().join("natter.toml");
            std::fs::write(&path, text).unwrap();
            Config::resolve(ServeArgs {
                config: Some(path),
                ..ServeArgs::default()
            })
        };
        let c = config(
            "trusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n[logins]\nfree_failures = 3\ndelay = \"2s\"\n",
        )
        .unwrap();
        assert_eq!(
            c.trusted_proxies,
            TrustedProxies::parse(&["10.0.0.0/8", "::1"]).unwrap()
        );
        assert_eq!((c.logins.free_failures, c.logins.delay_ms), (3, 2000));
        for bad in [
            "trusted_proxies = [\"proxy.example\"]\n",
            "[logins]\nmax_delay = \"2h\"\n",
            "[logins]\nattempt_burst = 0\n",
        ] {
            assert!(config(bad).is_err(), "{bad}");
        }
        // The flag (or NATTER_TRUSTED_PROXIES) wins over the file.
        let c = Config::resolve(ServeArgs {
            trusted_proxies: vec!["192.0.2.1".into()],
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(
            c.trusted_proxies,
            TrustedProxies::parse(&["192.0.2.1"]).unwrap()
        );
    }

    #[test]
    fn the_admin_api_never_shares_the_client_listener() {
        let same: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let args = ServeArgs {
            listen: Some(same),
            admin_listen: Some(same),
            ..ServeArgs::default()
        };
        assert!(matches!(
            Config::resolve(args),
            Err(ConfigError::Invalid {
                setting: "admin.listen",
                ..
            })
        ));
        let core = Config::resolve_for(
            Role::Core,
            ServeArgs {
                nats: Some("nats://127.0.0.1:4222".into()),
                ..ServeArgs::default()
            },
        )
        .unwrap();
        assert_eq!(core.listen.to_string(), "127.0.0.1:7072");
        assert_eq!(core.admin_listen.to_string(), "127.0.0.1:7071");
    }

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("natter.toml");
        std::fs::write(
            &path,
            r#"
            name = "file.example"
            registration = "open"
            [retention]
            inbox = "2h"
            [websocket]
            ping_interval = "1s"
            ping_timeout = "3s"
            "#,
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            name: Some("flag.example".into()),
            ..ServeArgs::default()
        };
        let c = Config::resolve(args).unwrap();
        assert_eq!(c.node.as_str(), "flag.example");
        assert_eq!(c.registration, Registration::Open);
        assert_eq!(c.retention.inbox, Duration::from_secs(7200));
        assert_eq!(c.websocket.ping_timeout, Duration::from_secs(3));
    }

    fn with_file(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("natter.toml");
        std::fs::write(&path, text).unwrap();
        Config::resolve(ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        })
    }

    #[test]
    fn limits_default_as_documented_and_each_can_be_lifted() {
        let limits = Config::defaults().limits;
        assert_eq!((limits.send_rate, limits.send_burst), (20.0, 100));
        assert_eq!(limits.user, UserRateConfig::default());
        assert_eq!(limits.user.chat, Rate::new(1.0, 30));
        assert_eq!(limits.quotas, Quotas::default());
        assert_eq!(limits.quotas.pending_upload_bytes, 1 << 30);
        assert_eq!(limits.inbox_reads_in_flight, 8);
        assert_eq!((limits.rpc_lanes, limits.rpc_lane_commands), (10_000, 256));
        let c = with_file(
            "[limits]\nuser_send_rate = 1e6\nuser_chat_burst = 7\ndevices_per_user = 3\n\
             pending_upload_mb_per_user = 2\ninbox_reads_in_flight = 64\n",
        )
        .unwrap();
        assert_eq!(c.limits.inbox_reads_in_flight, 64);
        assert_eq!(c.limits.user.send, Rate::new(1e6, 100));
        assert_eq!(c.limits.user.chat, Rate::new(1.0, 7));
        assert_eq!(c.limits.quotas.devices, 3);
        assert_eq!(c.limits.quotas.pending_upload_bytes, 2 << 20);
        for bad in [
            "user_read_rate = 0.0",
            "user_upload_burst = 0",
            "user_send_rate = nan",
            "chats_per_user = 0",
            "pending_upload_mb_per_user = 0",
            "inbox_reads_in_flight = 0",
            "rpc_lanes = 0",
            "rpc_lane_commands = 0",
        ] {
            let err = with_file(&format!("[limits]\n{bad}\n")).unwrap_err();
            assert!(err.to_string().contains("limits."), "{bad}: {err}");
        }
    }

    #[test]
    fn nats_credentials_come_from_flags_env_or_file_one_way_only() {
        let dir = tempfile::tempdir().unwrap();
        let seed = dir.path().join("natter.nk");
        std::fs::write(&seed, "SUAEXAMPLESEED\n").unwrap();
        let path = dir.path().join("natter.toml");
        let write = |text: &str| std::fs::write(&path, text).unwrap();
        let resolve = |nats_auth: NatsArgs| {
            Config::resolve_for(
                Role::Gateway,
                ServeArgs {
                    config: Some(path.clone()),
                    nats_auth,
                    ..ServeArgs::default()
                },
            )
        };
        write("[nats]\nurl = \"nats://h:4222\"\nuser = \"gw1\"\npassword = \"pw\"\n");
        let c = resolve(NatsArgs::default()).unwrap();
        let nats = c.nats.unwrap();
        assert_eq!(
            nats.auth,
            NatsAuth::UserPassword {
                user: "gw1".into(),
                password: Secret::new("pw".into())
            }
        );
        assert!(!format!("{:?}", c.websocket).is_empty());
        // A flag beats the file.
        let c = resolve(NatsArgs {
            nats_password: Some("flag".into()),
            ..NatsArgs::default()
        })
        .unwrap();
        assert!(
            matches!(c.nats.unwrap().auth, NatsAuth::UserPassword { password, .. } if password == Secret::new("flag".into()))
        );
        // Two ways at once, a user without a password: refused.
        let err = resolve(NatsArgs {
            nats_token: Some("t".into()),
            ..NatsArgs::default()
        })
        .unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    setting: "nats",
                    ..
                }
            ),
            "{err}"
        );
        write("[nats]\nurl = \"nats://h:4222\"\nuser = \"gw1\"\n");
        assert!(resolve(NatsArgs::default()).is_err());
        // The nkey seed is read from its file; TLS files must exist.
        write(&format!(
            "[nats]\nurl = \"nats://h:4222\"\nnkey_file = {:?}\n[nats.tls]\nrequired = true\n",
            seed.display().to_string()
        ));
        let nats = resolve(NatsArgs::default()).unwrap().nats.unwrap();
        assert_eq!(
            nats.auth,
            NatsAuth::NKey(Secret::new("SUAEXAMPLESEED".into()))
        );
        assert!(nats.tls.required);
        let err = resolve(NatsArgs {
            nats_tls_ca: Some(dir.path().join("missing.pem")),
            ..NatsArgs::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("missing.pem"), "{err}");
        let err = resolve(NatsArgs {
            nats_tls_cert: Some(seed.clone()),
            ..NatsArgs::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("key_file"), "{err}");
    }

    #[test]
    fn the_outbox_stream_limits_default_to_the_docs_and_can_be_set() {
        let c = Config::defaults();
        let limits = c.federation.outbox_limits();
        assert_eq!(limits.max_age, Duration::from_secs(14 * DAY));
        assert_eq!(limits.max_bytes, 1024 << 20);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("natter.toml");
        let toml = "[federation]\ndead_letter_after = \"1h\"\noutbox_stream_max_mb = 8\n";
        std::fs::write(&path, toml).unwrap();
        let c = Config::resolve(ServeArgs {
            config: Some(path.clone()),
            ..ServeArgs::default()
        })
        .unwrap();
        let limits = c.federation.outbox_limits();
        assert_eq!(
            limits.max_age,
            Duration::from_secs(2 * 3600),
            "twice dead_letter_after"
        );
        assert_eq!(limits.max_bytes, 8 << 20);
        std::fs::write(&path, "[federation]\noutbox_stream_max_age = \"3d\"\n").unwrap();
        let c = Config::resolve(ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(
            c.federation.outbox_limits().max_age,
            Duration::from_secs(3 * DAY)
        );
    }

    #[test]
    fn refuses_bad_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "nmae = \"typo\"\n").unwrap();
        let err = Config::resolve(ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("nmae"), "{err}");
        let err = Config::resolve(ServeArgs {
            name: Some("Bad Name".into()),
            ..ServeArgs::default()
        })
        .unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Invalid {
                setting: "name",
                ..
            }
        ));
    }
}
