//! The request-body deadline: a route layer that gives a request's body a
//! fixed time to arrive in full, counted from the end of its headers
//! (`http.body_timeout`; `http.upload_timeout` for embedded media uploads).
//!
//! A whole-body deadline, not a per-read one: a client trickling one byte a
//! second makes progress on every read and would never meet a per-read timeout.
//! When it passes, the handler's read fails, and the answer is replaced by
//! `408` with `Connection: close`, so the rest of the body is never read.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::{Frame, SizeHint};
use tokio::time::Sleep;

use super::{ApiError, Gateway};
use crate::metrics::{HttpLabels, METRICS};
use crate::protocol::ErrorCode;

/// `router`'s routes (those added so far), with bodies due within `limit`.
pub(super) fn within(
    router: Router<Gateway>,
    limit: Duration,
    listener: &'static str,
) -> Router<Gateway> {
    router.layer(axum::middleware::from_fn_with_state(
        (limit, listener),
        deadline,
    ))
}

async fn deadline(
    State((limit, listener)): State<(Duration, &'static str)>,
    request: Request,
    next: Next,
) -> Response {
    if http_body::Body::is_end_stream(request.body()) {
        return next.run(request).await;
    }
    let expired = Arc::new(AtomicBool::new(false));
    let request = request.map(|body| {
        Body::new(Deadline {
            body,
            sleep: Box::pin(tokio::time::sleep(limit)),
            expired: expired.clone(),
        })
    });
    let response = next.run(request).await;
    if !expired.load(Ordering::Acquire) {
        return response;
    }
    METRICS
        .http
        .timeouts
        .get_or_create(&HttpLabels {
            listener,
            reason: "body",
        })
        .inc();
    let mut response = ApiError {
        status: StatusCode::REQUEST_TIMEOUT,
        code: ErrorCode::BadRequest,
        message: format!("the request body did not arrive within {limit:?}"),
        retry_after_ms: None,
    }
    .into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A request body that fails once its deadline has passed.
struct Deadline {
    body: Body,
    sleep: Pin<Box<Sleep>>,
    expired: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyTimedOut;

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if this.body.is_end_stream() {
            return Pin::new(&mut this.body).poll_frame(cx);
        }
        // The deadline first: a body that always has a byte ready must not
        // outrun it.
        if this.sleep.as_mut().poll(cx).is_ready() {
            this.expired.store(true, Ordering::Release);
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut))));
        }
        Pin::new(&mut this.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
