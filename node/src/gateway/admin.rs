//! The admin HTTP API (`/admin/v1/...`), used by the `natter` CLI.
//!
//! Every request needs `Authorization: Bearer <admin token>`; the token is made on
//! first start and kept in `<data>/admin.token`, readable only by its owner. One
//! route layer ([`require_admin`]) checks it before any handler runs.
//!
//! **Boundary**: the answers' types ([`AddedUser`], [`UserList`], [`NodeStatus`],
//! [`DeviceList`], [`InviteList`], [`ChatList`], and the core's `Invite`,
//! `SweepReport` and those of `core::admin`) are public so that the CLI parses
//! the node's own types; extend them, never break them.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::{Deserialize, Serialize};

use super::{ApiError, Gateway, bearer, json_body, local};
use crate::auth;
use crate::core::{ChatInfo, DeviceInfo, InviteInfo, Registration, UserInfo};
use crate::protocol::ErrorCode;
use crate::store::StoreStats;

pub(super) fn router(gw: Gateway) -> Router<Gateway> {
    Router::new()
        .route("/users", get(list_users).post(add_user))
        .route("/users/{name}", get(show_user).delete(delete_user))
        .route("/users/{name}/password", post(reset_password))
        .route("/users/{name}/disable", post(disable_user))
        .route("/users/{name}/enable", post(enable_user))
        .route("/users/{name}/devices", get(list_devices).post(add_device))
        .route("/users/{name}/devices/{device}", delete(revoke_device))
        .route("/invites", get(list_invites).post(create_invite))
        .route("/invites/{code}", delete(revoke_invite))
        .route("/chats", get(list_chats))
        .route("/chats/{chat}", get(show_chat).delete(delete_chat))
        .route("/stats", get(stats))
        .route("/sweep", post(sweep))
        .route("/clock", post(advance_clock))
        .route("/store-fault", post(store_fault))
        .route("/inbox-read-gate", post(inbox_read_gate))
        .route("/status", get(status))
        .route("/backup", get(backup))
        .merge(super::peers::routes())
        // A route layer: unknown paths stay 404 without a token.
        .route_layer(middleware::from_fn_with_state(gw, require_admin))
}

/// Refuses the request unless it carries the admin token.
async fn require_admin(
    State(gw): State<Gateway>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = bearer(request.headers())
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "missing admin token"))?;
    // Comparing hashes keeps the comparison time independent of the token.
    if auth::token_hash(token) != gw.admin_token_hash {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "invalid admin token",
        ));
    }
    Ok(next.run(request).await)
}

/// Answers in the key order this API has always used: sorted, as a
/// `serde_json::Value` (whose map is ordered by key) serializes them.
fn sorted_json(body: &impl Serialize) -> Response {
    // Serializing these plain structs cannot fail.
    axum::Json(serde_json::to_value(body).unwrap_or_default()).into_response()
}

/// The answer of `GET /users`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserList {
    pub users: Vec<UserInfo>,
}

