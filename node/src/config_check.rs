//! `natterd config check`: the effective configuration, each setting with
//! where it came from (flag, env, file or default), secrets redacted.
//!
//! Owns: the list of file keys with their effective values ([`settings`]),
//! and where each one came from. Does not own: resolving or validating the
//! settings (`config.rs`, which this runs exactly as a start would).

use std::path::Path;
use std::time::Duration;

use clap::ArgMatches;
use clap::parser::ValueSource;

use crate::config::{CheckArgs, Config, ConfigError};
use crate::delivery::nats::NatsAuth;
use crate::media::MediaBackend;

const REDACTED: &str = "(redacted)";

/// File keys that a flag (and its environment variable) also sets: key, the
/// flag's argument id.
const FLAGS: &[(&str, &str)] = &[
    ("data", "data"),
    ("listen", "listen"),
    ("admin.listen", "admin_listen"),
    ("name", "name"),
    ("registration", "registration"),
    ("log.format", "log_format"),
    ("retention.inbox", "retention"),
    ("retention.device_ttl", "device_ttl"),
    ("media.store", "media"),
    ("public_url", "public_url"),
    ("nats.url", "nats"),
    ("gateway_id", "gateway_id"),
    ("trusted_proxies", "trusted_proxies"),
    ("nats.user", "nats_user"),
    ("nats.password", "nats_password"),
    ("nats.token", "nats_token"),
    ("nats.nkey_file", "nats_nkey_file"),
    ("nats.creds_file", "nats_creds_file"),
    ("nats.tls.ca_file", "nats_tls_ca"),
    ("nats.tls.cert_file", "nats_tls_cert"),
    ("nats.tls.key_file", "nats_tls_key"),
    ("nats.tls.required", "nats_tls_required"),
];

/// Runs the check; the text to print, or why the configuration is invalid.
pub fn run(check: CheckArgs, matches: Option<&ArgMatches>) -> Result<String, ConfigError> {
    let file = match &check.args.config {
        Some(path) => Some((path.clone(), read_table(path)?)),
        None => None,
    };
    let config = Config::resolve_for(check.role.role(), check.args)?;
    let rust_log = std::env::var("RUST_LOG").ok();
    let mut out = String::new();
    match &file {
        Some((path, _)) => out.push_str(&format!("# {}: valid\n", path.display())),
        None => out.push_str("# no configuration file: valid\n"),
    }
    for (key, value) in settings(&config) {
        let (mut value, source) = if key == "log.filter"
            && let Some(filter) = &rust_log
        {
            (toml_string(filter), "env RUST_LOG")
        } else {
            (value, source_of(key, matches, file.as_ref().map(|f| &f.1)))
        };
        if key == "gateway_id" && source == "default" {
            value = "(random per start)".to_owned();
        }
        out.push_str(&format!("{key} = {value}  # {source}\n"));
    }
    Ok(out)
}

fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    crate::config::read_toml(path)
}

fn source_of(key: &str, matches: Option<&ArgMatches>, file: Option<&toml::Table>) -> &'static str {
    let flag = FLAGS.iter().find(|(k, _)| *k == key).map(|(_, id)| *id);
    if let (Some(id), Some(m)) = (flag, matches) {
        match m.value_source(id) {
            Some(ValueSource::CommandLine) => return "flag",
            Some(ValueSource::EnvVariable) => return "env",
            _ => {}
        }
    }
    let mut table = file;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let Some(t) = table else { break };
        match t.get(*part) {
            Some(toml::Value::Table(inner)) if i + 1 < parts.len() => table = Some(inner),
            Some(_) if i + 1 == parts.len() => return "file",
            _ => break,
        }
    }
    "default"
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// A duration in the largest unit that states it exactly (`90d`, `15m`).
fn dur(d: Duration) -> String {
    let ms = d.as_millis();
    let units = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1000, "s"),
    ];
    let text = units
        .iter()
        .find(|(size, _)| ms > 0 && ms.is_multiple_of(*size))
        .map_or_else(
            || format!("{ms}ms"),
            |(size, unit)| format!("{}{unit}", ms / size),
        );
    toml_string(&text)
}

