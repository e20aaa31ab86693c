//! Test support: a real `natterd` process ([`TestNode`]) and a real WebSocket
//! client ([`WsClient`]). Waits use deadlines, never fixed sleeps.

pub(crate) mod nats;
pub(crate) mod node;
pub(crate) mod s3;
pub(crate) mod slow_proxy;
pub(crate) mod ws;

pub(crate) use node::TestNode;
pub(crate) use ws::WsClient;

use std::time::Duration;

/// How long any single wait may take before the test fails.
pub(crate) const DEADLINE: Duration = Duration::from_secs(15);

/// Polls `check` until it returns `Some`, failing after [`DEADLINE`].
pub(crate) async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    // Re-checks the condition every 20 ms until the deadline.
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    loop {
        poll.tick().await;
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
    }
}

/// A TCP connection to `to` from the local address `from` (any of
/// 127.0.0.0/8 is loopback: tests stand for several clients this way).
pub(crate) async fn connect_from(
    from: std::net::IpAddr,
    to: std::net::SocketAddr,
) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(std::net::SocketAddr::new(from, 0))
        .expect("bind a loopback address");
    tokio::time::timeout(DEADLINE, socket.connect(to))
        .await
        .expect("connect in time")
        .expect("connect")
}
