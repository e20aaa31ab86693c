//! The gateway: HTTP and WebSocket endpoints for clients and admins.
//!
//! Owns: the axum [`router`], the mapping from core errors to HTTP statuses (one
//! place: [`ApiError`]), authentication of requests, and client sessions
//! ([`session`]).
//! Does not own: any rule of the chat or any storage; it asks the [`Core`].

pub mod admin;
mod body_timeout;
pub mod client_ip;
mod federation;
pub mod listener;
mod media;
pub mod peers;
mod session;
pub mod web;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{LimitsConfig, WsConfig};
use crate::core::client::CoreClient;
use crate::core::{Core, CoreError, DeviceCtx};
use crate::delivery::Hub;
use crate::delivery::nats::Nats;
use crate::protocol::{
    self, ErrorBody, ErrorCode, LoginRequest, RegisterRequest, RegisterResponse,
};
use client_ip::{ClientIp, TrustedProxies};
use listener::HttpConfig;

/// What every handler and session shares: one pointer, so that each of many
/// thousands of sessions carries 8 bytes of it, not the whole struct.
#[derive(Clone)]
pub struct Gateway(Arc<Shared>);

impl Gateway {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for Gateway {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    /// The core, here or over NATS.
    pub core: CoreClient,
    /// The core when this process owns the store: admin API and embedded media.
    pub local: Option<Core>,
    /// The NATS connection, when there is one (readiness follows it).
    pub nats: Option<Nats>,
    pub hub: Hub,
    pub ws: Arc<WsConfig>,
    pub limits: LimitsConfig,
    /// Cancelled when the node starts shutting down.
    pub shutdown: CancellationToken,
    /// Tracks client sessions so shutdown can wait for them.
    pub sessions: TaskTracker,
    /// sha256 of the admin token.
    pub admin_token_hash: [u8; 32],
    /// False while starting and once shutting down.
    pub ready: Arc<AtomicBool>,
    /// Whose forwarding headers name the client (`trusted_proxies`).
    pub trusted_proxies: TrustedProxies,
    /// The web client and `/v1/info` (gateways only).
    pub site: Arc<web::Site>,
    /// `[http]`: timeouts and connection caps of the listeners.
    pub http: HttpConfig,
    /// What a backup reads besides the store (processes with the store).
    pub backup: Option<crate::backup::Source>,
}

/// An HTTP error: a status and the contract's `{"code","message"}` body.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    /// With `rate_limited`: when a retry may succeed (`retryAfterMs` and
    /// `Retry-After`).
    pub retry_after_ms: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status: status_for(code),
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }
}

/// The HTTP status of each error code: the one place this mapping lives.
pub fn status_for(code: ErrorCode) -> StatusCode {
    use ErrorCode::*;
    match code {
        BadRequest | InvalidUsername | WeakPassword | UnknownType | MessageTooLarge
        | AttachmentTooLarge | TooManyParticipants => StatusCode::BAD_REQUEST,
        Unauthorized | BadCredentials => StatusCode::UNAUTHORIZED,
        Forbidden | RegistrationClosed | InvalidInvite | UserDisabled | NotParticipant
        | QuotaExceeded => StatusCode::FORBIDDEN,
        UnknownChat | UnknownUser | UnknownAttachment | NotFound => StatusCode::NOT_FOUND,
        UsernameTaken => StatusCode::CONFLICT,
        RateLimited => StatusCode::TOO_MANY_REQUESTS,
        Internal => StatusCode::INTERNAL_SERVER_ERROR,
        Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        if !e.is_refusal() {
            tracing::error!(error = %e, "request failed");
        }
        Self {
            retry_after_ms: e.retry_after_ms(),
            ..Self::new(e.code(), e.public_message())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code,
            message: self.message,
            retry_after_ms: self.retry_after_ms,
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(ms) = self.retry_after_ms {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry_after_header(ms));
        }
        response
    }
}

/// HTTP's `Retry-After` for a wait of `ms`: whole seconds, rounded up, so a
/// client that honours it is never early.
pub fn retry_after_header(ms: u64) -> axum::http::HeaderValue {
    axum::http::HeaderValue::from(ms.div_ceil(1000).max(1))
}

/// Parses a JSON body; anything unreadable is `bad_request`.
fn json_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("invalid body: {e}")))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The device behind the request's bearer token.
async fn device(gw: &Gateway, headers: &HeaderMap) -> Result<DeviceCtx, ApiError> {
    let token = bearer(headers)
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "missing bearer token"))?;
    Ok(gw.core.authenticate(token).await?)
}

/// Which endpoints a process serves.
#[derive(Clone, Copy, Debug)]
pub struct Endpoints {
    /// `/v1/register`, `/v1/login`, `/v1/logout`, `/v1/ws`, `/v1/info` and the web
    /// client at `/` (gateways, all-in-one).
    pub clients: bool,
    /// `/v1/media/*` and `/federation/v1/*` on the public listener, `/admin/v1/*`
    /// on the admin one (processes that own the store).
    pub store: bool,
}