fn path(p: &Path) -> String {
    toml_string(&p.display().to_string())
}

fn list(items: &[String]) -> String {
    toml::Value::Array(items.iter().cloned().map(toml::Value::String).collect()).to_string()
}

const UNSET: &str = "(unset)";

fn opt(value: Option<String>) -> String {
    value.unwrap_or_else(|| UNSET.to_owned())
}

/// Every file key with its effective value, in the order of
/// docs/configuration.md.
pub fn settings(c: &Config) -> Vec<(&'static str, String)> {
    let mut out = top_level(c);
    out.extend(retention_and_websocket(c));
    out.extend(limits(c));
    out.extend(http_and_web(c));
    out.extend(logins_store_admin(c));
    out.extend(nats(c));
    out.extend(federation(c));
    out.extend(media(c));
    out
}

fn top_level(c: &Config) -> Vec<(&'static str, String)> {
    let registration = match c.registration {
        crate::core::Registration::Open => "open",
        crate::core::Registration::Invite => "invite",
        crate::core::Registration::Closed => "closed",
    };
    let format = match c.log.format {
        crate::config::LogFormat::Human => "human",
        crate::config::LogFormat::Json => "json",
    };
    vec![
        ("data", path(&c.data)),
        ("listen", toml_string(&c.listen.to_string())),
        ("name", toml_string(c.node.as_str())),
        ("public_url", opt(c.public_url.as_deref().map(toml_string))),
        ("registration", toml_string(registration)),
        ("gateway_id", toml_string(c.gateway_id.as_str())),
        ("shutdown_grace", dur(c.shutdown_grace)),
        ("trusted_proxies", list(&c.trusted_proxies.entries())),
        ("log.format", toml_string(format)),
        ("log.filter", toml_string(&c.log.filter)),
    ]
}

fn retention_and_websocket(c: &Config) -> Vec<(&'static str, String)> {
    let (r, w) = (&c.retention, &c.websocket);
    vec![
        ("retention.inbox", dur(r.inbox)),
        ("retention.device_ttl", dur(r.device_ttl)),
        ("retention.sweep_interval", dur(r.sweep_interval)),
        ("retention.invite_ttl", dur(r.invite_ttl)),
        ("retention.sweep_step_rows", r.sweep_step_rows.to_string()),
        ("websocket.ping_interval", dur(w.ping_interval)),
        ("websocket.ping_timeout", dur(w.ping_timeout)),
        ("websocket.auth_timeout", dur(w.auth_timeout)),
        ("websocket.resend_after", dur(w.resend_after)),
        ("websocket.write_timeout", dur(w.write_timeout)),
        ("websocket.window", w.window.to_string()),
        ("websocket.send_queue", w.send_queue.to_string()),
        (
            "websocket.send_queue_kb",
            (w.send_queue_bytes >> 10).to_string(),
        ),
        ("websocket.max_in_flight", w.max_in_flight.to_string()),
        ("websocket.read_buffer", w.read_buffer.to_string()),
        ("websocket.write_buffer", w.write_buffer.to_string()),
    ]
}

fn limits(c: &Config) -> Vec<(&'static str, String)> {
    let (l, u, q) = (&c.limits, &c.limits.user, &c.limits.quotas);
    let f = |x: f64| format!("{x:?}");
    vec![
        ("limits.send_rate", f(l.send_rate)),
        ("limits.send_burst", l.send_burst.to_string()),
        ("limits.user_send_rate", f(u.send.per_second)),
        ("limits.user_send_burst", u.send.burst.to_string()),
        ("limits.user_chat_rate", f(u.chat.per_second)),
        ("limits.user_chat_burst", u.chat.burst.to_string()),
        ("limits.user_upload_rate", f(u.upload.per_second)),
        ("limits.user_upload_burst", u.upload.burst.to_string()),
        ("limits.user_read_rate", f(u.read.per_second)),
        ("limits.user_read_burst", u.read.burst.to_string()),
        ("limits.tracked_users", u.tracked_users.to_string()),
        ("limits.chats_per_user", q.chats.to_string()),
        ("limits.devices_per_user", q.devices.to_string()),
        (
            "limits.pending_uploads_per_user",
            q.pending_uploads.to_string(),
        ),
        (
            "limits.pending_upload_mb_per_user",
            (q.pending_upload_bytes >> 20).to_string(),
        ),
        (
            "limits.inbox_reads_in_flight",
            l.inbox_reads_in_flight.to_string(),
        ),
        ("limits.rpc_lanes", l.rpc_lanes.to_string()),
        ("limits.rpc_lane_commands", l.rpc_lane_commands.to_string()),
    ]
}