async fn list_users(State(gw): State<Gateway>) -> Result<Response, ApiError> {
    let users = local(&gw)?.list_users().await?;
    Ok(sorted_json(&UserList { users }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddUser {
    username: String,
    password: Option<String>,
}

/// The answer of `POST /users`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddedUser {
    pub user_id: String,
    /// Present when the node generated the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

async fn add_user(State(gw): State<Gateway>, body: Bytes) -> Result<Response, ApiError> {
    let req: AddUser = json_body(&body)?;
    let (password, generated) = match req.password {
        Some(p) => (p, None),
        None => {
            let p = auth::new_invite_code();
            (p.clone(), Some(p))
        }
    };
    let user_id = local(&gw)?.add_user(&req.username, &password).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(AddedUser {
            user_id,
            password: generated,
        }),
    )
        .into_response())
}

async fn disable_user(
    State(gw): State<Gateway>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    // Open connections of the user close too, wherever they are.
    local(&gw)?.set_user_disabled(&name, true).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn enable_user(
    State(gw): State<Gateway>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    local(&gw)?.set_user_disabled(&name, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AddDevice {
    device_name: Option<String>,
}

/// Creates a device for a user without its password (provisioning bots, load tests).
async fn add_device(
    State(gw): State<Gateway>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: AddDevice = if body.is_empty() {
        AddDevice::default()
    } else {
        json_body(&body)?
    };
    let login = local(&gw)?.add_device(&name, req.device_name).await?;
    Ok((StatusCode::CREATED, axum::Json(login)).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateInvite {
    uses: Option<u32>,
    /// e.g. "7d"
    ttl: Option<String>,
}

async fn create_invite(State(gw): State<Gateway>, body: Bytes) -> Result<Response, ApiError> {
    let req: CreateInvite = if body.is_empty() {
        CreateInvite::default()
    } else {
        json_body(&body)?
    };
    let ttl_ms = match req.ttl {
        Some(ttl) => Some(
            humantime::parse_duration(&ttl)
                .map(crate::clock::millis)
                .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("ttl: {e}")))?,
        ),
        None => None,
    };
    let invite = local(&gw)?
        .create_invite(req.uses.unwrap_or(1), ttl_ms)
        .await?;
    Ok((StatusCode::CREATED, axum::Json(invite)).into_response())
}

async fn sweep(State(gw): State<Gateway>) -> Result<Response, ApiError> {
    let report = local(&gw)?.sweep().await?;
    Ok(axum::Json(report).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AdvanceClock {
    advance_ms: i64,
}

/// Moves the node's clock forward. Only with `testing.adjustable_clock = true`.
async fn advance_clock(State(gw): State<Gateway>, body: Bytes) -> Result<Response, ApiError> {
    let req: AdvanceClock = json_body(&body)?;
    if !local(&gw)?.clock().advance(req.advance_ms) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "the clock is not adjustable (testing.adjustable_clock) or the step is negative",
        ));
    }
    let now = local(&gw)?.clock().now_ms();
    Ok(axum::Json(serde_json::json!({ "now": crate::clock::rfc3339(now) })).into_response())
}

/// Makes the store's next commit fail. Only with `testing.store_faults = true`.
async fn store_fault(State(gw): State<Gateway>) -> Result<StatusCode, ApiError> {
    if !local(&gw)?.inject_store_fault() {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "store faults are off (testing.store_faults)",
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct GateRequest {
    closed: bool,
}

/// Closes (`{"closed":true}`) or opens the gate that holds inbox reads, as a
/// slow disk would. Only with `testing.inbox_read_gate = true`.
async fn inbox_read_gate(State(gw): State<Gateway>, body: Bytes) -> Result<StatusCode, ApiError> {
    let req: GateRequest = json_body(&body)?;
    if !local(&gw)?.hold_inbox_reads(req.closed) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "the inbox read gate is off (testing.inbox_read_gate)",
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The answer of `GET /status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub node: String,
    /// `core` or `all-in-one`.
    pub role: String,
    /// natterd's version.
    pub version: String,
    pub online_devices: usize,
    pub registration: Registration,
    pub store: StoreStats,
}

async fn status(State(gw): State<Gateway>) -> Result<Response, ApiError> {
    let core = local(&gw)?;
    let role = if gw.nats.is_some() {
        "core"
    } else {
        "all-in-one"
    };
    Ok(sorted_json(&NodeStatus {
        node: gw.core.node().as_str().to_owned(),
        role: role.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        online_devices: core.online(),
        registration: core.config().registration,
        store: core.store_stats(),
    }))
}

async fn show_user(
    State(gw): State<Gateway>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(sorted_json(&local(&gw)?.user_detail(&name).await?))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ResetPassword {
    password: Option<String>,
}

/// A new password (generated and answered when the body has none).
async fn reset_password(
    State(gw): State<Gateway>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: ResetPassword = if body.is_empty() {
        ResetPassword::default()
    } else {
        json_body(&body)?
    };
    let (password, generated) = match req.password {
        Some(p) => (p, None),
        None => {
            let p = auth::new_invite_code();
            (p.clone(), Some(p))
        }
    };
    let core = local(&gw)?;
    core.reset_password(&name, &password).await?;
    let user_id = core.user_detail(&name).await?.user_id;
    Ok(sorted_json(&AddedUser {
        user_id,
        password: generated,
    }))
}

async fn delete_user(
    State(gw): State<Gateway>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(sorted_json(&local(&gw)?.delete_user(&name).await?))
}

/// The answer of `GET /users/{name}/devices`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeviceList {
    pub devices: Vec<DeviceInfo>,
}

async fn list_devices(
    State(gw): State<Gateway>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let devices = local(&gw)?.devices(&name).await?;
    Ok(sorted_json(&DeviceList { devices }))
}

async fn revoke_device(
    State(gw): State<Gateway>,
    Path((name, device)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    local(&gw)?.revoke_device(&name, &device).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The answer of `GET /invites`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InviteList {
    pub invites: Vec<InviteInfo>,
}

async fn list_invites(State(gw): State<Gateway>) -> Result<Response, ApiError> {
    let invites = local(&gw)?.invites().await?;
    Ok(sorted_json(&InviteList { invites }))
}

async fn revoke_invite(
    State(gw): State<Gateway>,
    Path(code): Path<String>,
) -> Result<StatusCode, ApiError> {
    local(&gw)?.revoke_invite(&code).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatQuery {
    /// Only this user's chats.
    user: Option<String>,
    /// The page after this chat id.
    after: Option<String>,
    limit: Option<usize>,
}

/// The answer of `GET /chats`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatList {
    pub chats: Vec<ChatInfo>,
    /// Present when more chats follow: pass it as `after`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

async fn list_chats(
    State(gw): State<Gateway>,
    Query(q): Query<ChatQuery>,
) -> Result<Response, ApiError> {
    let (chats, next_after) = local(&gw)?
        .chats(
            q.user.as_deref(),
            q.after.as_deref(),
            q.limit.unwrap_or(1000),
        )
        .await?;
    Ok(sorted_json(&ChatList { chats, next_after }))
}

async fn show_chat(
    State(gw): State<Gateway>,
    Path(chat): Path<String>,
) -> Result<Response, ApiError> {
    Ok(sorted_json(&local(&gw)?.chat_detail(&chat).await?))
}

async fn delete_chat(
    State(gw): State<Gateway>,
    Path(chat): Path<String>,
) -> Result<Response, ApiError> {
    Ok(sorted_json(&local(&gw)?.delete_chat(&chat).await?))
}

async fn stats(State(gw): State<Gateway>) -> Result<Response, ApiError> {
    Ok(sorted_json(&local(&gw)?.stats().await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupQuery {
    #[serde(default)]
    media: bool,
}

/// The response header with the node's estimate of a backup's size, bytes.
pub const BACKUP_ESTIMATE_HEADER: &str = "x-natter-backup-estimate";

/// `GET /backup?media=true`: a backup archive (`crate::backup`), streamed
/// while the node keeps serving.
async fn backup(
    State(gw): State<Gateway>,
    Query(query): Query<BackupQuery>,
) -> Result<Response, ApiError> {
    let core = local(&gw)?;
    let source = gw
        .backup
        .as_ref()
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "not served by this process"))?;
    let started = crate::backup::start(core, source, query.media).map_err(|e| match e {
        crate::backup::BackupError::Refused(m) => ApiError::new(ErrorCode::BadRequest, m),
        e => ApiError::new(ErrorCode::Internal, e.to_string()),
    })?;
    tracing::info!(
        media = query.media,
        estimate = started.estimate,
        "backup started"
    );
    let body = axum::body::Body::from_stream(tokio_stream_of(started.body));
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/x-tar".to_owned(),
            ),
            (
                axum::http::HeaderName::from_static(BACKUP_ESTIMATE_HEADER),
                started.estimate.to_string(),
            ),
        ],
        body,
    )
        .into_response())
}

/// The receiver as a stream of body pieces.
fn tokio_stream_of(
    mut rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
