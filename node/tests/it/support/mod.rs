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
