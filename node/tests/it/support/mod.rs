//! Test support: a real `natterd` process ([`TestNode`]) and a real WebSocket
//! client ([`WsClient`]). Waits use deadlines, never fixed sleeps.

pub mod nats;
pub mod node;
pub mod s3;
pub mod ws;

pub use node::TestNode;
pub use ws::WsClient;

use std::time::Duration;

/// How long any single wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Polls `check` until it returns `Some`, failing after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
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
