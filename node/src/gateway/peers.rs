//! The admin API's federation part (`/admin/v1/key`, `/admin/v1/key/rotate`,
//! `/admin/v1/peers...`), behind the admin token like the rest of
//! [`super::admin`]: this node's key and its rotation, and its peers, their
//! outboxes and dead letters.
//!
//! **Boundary**: the CLI parses these answers (`PeerList`, the core's
//! `PeerInfo` and `NodeIdentity`); extend them, never break them.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::{Deserialize, Serialize};

use super::{ApiError, Gateway, json_body, local};
use crate::core::federation::PeerInfo;

pub(super) fn routes() -> Router<Gateway> {
    Router::new()
        .route("/key", get(key))
        .route("/key/rotate", post(rotate))
        .route("/peers", get(list).post(add))
        .route("/peers/{node}", delete(remove))
        .route("/peers/{node}/outbox", get(outbox))
        .route("/peers/{node}/outbox/replay", post(replay))
}

/// The answer of `GET /peers`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerList {
    pub peers: Vec<PeerInfo>,
}

/// The body of `POST /peers`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddPeer {
    pub node: String,
    /// The peer's base URL (what its clients use).
    pub url: String,
    /// base64 of its 32-byte ed25519 public key.
    pub public_key: String,
}

/// The answer of `GET /peers/{node}/outbox` and of a replay.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetters {
    pub node: String,
    /// Each `{seq, queuedAt, event}`.
    pub dead_letters: Vec<serde_json::Value>,
    /// Whether they were put back in the outbox.
    pub replayed: bool,
}

async fn key(State(gw): State<Gateway>) -> Result<Response, ApiError> {
    Ok(axum::Json(local(&gw)?.identity()).into_response())
}

/// A new key; the old one verifies for `federation.key_overlap` more.
async fn rotate(State(gw): State<Gateway>) -> Result<Response, ApiError> {
    Ok(axum::Json(local(&gw)?.rotate_key().await?).into_response())
}

async fn list(State(gw): State<Gateway>) -> Result<Response, ApiError> {
    let peers = local(&gw)?.peers().await?;
    Ok(axum::Json(PeerList { peers }).into_response())
}

async fn add(State(gw): State<Gateway>, body: Bytes) -> Result<Response, ApiError> {
    let req: AddPeer = json_body(&body)?;
    let info = local(&gw)?
        .add_peer(&req.node, &req.url, &req.public_key)
        .await?;
    Ok((StatusCode::CREATED, axum::Json(info)).into_response())
}

async fn remove(
    State(gw): State<Gateway>,
    Path(node): Path<String>,
) -> Result<StatusCode, ApiError> {
    local(&gw)?.remove_peer(&node).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn outbox(State(gw): State<Gateway>, Path(node): Path<String>) -> Result<Response, ApiError> {
    dead_letters(&gw, node, false).await
}

async fn replay(State(gw): State<Gateway>, Path(node): Path<String>) -> Result<Response, ApiError> {
    dead_letters(&gw, node, true).await
}

async fn dead_letters(gw: &Gateway, node: String, replay: bool) -> Result<Response, ApiError> {
    let dead_letters = local(gw)?.dead_letters(&node, replay).await?;
    Ok(axum::Json(DeadLetters {
        node,
        dead_letters,
        replayed: replay,
    })
    .into_response())
}