/// The public listener: clients, peers, media and health. Never the admin API
/// or `/metrics` (those are on [`admin_router`]'s listener).
pub fn router(gw: Gateway, endpoints: Endpoints) -> Router {
    let mut router = health();
    if endpoints.clients {
        // Browsers on any origin may call the client API: it authenticates with
        // bearer tokens, never cookies, so there is no ambient credential to abuse.
        let cors = tower_http::cors::CorsLayer::new()
            .allow_origin(tower_http::cors::Any)
            .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]);
        let clients = Router::new()
            .route("/v1/register", post(register))
            .route("/v1/login", post(login))
            .route("/v1/logout", post(logout))
            .route("/v1/ws", get(websocket))
            .merge(web::router(&gw))
            .layer(cors);
        router = router.merge(clients);
    }
    if endpoints.store {
        router = router.merge(federation::router(&gw));
    }
    router = body_timeout::within(router, gw.http.body_timeout, "public");
    if endpoints.store {
        // Uploads may be large: they have their own, longer deadline.
        let media = body_timeout::within(media::router(), gw.http.upload_timeout, "public");
        router = router.merge(media);
    }
    finish(router, gw)
}

/// The admin listener (`admin.listen`): `/metrics`, health, and the admin API
/// where the store is.
pub fn admin_router(gw: Gateway, endpoints: Endpoints) -> Router {
    let mut router = health().route("/metrics", get(metrics));
    if endpoints.store {
        router = router.nest("/admin/v1", admin::router(gw.clone()));
    }
    let router = body_timeout::within(router, gw.http.body_timeout, "admin");
    finish(router, gw)
}

fn health() -> Router<Gateway> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
}

fn finish(router: Router<Gateway>, gw: Gateway) -> Router {
    router
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such endpoint") })
        .layer(DefaultBodyLimit::max(protocol::MAX_FRAME_BYTES))
        .with_state(gw)
}

/// The core of this process, for endpoints that need the store.
fn local(gw: &Gateway) -> Result<&Core, ApiError> {
    gw.local
        .as_ref()
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "not served by this process"))
}

async fn register(
    State(gw): State<Gateway>,
    ClientIp(client): ClientIp,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: RegisterRequest = json_body(&body)?;
    let user_id = gw
        .core
        .register(req.username, req.password, req.invite, client)
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(RegisterResponse { user_id }),
    )
        .into_response())
}

async fn login(
    State(gw): State<Gateway>,
    ClientIp(client): ClientIp,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: LoginRequest = json_body(&body)?;
    let response = gw
        .core
        .login(req.username, req.password, req.device_name, client)
        .await?;
    Ok(axum::Json(response).into_response())
}

async fn logout(State(gw): State<Gateway>, headers: HeaderMap) -> Result<StatusCode, ApiError> {
    let ctx = device(&gw, &headers).await?;
    // Its connection closes too, wherever it is.
    gw.core.logout(&ctx).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Prometheus text format. Gauges mirroring other state are set here.
async fn metrics(State(gw): State<Gateway>) -> Response {
    let m = &crate::metrics::METRICS;
    let online = gw.local.as_ref().map_or(gw.hub.online(), Core::online);
    m.online_devices.set(online as i64);
    if let Some(core) = &gw.local {
        m.writer_queue.set(core.queue_depth() as i64);
        let stats = core.store_stats();
        m.store_write_buffer_bytes
            .set(stats.write_buffer_bytes as i64);
        m.store_journals.set(stats.journals as i64);
        m.store_outstanding_flushes
            .set(stats.outstanding_flushes as i64);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::render(),
    )
        .into_response()
}

async fn readyz(State(gw): State<Gateway>) -> Response {
    let nats_up = gw.nats.as_ref().is_none_or(Nats::is_connected);
    let store_ok = gw.local.as_ref().is_none_or(Core::store_healthy);
    if gw.ready.load(Ordering::Acquire) && nats_up && store_ok {
        (StatusCode::OK, "ready").into_response()
    } else if !store_ok {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the store failed a write; see the log and restart",
        )
            .into_response()
    } else if !nats_up {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: NATS is unreachable",
        )
            .into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

async fn websocket(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // With a header, a bad token is refused before the upgrade (401); without one,
    // the client authenticates with its first frame.
    let ctx = match bearer(&headers) {
        Some(_) => Some(device(&gw, &headers).await?),
        None => None,
    };
    let upgrade = upgrade.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.to_string()))?;
    if gw.shutdown.is_cancelled() {
        return Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: ErrorCode::Internal,
            message: "the node is shutting down".into(),
            retry_after_ms: None,
        });
    }
    let ws = gw.ws.clone();
    let sessions = gw.sessions.clone();
    Ok(upgrade
        .read_buffer_size(ws.read_buffer)
        .write_buffer_size(ws.write_buffer)
        // Results (a page of history) can be far larger than client frames.
        .max_write_buffer_size(64 << 20)
        .max_message_size(protocol::MAX_FRAME_BYTES)
        .max_frame_size(protocol::MAX_FRAME_BYTES)
        .on_upgrade(move |socket| sessions.track_future(session::run(gw, socket, ctx))))
}
