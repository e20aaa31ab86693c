//! Prometheus metrics, served at `GET /metrics` in the text exposition format.
//!
//! One process-wide registry: the instruments are static so that hot paths (the
//! writer, sessions) bump an atomic without threading a handle through every
//! call. Gauges that mirror state elsewhere (online devices, queue depths, store
//! numbers) are set when scraped, by [`render`]'s caller.

use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CommandLabels {
    /// The command's `type`.
    pub command: &'static str,
    /// `ok`, or the error code.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ThrottleLabels {
    /// The limit that refused: `attempts`, `user_failures` or `address_failures`.
    pub reason: &'static str,
}

/// One HTTP listener (`public`, `admin`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ListenerLabels {
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HttpLabels {
    pub listener: &'static str,
    /// Refusals: `total` or `per_address` (the cap that was full). Timeouts:
    /// `header`, `idle` or `body`.
    pub reason: &'static str,
}

pub(crate) struct Metrics {
    registry: Registry,
    pub sessions_opened: Counter,
    pub sessions_slow: Counter,
    pub commands: Family<CommandLabels, Counter>,
    pub events_sent: Counter,
    pub delivery_latency: Histogram,
    pub commits: Counter,
    pub commit_seconds: Histogram,
    pub commit_group: Histogram,
    pub publish_failures: Counter,
    pub federation_seq_conflicts: Counter,
    pub password_hashes: Counter,
    pub logins_throttled: Family<ThrottleLabels, Counter>,
    pub online_devices: Gauge,
    pub writer_queue: Gauge,
    pub store_write_buffer_bytes: Gauge,
    pub store_journals: Gauge,
    pub store_outstanding_flushes: Gauge,
    pub inbox_reads_waiting: Gauge,
    pub inbox_reads_in_flight: Gauge,
    pub inbox_reads_in_flight_max: Gauge,
    pub rpc_lanes: Gauge,
    pub http: HttpMetrics,
}

/// The HTTP listeners' instruments (gateway::listener, gateway::body_timeout).
#[derive(Default)]
pub(crate) struct HttpMetrics {
    pub connections: Family<ListenerLabels, Gauge>,
    pub refused: Family<HttpLabels, Counter>,
    pub timeouts: Family<HttpLabels, Counter>,
}

pub(crate) static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("natter");
        let m = Self {
            sessions_opened: Counter::default(),
            sessions_slow: Counter::default(),
            commands: Family::default(),
            events_sent: Counter::default(),
            // 0.1 ms .. ~6.5 s
            delivery_latency: Histogram::new(exponential_buckets(0.0001, 2.0, 17)),
            commits: Counter::default(),
            commit_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
            commit_group: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            publish_failures: Counter::default(),
            federation_seq_conflicts: Counter::default(),
            password_hashes: Counter::default(),
            logins_throttled: Family::default(),
            online_devices: Gauge::default(),
            writer_queue: Gauge::default(),
            store_write_buffer_bytes: Gauge::default(),
            store_journals: Gauge::default(),
            store_outstanding_flushes: Gauge::default(),
            inbox_reads_waiting: Gauge::default(),
            inbox_reads_in_flight: Gauge::default(),
            inbox_reads_in_flight_max: Gauge::default(),
            rpc_lanes: Gauge::default(),
            http: HttpMetrics::default(),
            registry: Registry::default(),
        };
        registry.register(
            "sessions_opened",
            "WebSocket sessions authenticated",
            m.sessions_opened.clone(),
        );
        registry.register(
            "sessions_slow",
            "Sessions dropped because the client did not read",
            m.sessions_slow.clone(),
        );
        registry.register(
            "commands",
            "Client commands by type and outcome",
            m.commands.clone(),
        );
        registry.register(
            "events_sent",
            "Events written to client connections (including resends)",
            m.events_sent.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "From the commit of an event to its frame queued on the recipient's connection (live deliveries)",
            m.delivery_latency.clone(),
        );
        registry.register(
            "commits",
            "Store commits (groups of commands)",
            m.commits.clone(),
        );
        registry.register(
            "commit_seconds",
            "Duration of one group commit, fsync included",
            m.commit_seconds.clone(),
        );
        registry.register(
            "commit_group_size",
            "Commands per group commit",
            m.commit_group.clone(),
        );
        registry.register(
            "publish_failures",
            "Deliveries the JetStream hop failed to publish (recovered from the inbox)",
            m.publish_failures.clone(),
        );
        registry.register(
            "federation_seq_conflicts",
            "Message events refused because their (chat, seq) holds another message here (the chat's home was restored from a backup)",
            m.federation_seq_conflicts.clone(),
        );
        registry.register(
            "password_hashes",
            "argon2 password hashes and verifications (slow on purpose)",
            m.password_hashes.clone(),
        );
        registry.register(
            "logins_throttled",
            "Login and registration attempts refused by the per-address login limits, by the limit that refused",
            m.logins_throttled.clone(),
        );
        register_gauges(&mut registry, &m);
        register_http(&mut registry, &m.http);
        Self { registry, ..m }
    }

    pub(crate) fn login_throttled(&self, reason: &'static str) {
        self.logins_throttled
            .get_or_create(&ThrottleLabels { reason })
            .inc();
    }

    pub(crate) fn command(&self, command: &'static str, outcome: &'static str) {
        self.commands
            .get_or_create(&CommandLabels { command, outcome })
            .inc();
    }
}

