//! The federation endpoints a node serves to its peers, and its well-known
//! document.
//!
//! Every request under `/federation/v1/` is verified before anything else
//! (`verified`, a route layer): signature, key, destination, clock window,
//! digest and replay, in the order docs/federation.md gives. Only then is the
//! body parsed, and the core decides what the peer may do (act only for its own
//! users; send only the events of chats whose home it is).

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{OriginalUri, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde::Serialize;

use super::{ApiError, Gateway, local, status_for};
use crate::core::CoreError;
use crate::core::federation::{EventsRefused, OUT_OF_ORDER, PeerRequest};
use crate::federation::events::{
    ActionBatch, ActionRequest, AttachmentUrlRequest, EventBatch, KeyAnnouncement,
};
use crate::federation::rfc9421::Message;
use crate::protocol::ErrorCode;

/// The largest body a peer may send (a batch of events).
pub(super) const MAX_BODY: usize = 8 << 20;

/// The peer a verified request came from (and its key), and its body.
#[derive(Clone)]
struct Verified {
    from: PeerRequest,
    body: Bytes,
}

/// A refusal: `{"code","message"}`, and for event batches how far the batch
/// was applied.
#[derive(Serialize)]
struct Refusal {
    code: String,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    applied: Option<u64>,
}

/// A refusal with its status.
struct Refused(StatusCode, Refusal);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        (self.0, axum::Json(self.1)).into_response()
    }
}

fn refuse(status: StatusCode, code: &str, message: String, applied: Option<u64>) -> Refused {
    let body = Refusal {
        code: code.to_owned(),
        message,
        applied,
    };
    Refused(status, body)
}

fn refuse_core(e: &CoreError, applied: Option<u64>) -> Refused {
    if !matches!(e, CoreError::Rejected { .. }) {
        tracing::error!(error = %e, "federation request failed");
    }
    let code = e.code();
    refuse(status_for(code), code.as_str(), e.public_message(), applied)
}

pub(super) fn router(gw: &Gateway) -> Router<Gateway> {
    Router::new()
        .route("/federation/v1/events", post(events))
        .route("/federation/v1/actions", post(actions))
        .route("/federation/v1/attachment-url", post(attachment_url))
        .route("/federation/v1/keys", post(keys))
        // `{*rest}` needs a segment: `/federation/v1/` itself is verified too.
        .route("/federation/v1/", any(no_such_endpoint))
        .route("/federation/v1/{*rest}", any(no_such_endpoint))
        .route_layer(middleware::from_fn_with_state(gw.clone(), verified))
        .route("/.well-known/natter/node", get(well_known))
}

async fn no_such_endpoint() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint")
}

/// Verifies a signed request before its handler runs; answers 401 (or 403 for
/// another destination) with the reason otherwise.
async fn verified(
    State(gw): State<Gateway>,
    OriginalUri(uri): OriginalUri,
    request: Request,
    next: Next,
) -> Response {
    let Ok(core) = local(&gw) else {
        return ApiError::new(ErrorCode::NotFound, "not served by this process").into_response();
    };
    let (mut parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "bad_request",
            format!("bodies are at most {MAX_BODY} bytes"),
            None,
        )
        .into_response();
    };
    let headers: Vec<(&str, &str)> = parts
        .headers
        .iter()
        .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)))
        .collect();
    let authority = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let message = Message {
        method: parts.method.as_str(),
        authority,
        path: uri.path(),
        query: uri.query(),
        headers: &headers,
    };
    match core.verify_peer_request(&message, &body) {
        Ok(from) => {
            core.peer_contacted(&from.origin);
            parts.extensions.insert(Verified { from, body });
            next.run(Request::from_parts(parts, Body::empty())).await
        }
        Err(e) => {
            tracing::warn!(reason = %e, path = uri.path(), "refused a federation request");
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
            refuse(status, e.code(), e.to_string(), None).into_response()
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Refused> {
    serde_json::from_slice(body).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("invalid body: {e}"),
            None,
        )
    })
}

fn from_value<T: serde::de::DeserializeOwned>(body: serde_json::Value) -> Result<T, Refused> {
    serde_json::from_value(body).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("invalid body: {e}"),
            None,
        )
    })
}

/// A home's events for chats with participants here.
async fn events(
    State(gw): State<Gateway>,
    axum::Extension(v): axum::Extension<Verified>,
) -> Result<Response, Refused> {
    let batch: EventBatch = parse(&v.body)?;
    let core = local(&gw).map_err(|e| refuse(e.status, e.code.as_str(), e.message, None))?;
    match core.apply_events(v.from.origin, batch).await {
        Ok(applied) => Ok(axum::Json(applied).into_response()),
        Err(EventsRefused::Event(e, applied)) => Err(refuse_core(&e, Some(applied))),
        Err(EventsRefused::Failed(e)) => Err(refuse_core(&e, None)),
        // No `applied` here: the sender must not take it for a refused event.
        Err(EventsRefused::OutOfOrder(applied)) => Err(refuse(
            StatusCode::CONFLICT,
            OUT_OF_ORDER,
            format!("the batch before this one is not applied (applied up to {applied})"),
            None,
        )),
    }
}

/// A peer's user acts in a chat whose home is this node.
async fn actions(
    State(gw): State<Gateway>,
    axum::Extension(v): axum::Extension<Verified>,
) -> Result<Response, Refused> {
    let body: serde_json::Value = parse(&v.body)?;
    let core = local(&gw).map_err(|e| refuse(e.status, e.code.as_str(), e.message, None))?;
    // Several actions (`{"actions": [...]}`), or one, the first form.
    let answered = if body.get("actions").is_some() {
        let batch: ActionBatch = from_value(body)?;
        core.act_batch(&v.from.origin, batch)
            .await
            .map(|results| axum::Json(results).into_response())
    } else {
        let request: ActionRequest = from_value(body)?;
        core.act(&v.from.origin, request)
            .await
            .map(|result| axum::Json(result).into_response())
    };
    answered.map_err(|e| refuse_core(&e, None))
}

/// A peer's new key, announced with the key it retires.
async fn keys(
    State(gw): State<Gateway>,
    axum::Extension(v): axum::Extension<Verified>,
) -> Result<Response, Refused> {
    let announcement: KeyAnnouncement = parse(&v.body)?;
    let core = local(&gw).map_err(|e| refuse(e.status, e.code.as_str(), e.message, None))?;
    match core.accept_peer_key(&v.from, announcement).await {
        Ok(accepted) => Ok(axum::Json(accepted).into_response()),
        Err(e) => Err(refuse_core(&e, None)),
    }
}

/// `/.well-known/natter/node`: the node's name, keys and federation URL. Public,
/// unsigned; peers may fetch a key here, but trust comes from an admin.
async fn well_known(State(gw): State<Gateway>) -> Result<Response, ApiError> {
    Ok(axum::Json(local(&gw)?.identity().document()).into_response())
}

/// A peer's user asks for a download URL of an attachment held here.
async fn attachment_url(
    State(gw): State<Gateway>,
    axum::Extension(v): axum::Extension<Verified>,
) -> Result<Response, Refused> {
    let request: AttachmentUrlRequest = parse(&v.body)?;
    let core = local(&gw).map_err(|e| refuse(e.status, e.code.as_str(), e.message, None))?;
    match core.attachment_url_for_peer(&v.from.origin, request).await {
        Ok(result) => Ok(axum::Json(result).into_response()),
        Err(e) => Err(refuse_core(&e, None)),
    }
}
