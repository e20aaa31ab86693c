//! The accept loop every HTTP listener of natterd runs (public and admin, in
//! every role): who may connect, and how long a connection may take to say
//! what it wants.
//!
//! Owns: the caps on open connections (in total and per remote address, checked
//! at accept, where a refusal costs nothing but the accept), the header-read
//! and keep-alive idle timeouts of each HTTP/1 connection, `TCP_NODELAY`, each
//! request's `ConnectInfo`, and draining connections at shutdown.
//! Does not own: routing or the request-body deadline (a route layer,
//! [`super::body_timeout`]), WebSocket sessions (they keep their own pings and
//! timeouts; see [`super::session`]).
//!
//! A connection holds its [`Slot`] until its socket closes, so an upgraded
//! WebSocket counts toward the caps for as long as it is open, while the HTTP
//! timeouts end at the upgrade: they watch the HTTP connection, and that is
//! over once it has become a WebSocket.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
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
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::client_ip::{TrustedProxies, client_ip};
use crate::metrics::{HttpLabels, ListenerLabels, METRICS};

/// `[http]`: the limits on every HTTP listener (docs/configuration.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// From accept (or from the first byte of a request on a kept-alive
    /// connection) to the end of the request's headers.
    pub header_read_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// From the end of the headers to the end of the request body.
    pub body_timeout: Duration,
    /// The same, for embedded media uploads (`PUT /v1/media/{id}`).
    pub upload_timeout: Duration,
    /// Open connections per listener, WebSockets included.
    pub max_connections: usize,
    /// Open connections per listener from one remote address (trusted proxies
    /// are exempt).
    pub max_connections_per_address: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            upload_timeout: Duration::from_secs(600),
            max_connections: 50_000,
            max_connections_per_address: 256,
        }
    }
}

impl HttpConfig {
    /// What is wrong with these settings, if anything.
    pub fn problem(&self) -> Option<&'static str> {
        let durations = [
            self.header_read_timeout,
            self.idle_timeout,
            self.body_timeout,
            self.upload_timeout,
        ];
        if durations.iter().any(Duration::is_zero) {
            return Some("timeouts must be longer than zero");
        }
        if self.max_connections == 0 || self.max_connections_per_address == 0 {
            return Some("connection caps must be at least 1");
        }
        None
    }
}

/// How one listener is served.
#[derive(Clone, Debug)]
pub struct Serving {
    /// `public` or `admin`: the `listener` label of its metrics.
    pub name: &'static str,
    pub http: HttpConfig,
    /// Exempt from the per-address cap (each carries many clients).
    pub trusted_proxies: TrustedProxies,
    /// Set `TCP_NODELAY` on accepted sockets.
    pub nodelay: bool,
    /// How long shutdown waits for HTTP requests in progress.
    pub grace: Duration,
}

/// Serves `router` on `listener` until `shutdown`, then stops accepting and
/// lets connections finish their requests (within `grace`). Upgraded
/// WebSockets are not waited for here: their sessions close on `shutdown`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    serving: Serving,
    shutdown: CancellationToken,
) {
    let caps = Arc::new(Caps::new(&serving));
    let connections = TaskTracker::new();
    let hard_stop = CancellationToken::new();
    loop {
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e, &shutdown).await;
                    continue;
                }
            },
        };
        let slot = match caps.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(reason) => {
                // Closed at once: nothing read, nothing written, nothing kept.
                METRICS
                    .http
                    .refused
                    .get_or_create(&HttpLabels {
                        listener: serving.name,
                        reason,
                    })
                    .inc();
                tracing::debug!(%peer, reason, "connection refused");
                continue;
            }
        };
        // Small frames must not wait for the client's TCP ack (Nagle): with it,
        // a delivery written while another is unacknowledged waits up to ~40 ms.
        if serving.nodelay
            && let Err(e) = tcp.set_nodelay(true)
        {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let conn = Connection {
            tcp,
            peer,
            slot,
            router: router.clone(),
            serving: serving.clone(),
            caps: caps.clone(),
        };
        connections.spawn(conn.run(shutdown.clone(), hard_stop.clone()));
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(serving.grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = serving.name,
            "some HTTP requests did not finish within the grace period"
        );
        hard_stop.cancel();
        connections.wait().await;
    }
}

/// A failed accept: a connection reset before it was taken is nothing; running
/// out of file descriptors is worth a line, and a pause (as axum does), or the
/// loop would spin.
async fn accept_failed(e: io::Error, shutdown: &CancellationToken) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed");
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(Duration::from_secs(1)) => {}
    }
}

// ----------------------------------------------------------- caps

/// The open connections of one listener, in total and per address.
struct Caps {
    name: &'static str,
    max_total: usize,
    max_per_address: usize,
    trusted_proxies: TrustedProxies,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    total: usize,
    /// Only addresses with a connection open: bounded by `max_total`.
    per_address: HashMap<IpAddr, usize>,
}

/// One connection's place under the caps, given back when it is dropped (with
/// the socket).
struct Slot {
    caps: Arc<Caps>,
    /// The address it counts against; `None` for a trusted proxy.
    address: Option<IpAddr>,
    /// A connection (counts toward the total), or a request that came through
    /// a trusted proxy (counts only against its client's address).
    connection: bool,
}