fn http_and_web(c: &Config) -> Vec<(&'static str, String)> {
    let h = &c.http;
    vec![
        ("http.header_read_timeout", dur(h.header_read_timeout)),
        ("http.idle_timeout", dur(h.idle_timeout)),
        ("http.body_timeout", dur(h.body_timeout)),
        ("http.upload_timeout", dur(h.upload_timeout)),
        ("http.max_connections", h.max_connections.to_string()),
        (
            "http.max_connections_per_address",
            h.max_connections_per_address.to_string(),
        ),
        ("web.enabled", c.web.enabled.to_string()),
        (
            "web.media_origin",
            opt(c.web.media_origin.as_deref().map(toml_string)),
        ),
    ]
}

fn logins_store_admin(c: &Config) -> Vec<(&'static str, String)> {
    let g = &c.logins;
    let ms = |v: i64| dur(Duration::from_millis(v.max(0) as u64));
    vec![
        ("logins.attempt_rate", format!("{:?}", g.attempt_rate)),
        ("logins.attempt_burst", g.attempt_burst.to_string()),
        ("logins.free_failures", g.free_failures.to_string()),
        (
            "logins.free_failures_per_address",
            g.free_failures_per_address.to_string(),
        ),
        ("logins.delay", ms(g.delay_ms)),
        ("logins.max_delay", ms(g.max_delay_ms)),
        ("logins.forget_after", ms(g.forget_after_ms)),
        ("logins.max_records", g.max_records.to_string()),
        ("logins.max_addresses", g.max_addresses.to_string()),
        ("logins.ipv6_prefix", g.ipv6_prefix.to_string()),
        ("store.cache_mb", (c.store.cache_bytes >> 20).to_string()),
        (
            "store.memtable_mb",
            (c.store.memtable_bytes >> 20).to_string(),
        ),
        ("store.max_group", c.store.max_group.to_string()),
        ("admin.listen", toml_string(&c.admin_listen.to_string())),
        ("admin.inbox_count_cap", c.admin.inbox_count_cap.to_string()),
        (
            "admin.stats_inbox_scan",
            c.admin.stats_inbox_scan.to_string(),
        ),
        ("admin.max_chat_page", c.admin.max_chat_page.to_string()),
        ("testing.adjustable_clock", c.adjustable_clock.to_string()),
        ("testing.store_faults", c.store_faults.to_string()),
        ("testing.inbox_read_gate", c.inbox_read_gate.to_string()),
    ]
}