/// The gauges: state mirrored from elsewhere.
fn register_gauges(registry: &mut Registry, m: &Metrics) {
    registry.register(
        "online_devices",
        "Devices connected (to this gateway, or to all for a core)",
        m.online_devices.clone(),
    );
    registry.register(
        "writer_queue",
        "Commands waiting for the writer",
        m.writer_queue.clone(),
    );
    registry.register(
        "store_write_buffer_bytes",
        "Bytes held in memtables",
        m.store_write_buffer_bytes.clone(),
    );
    registry.register(
        "store_journals",
        "Journal files of the store",
        m.store_journals.clone(),
    );
    registry.register(
        "store_outstanding_flushes",
        "Memtables waiting to be flushed",
        m.store_outstanding_flushes.clone(),
    );
    registry.register(
        "inbox_reads_waiting",
        "Inbox reads (backlogs, resends) waiting for a slot (limits.inbox_reads_in_flight)",
        m.inbox_reads_waiting.clone(),
    );
    registry.register(
        "inbox_reads_in_flight",
        "Inbox reads running now",
        m.inbox_reads_in_flight.clone(),
    );
    registry.register(
        "inbox_reads_in_flight_max",
        "The most inbox reads that ran at once since the process started",
        m.inbox_reads_in_flight_max.clone(),
    );
    registry.register(
        "rpc_lanes",
        "Devices whose commands over NATS wait in the core's lanes (limits.rpc_lanes)",
        m.rpc_lanes.clone(),
    );
}

fn register_http(registry: &mut Registry, m: &HttpMetrics) {
    registry.register(
        "http_connections",
        "Open connections per listener, WebSockets included",
        m.connections.clone(),
    );
    registry.register(
            "http_connections_refused",
            "Connections closed at accept because a cap (http.max_connections, http.max_connections_per_address) was full",
            m.refused.clone(),
        );
    registry.register(
            "http_timeouts",
            "HTTP connections closed, or requests answered 408, for taking too long (headers, idle keep-alive, body)",
            m.timeouts.clone(),
        );
}

/// Wall-clock milliseconds, comparable across processes on one machine (or NTP).
pub(crate) fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The registry in Prometheus' text format.
pub(crate) fn render() -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &METRICS.registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_instruments() {
        METRICS.command("sendMessage", "ok");
        METRICS.delivery_latency.observe(0.002);
        let text = render();
        assert!(
            text.contains("natter_commands_total{command=\"sendMessage\",outcome=\"ok\"}"),
            "{text}"
        );
        assert!(
            text.contains("natter_delivery_latency_seconds_bucket"),
            "{text}"
        );
        assert!(text.contains("# EOF"));
    }
}
