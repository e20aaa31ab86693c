//! Embedded-mode media endpoints: `PUT` and `GET /v1/media/{id}` at URLs the node
//! signs itself (see [`crate::media`]). In S3 mode the URLs point at the bucket
//! and these answer 404.
//!
//! The PUT streams the body into the store, stopping as soon as it exceeds the
//! declared size; it never holds a whole file in memory. Ids are parsed as ULIDs
//! before they reach a path, so no path traversal is possible.

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{ApiError, Gateway, local};
use crate::ids::AttachmentId;
use crate::media::{LocalDenied, LocalPutError, LocalQuery, Presentation};
use crate::protocol::ErrorCode;

pub(super) fn router() -> Router<Gateway> {
    // Browsers upload and download straight from their pages (any origin); the
    // URLs carry their own signature, no cookie is involved.
    let cors = tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods([axum::http::Method::GET, axum::http::Method::PUT])
        .allow_headers([
            header::CONTENT_TYPE,
            header::HeaderName::from_static(crate::media::CHECKSUM_HEADER),
        ]);
    Router::new()
        .route(
            "/v1/media/{id}",
            get(download)
                .put(upload)
                // Uploads are bounded by their signed size, not by the frame limit.
                .layer(DefaultBodyLimit::disable()),
        )
        .layer(cors)
}

fn denied(reason: LocalDenied) -> ApiError {
    match reason {
        LocalDenied::NotServed => ApiError::new(ErrorCode::NotFound, "media is not served here"),
        LocalDenied::BadSignature => ApiError::new(ErrorCode::Forbidden, "bad signature"),
        LocalDenied::Expired => ApiError::new(ErrorCode::Forbidden, "this URL has expired"),
    }
}

fn parse_id(id: &str) -> Result<AttachmentId, ApiError> {
    AttachmentId::parse(id).ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such attachment"))
}

async fn upload(
    State(gw): State<Gateway>,
    Path(id): Path<String>,
    Query(query): Query<LocalQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let checksum = headers
        .get(crate::media::CHECKSUM_HEADER)
        .and_then(|v| v.to_str().ok());
    let core = local(&gw)?;
    let media = core.media();
    media
        .verify_local("PUT", id, &query, content_type, checksum)
        .map_err(denied)?;
    let size = query.size.unwrap_or_default();
    let record = core
        .attachment(id)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such attachment"))?;
    if record.sent || record.sealed {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            code: ErrorCode::Forbidden,
            message: "this attachment was sent already and cannot change".into(),
            retry_after_ms: None,
        });
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > size) {
        return Err(too_large());
    }
    match media
        .put_local(id, size, checksum, body.into_data_stream())
        .await
    {
        Ok(()) => Ok(StatusCode::OK),
        Err(LocalPutError::TooLarge) => Err(too_large()),
        Err(LocalPutError::WrongSize { written }) => Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("got {written} bytes, the URL is for {size}"),
        )),
        Err(LocalPutError::WrongChecksum) => Err(ApiError::new(
            ErrorCode::BadRequest,
            "the body does not match the declared SHA-256",
        )),
        Err(LocalPutError::Body(e)) => Err(ApiError::new(ErrorCode::BadRequest, e)),
        Err(LocalPutError::Store(e)) => Err(crate::core::CoreError::from(e).into()),
    }
}

fn too_large() -> ApiError {
    ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        code: ErrorCode::AttachmentTooLarge,
        message: "the upload is larger than the URL allows".into(),
        retry_after_ms: None,
    }
}

async fn download(
    State(gw): State<Gateway>,
    Path(id): Path<String>,
    Query(query): Query<LocalQuery>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let core = local(&gw)?;
    let media = core.media();
    media
        .verify_local("GET", id, &query, None, None)
        .map_err(denied)?;
    let not_found = || ApiError::new(ErrorCode::NotFound, "no such attachment");
    let record = core.attachment(id).await?.ok_or_else(not_found)?;
    let stream = media
        .get_local(id, record.sealed)
        .await
        .map_err(crate::core::CoreError::from)?
        .ok_or_else(not_found)?;
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    // The same type and disposition an S3 URL signs in (`Presentation::of`).
    let presented = Presentation::of(&record.content_type, record.name.as_deref());
    if let Ok(ct) = HeaderValue::from_str(&presented.content_type) {
        headers.insert(header::CONTENT_TYPE, ct);
    }
    if let Ok(disposition) = HeaderValue::from_str(&presented.disposition) {
        headers.insert(header::CONTENT_DISPOSITION, disposition);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(record.size));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=3600"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Whatever was uploaded runs nothing if opened: no scripts, no plugins, an
    // opaque origin.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox"),
    );
    Ok(response)
}
