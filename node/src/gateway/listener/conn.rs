//! One HTTP/1 connection: hyper's connection with upgrades, its header-read
//! and idle timeouts ([`ConnState`]), the socket wrapper that holds its
//! [`Slot`], and the service that calls the router for each request.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode};
use axum::response::IntoResponse;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::caps::{Caps, Slot};
use super::{HttpConfig, Serving};
use crate::metrics::{HttpLabels, METRICS};

pub(super) struct Connection {
    pub(super) tcp: TcpStream,
    pub(super) peer: SocketAddr,
    pub(super) slot: Slot,
    pub(super) router: Router,
    pub(super) serving: Serving,
    pub(super) caps: Arc<Caps>,
}

impl Connection {
    /// Serves HTTP/1 on the connection until it closes, times out, upgrades,
    /// or (after `graceful_shutdown`) finishes its request; `hard_stop` drops it.
    pub(super) async fn run(self, shutdown: CancellationToken, hard_stop: CancellationToken) {
        let state = Arc::new(ConnState::new());
        let io = TokioIo::new(Io {
            _slot: self.slot,
            tcp: self.tcp,
            state: state.clone(),
        });
        let service = ConnService {
            router: self.router,
            peer: self.peer,
            state: state.clone(),
            caps: self.caps,
            listener: self.serving.name,
        };
        // hyper's own header timeout also runs while a kept-alive connection
        // waits, so it could not be told apart from the idle timeout: both are
        // `ConnState`'s instead.
        let conn = hyper::server::conn::http1::Builder::new()
            .header_read_timeout(None)
            .keep_alive(true)
            .serve_connection(io, service)
            .with_upgrades();
        let mut conn = Box::pin(conn);
        let mut expired = pin!(state.expired(self.serving.http));
        let mut draining = false;
        loop {
            tokio::select! {
                served = conn.as_mut() => {
                    if let Err(e) = served {
                        tracing::debug!(peer = %self.peer, error = %e, "HTTP connection failed");
                    }
                    return;
                }
                reason = expired.as_mut() => {
                    METRICS
                        .http.timeouts
                        .get_or_create(&HttpLabels { listener: self.serving.name, reason })
                        .inc();
                    tracing::debug!(peer = %self.peer, reason, "HTTP connection timed out");
                    return;
                }
                () = shutdown.cancelled(), if !draining => {
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                }
                () = hard_stop.cancelled() => return,
            }
        }
    }
}

/// Where an HTTP/1 connection is between requests, for its timeouts. Times are
/// milliseconds since the accept; atomics, because the socket (reads), the
/// service (requests) and the connection's task (the timer) all touch it.
struct ConnState {
    start: Instant,
    /// Requests between their headers and the end of their response.
    busy: AtomicUsize,
    /// When the last response ended.
    idle_since: AtomicU64,
    /// When the next request's first byte came ([`NOT_YET`]: none since
    /// `idle_since`). A new connection counts as started at its accept: its
    /// first request's headers must arrive within `header_read_timeout`.
    head_since: AtomicU64,
    /// Woken when a deadline may have moved closer.
    changed: Notify,
    /// The forwarded client's slot of a request that became a WebSocket: held
    /// as long as the socket, like the connection's own.
    upgraded: Mutex<Option<Slot>>,
}

const NOT_YET: u64 = u64::MAX;

impl ConnState {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            busy: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            changed: Notify::new(),
            upgraded: Mutex::new(None),
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Bytes arrived: the first since the connection went idle start the next
    /// request's header timeout.
    fn on_read(&self) {
        if self.busy.load(Ordering::SeqCst) == 0
            && self.head_since.load(Ordering::SeqCst) == NOT_YET
            && self
                .head_since
                .compare_exchange(NOT_YET, self.now_ms(), Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            self.changed.notify_one();
        }
    }

    fn request_started(&self) {
        self.busy.fetch_add(1, Ordering::SeqCst);
    }

    fn request_ended(&self) {
        self.idle_since.store(self.now_ms(), Ordering::SeqCst);
        self.head_since.store(NOT_YET, Ordering::SeqCst);
        self.busy.fetch_sub(1, Ordering::SeqCst);
        self.changed.notify_one();
    }

    /// When the connection times out as things stand, and why; `None` while a
    /// request is being handled (its body has its own deadline).
    fn deadline(&self, http: &HttpConfig) -> Option<(Instant, &'static str)> {
        if self.busy.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let at = |ms: u64, after: Duration| self.start + Duration::from_millis(ms) + after;
        match self.head_since.load(Ordering::SeqCst) {
            NOT_YET => {
                let since = self.idle_since.load(Ordering::SeqCst);
                Some((at(since, http.idle_timeout), "idle"))
            }
            since => Some((at(since, http.header_read_timeout), "header")),
        }
    }

