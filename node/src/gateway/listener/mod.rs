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

mod caps;
mod conn;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::client_ip::TrustedProxies;
use crate::metrics::{HttpLabels, METRICS};
use caps::Caps;
use conn::Connection;

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