impl Caps {
    fn new(serving: &Serving) -> Self {
        Self {
            name: serving.name,
            max_total: serving.http.max_connections,
            max_per_address: serving.http.max_connections_per_address,
            trusted_proxies: serving.trusted_proxies.clone(),
            open: Mutex::default(),
        }
    }

    /// A slot for a connection from `ip`, or why there is none.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, &'static str> {
        let ip = ip.to_canonical();
        // A proxy speaks for many clients: they are counted by their forwarded
        // address, request by request ([`Caps::admit_forwarded`]).
        let address = (!self.trusted_proxies.trusts(ip)).then_some(ip);
        // A std mutex: held for a map update, never across an await.
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.total >= self.max_total {
            return Err("total");
        }
        if let Some(ip) = address {
            let count = open.per_address.entry(ip).or_default();
            if *count >= self.max_per_address {
                return Err("per_address");
            }
            *count += 1;
        }
        open.total += 1;
        self.gauge().inc();
        Ok(Slot {
            caps: self.clone(),
            address,
            connection: true,
        })
    }

    /// A place for a request that a trusted proxy forwarded for `client`, under
    /// the per-address cap only (the proxy's connection holds one of the total).
    fn admit_forwarded(self: &Arc<Self>, client: IpAddr) -> Result<Slot, &'static str> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.per_address.entry(client).or_default();
        if *count >= self.max_per_address {
            return Err("per_address");
        }
        *count += 1;
        Ok(Slot {
            caps: self.clone(),
            address: Some(client),
            connection: false,
        })
    }

    /// The slot a request from `peer` takes under the per-address cap when a
    /// trusted proxy forwarded it; `Ok(None)` for any other request (its
    /// connection's slot covers it).
    fn forwarded(
        self: &Arc<Self>,
        peer: IpAddr,
        headers: &axum::http::HeaderMap,
    ) -> Result<Option<Slot>, &'static str> {
        let peer = peer.to_canonical();
        if !self.trusted_proxies.trusts(peer) {
            return Ok(None);
        }
        let client = client_ip(peer, headers, &self.trusted_proxies);
        if self.trusted_proxies.trusts(client) {
            return Ok(None);
        }
        self.admit_forwarded(client).map(Some)
    }

    fn gauge(&self) -> prometheus_client::metrics::gauge::Gauge {
        METRICS
            .http
            .connections
            .get_or_create(&ListenerLabels {
                listener: self.name,
            })
            .clone()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.caps.open.lock().unwrap_or_else(|e| e.into_inner());
        if self.connection {
            open.total -= 1;
        }
        if let Some(ip) = self.address
            && let Some(count) = open.per_address.get_mut(&ip)
        {
            *count -= 1;
            if *count == 0 {
                open.per_address.remove(&ip);
            }
        }
        drop(open);
        if self.connection {
            self.caps.gauge().dec();
        }
    }
}

// ----------------------------------------------------------- one connection

struct Connection {
    tcp: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    router: Router,
    serving: Serving,
    caps: Arc<Caps>,
}

impl Connection {
    /// Serves HTTP/1 on the connection until it closes, times out, upgrades,
    /// or (after `graceful_shutdown`) finishes its request; `hard_stop` drops it.
    async fn run(self, shutdown: CancellationToken, hard_stop: CancellationToken) {
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
    super::ApiError {
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

    fn caps(total: usize, per_address: usize, proxies: &[&str]) -> Arc<Caps> {
        Arc::new(Caps::new(&Serving {
            name: "test",
            http: HttpConfig {
                max_connections: total,
                max_connections_per_address: per_address,
                ..HttpConfig::default()
            },
            trusted_proxies: TrustedProxies::parse(proxies).unwrap(),
            nodelay: false,
            grace: Duration::from_secs(1),
        }))
    }

    #[test]
    fn caps_count_per_address_and_in_total_and_give_back_on_drop() {
        let caps = caps(3, 2, &["10.0.0.1"]);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "::ffff:192.0.2.2".parse().unwrap();
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let a1 = caps.admit(a).unwrap();
        let _a2 = caps.admit(a).unwrap();
        assert_eq!(caps.admit(a).err(), Some("per_address"));
        drop(a1);
        let _a3 = caps.admit(a).unwrap();
        let b1 = caps.admit(b).unwrap();
        assert_eq!(caps.admit(proxy).err(), Some("total"));
        drop(b1);
        // A trusted proxy is held only by the total.
        let _p1 = caps.admit(proxy).unwrap();
        assert_eq!(caps.open.lock().unwrap().per_address.len(), 1);

        // Through the proxy, a client is counted by its forwarded address, with
        // its direct connections, but not toward the total (the proxy's
        // connection is).
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("x-forwarded-for", "192.0.2.9".parse().unwrap());
        let c1 = caps.forwarded(proxy, &headers).unwrap();
        let _c2 = caps.forwarded(proxy, &headers).unwrap();
        assert!(c1.is_some());
        assert_eq!(caps.forwarded(proxy, &headers).err(), Some("per_address"));
        drop(c1);
        assert!(caps.forwarded(proxy, &headers).unwrap().is_some());
        headers.insert("x-forwarded-for", "192.0.2.1".parse().unwrap());
        assert_eq!(caps.forwarded(proxy, &headers).err(), Some("per_address"));
        // Not from a proxy: the connection's own slot covers the request.
        assert!(caps.forwarded(b, &headers).unwrap().is_none());
        assert_eq!(caps.open.lock().unwrap().total, 3);
    }

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