fn nats(c: &Config) -> Vec<(&'static str, String)> {
    let n = c.nats.as_ref();
    let (mut user, mut password, mut token, mut nkey, mut creds) = (None, None, None, None, None);
    let set = || Some(REDACTED.to_owned());
    match n.map(|n| &n.auth) {
        Some(NatsAuth::UserPassword { user: u, .. }) => {
            (user, password) = (Some(toml_string(u)), set())
        }
        Some(NatsAuth::Token(_)) => token = set(),
        // The files' contents are the secrets; their paths are not kept.
        Some(NatsAuth::NKey(_)) => nkey = Some("(read)".to_owned()),
        Some(NatsAuth::Credentials(_)) => creds = Some("(read)".to_owned()),
        Some(NatsAuth::None) | None => {}
    }
    let tls = n.map(|n| &n.tls);
    let cert = tls.and_then(|t| t.client_cert.as_ref());
    vec![
        (
            "nats.url",
            opt(n.map(|n| toml_string(&crate::delivery::nats::redact_url(&n.url)))),
        ),
        ("nats.stream_max_age", opt(n.map(|n| dur(n.stream_max_age)))),
        (
            "nats.stream_max_mb",
            opt(n.map(|n| (n.stream_max_bytes >> 20).to_string())),
        ),
        ("nats.heartbeat", opt(n.map(|n| dur(n.heartbeat)))),
        (
            "nats.request_timeout",
            opt(n.map(|n| dur(n.request_timeout))),
        ),
        ("nats.user", opt(user)),
        ("nats.password", opt(password)),
        ("nats.token", opt(token)),
        ("nats.nkey_file", opt(nkey)),
        ("nats.creds_file", opt(creds)),
        (
            "nats.tls.ca_file",
            opt(tls.and_then(|t| t.ca_file.as_deref()).map(path)),
        ),
        ("nats.tls.cert_file", opt(cert.map(|(c, _)| path(c)))),
        ("nats.tls.key_file", opt(cert.map(|(_, k)| path(k)))),
        (
            "nats.tls.required",
            opt(tls.map(|t| t.required.to_string())),
        ),
    ]
}

fn federation(c: &Config) -> Vec<(&'static str, String)> {
    let f = &c.federation;
    vec![
        ("federation.request_timeout", dur(f.request_timeout)),
        ("federation.dead_letter_after", dur(f.dead_letter_after)),
        ("federation.max_backoff", dur(f.max_backoff)),
        ("federation.key_overlap", dur(f.key_overlap)),
        (
            "federation.max_actions_in_flight",
            f.max_actions_in_flight.to_string(),
        ),
        (
            "federation.max_batches_in_flight",
            f.max_batches_in_flight.to_string(),
        ),
        (
            "federation.outbox_stream_max_mb",
            (f.outbox_stream_max_bytes >> 20).to_string(),
        ),
        (
            "federation.outbox_stream_max_age",
            dur(f.outbox_stream_max_age.unwrap_or(2 * f.dead_letter_after)),
        ),
    ]
}

fn media(c: &Config) -> Vec<(&'static str, String)> {
    let m = &c.media;
    let (store, root, s3) = match &m.backend {
        MediaBackend::Local { root } => ("local".to_owned(), Some(path(root)), None),
        MediaBackend::S3(s3) => (format!("s3://{}/{}", s3.bucket, s3.prefix), None, Some(s3)),
    };
    let secret = |v: &Option<String>| v.as_ref().map(|_| REDACTED.to_owned());
    vec![
        ("media.store", toml_string(&store)),
        ("media.root", opt(root)),
        ("media.max_size", m.max_size.to_string()),
        ("media.allowed_types", list(&m.allowed_types)),
        ("media.upload_expiry", dur(m.upload_expiry)),
        ("media.download_expiry", dur(m.download_expiry)),
        ("media.orphan_ttl", dur(m.orphan_ttl)),
        ("media.retention", dur(m.retention)),
        ("media.s3.bucket", opt(s3.map(|s| toml_string(&s.bucket)))),
        ("media.s3.prefix", opt(s3.map(|s| toml_string(&s.prefix)))),
        (
            "media.s3.endpoint",
            opt(s3.and_then(|s| s.endpoint.as_deref()).map(toml_string)),
        ),
        ("media.s3.region", opt(s3.map(|s| toml_string(&s.region)))),
        (
            "media.s3.access_key_id",
            opt(s3.and_then(|s| secret(&s.access_key_id))),
        ),
        (
            "media.s3.secret_access_key",
            opt(s3.and_then(|s| secret(&s.secret_access_key))),
        ),
        (
            "media.s3.path_style",
            opt(s3.map(|s| s.path_style.to_string())),
        ),
        (
            "media.s3.allow_http",
            opt(s3.map(|s| s.allow_http.to_string())),
        ),
    ]
}