    /// Resolves once the connection has waited too long for a request's headers
    /// (`header`) or for its next request (`idle`).
    async fn expired(&self, http: HttpConfig) -> &'static str {
        loop {
            match self.deadline(&http) {
                None => self.changed.notified().await,
                Some((at, reason)) if at <= Instant::now() => return reason,
                Some((at, _)) => {
                    tokio::select! {
                        () = self.changed.notified() => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
            }
        }
    }
}

/// The socket, noting reads for the timeouts and holding the connection's
/// [`Slot`] for as long as it is open (through a WebSocket upgrade too).
struct Io {
    // Given back before the socket closes, so a client that saw the close may
    // connect again at once.
    _slot: Slot,
    tcp: TcpStream,
    state: Arc<ConnState>,
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.state.on_read();
        }
        read
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// The router, as hyper calls it for one connection: each request gets the
/// peer's address (`ConnectInfo`, for `ClientIp`), takes its client's place
/// under the per-address cap when a trusted proxy forwarded it, and counts as
/// in progress until its response body is dropped.
struct ConnService {
    router: Router,
    peer: SocketAddr,
    state: Arc<ConnState>,
    caps: Arc<Caps>,
    listener: &'static str,
}

type ServiceFuture =
    Pin<Box<dyn Future<Output = Result<Response<Tracked>, Infallible>> + Send + 'static>>;

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<Tracked>;
    type Error = Infallible;
    type Future = ServiceFuture;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::start(self.state.clone());
        let forwarded = match self.caps.forwarded(self.peer.ip(), request.headers()) {
            Ok(slot) => slot,
            Err(reason) => {
                let refusal = refused(self.listener, reason);
                return Box::pin(async move {
                    Ok(refusal.map(|body| Tracked::new(body, in_flight, None)))
                });
            }
        };
        request.extensions_mut().insert(ConnectInfo(self.peer));
        let response = tower_service::Service::call(&mut self.router.clone(), request);
        let state = self.state.clone();
        Box::pin(async move {
            let response = response.await?;
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                // A WebSocket: the client keeps its place while it is open.
                *state.upgraded.lock().unwrap_or_else(|e| e.into_inner()) = forwarded;
                return Ok(response.map(|body| Tracked::new(body, in_flight, None)));
            }
            Ok(response.map(|body| Tracked::new(body, in_flight, forwarded)))
        })
    }
}

/// The answer to a request forwarded for a client that has its cap's worth
/// of connections open: `503` with `Retry-After`.
fn refused(listener: &'static str, reason: &'static str) -> Response<Body> {
    METRICS
        .http
        .refused
        .get_or_create(&HttpLabels { listener, reason })
        .inc();
    crate::gateway::ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: crate::protocol::ErrorCode::Unavailable,
        message: "too many connections from this address".into(),
        retry_after_ms: Some(1000),
    }
    .into_response()
}

/// A request in progress: from its headers until its response is sent (or
/// the connection dropped).
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn start(state: Arc<ConnState>) -> Self {
        state.request_started();
        Self(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// A response body that ends its request when hyper drops it.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
    /// A forwarded client's place, given back with the response.
    _forwarded: Option<Slot>,
}

impl Tracked {
    fn new(body: Body, in_flight: InFlight, forwarded: Option<Slot>) -> Self {
        Self {
            body,
            _in_flight: in_flight,
            _forwarded: forwarded,
        }
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_has_the_header_timeout_then_idle_after_a_request() {
        let http = HttpConfig {
            header_read_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(5),
            ..HttpConfig::default()
        };
        let state = Arc::new(ConnState::new());
        let start = Instant::now();
        assert_eq!(state.expired(http).await, "header");
        assert_eq!(start.elapsed(), Duration::from_secs(2));

        let state = Arc::new(ConnState::new());
        let request = InFlight::start(state.clone());
        assert_eq!(state.deadline(&http), None);
        tokio::time::advance(Duration::from_secs(100)).await;
        drop(request);
        let idle = Instant::now();
        let (at, reason) = state.deadline(&http).unwrap();
        assert_eq!((at - idle, reason), (Duration::from_secs(5), "idle"));
        tokio::time::advance(Duration::from_secs(1)).await;
        state.on_read();
        let (at, reason) = state.deadline(&http).unwrap();
        assert_eq!((at - idle, reason), (Duration::from_secs(3), "header"));
    }
}
