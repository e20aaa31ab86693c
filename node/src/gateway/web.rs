//! The web client (`node/web/`), embedded in the binary and served at `/` by every
//! process with the gateway role, and `GET /v1/info`, the public facts it needs.
//!
//! Owns: the asset table, their compressed forms (gzip and brotli, made once at
//! start), ETags, and the security headers of every page: a Content-Security-Policy
//! computed from the configuration (no inline script; `connect-src` limited to the
//! node and its media store), `nosniff`, `Referrer-Policy`.
//! Does not own: anything the client does; it speaks protocol v1 like any client.

use std::io::Write;
use std::sync::LazyLock;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{ApiError, Gateway};
use crate::config::Config;
use crate::core::Registration;
use crate::media::MediaBackend;
use crate::protocol::{self, ErrorCode};

/// One file of the client: its URL name, content type and bytes.
struct Source {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Source {
            name: $name,
            content_type: $type,
            bytes: include_bytes!(concat!("../../web/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of the client. `index.html` is served at `/`, the rest at `/web/NAME`
/// (a unit test checks this list against the folder).
const SOURCES: &[Source] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
    asset!("app.js", JS),
    asset!("conn.js", JS),
    asset!("dom.js", JS),
    asset!("chats.js", JS),
    asset!("messages.js", JS),
    asset!("auth.js", JS),
];

/// A file ready to serve: the identity, gzip and brotli bodies and the ETag.
struct Asset {
    source: &'static Source,
    gzip: Vec<u8>,
    brotli: Vec<u8>,
    etag: HeaderValue,
}

static ASSETS: LazyLock<Vec<Asset>> =
    LazyLock::new(|| SOURCES.iter().map(Asset::compress).collect());

impl Asset {
    fn compress(source: &'static Source) -> Self {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(source.bytes).expect("gzip into memory");
        let gzip = gz.finish().expect("gzip into memory");
        let mut brotli = Vec::new();
        let params = brotli::enc::BrotliEncoderParams {
            quality: 11,
            lgwin: 22,
            ..Default::default()
        };
        brotli::BrotliCompress(&mut &source.bytes[..], &mut brotli, &params)
            .expect("brotli into memory");
        let hash = Sha256::digest(source.bytes);
        let hex: String = hash[..12].iter().map(|b| format!("{b:02x}")).collect();
        Self {
            source,
            gzip,
            brotli,
            etag: HeaderValue::from_str(&format!("\"{hex}\"")).expect("hex is a header value"),
        }
    }
}

/// The total size of the client, uncompressed (the budget is 150 KiB).
pub fn client_bytes() -> usize {
    SOURCES.iter().map(|s| s.bytes.len()).sum()
}

/// What a process serves of the web client, computed once from its configuration.
pub struct Site {
    enabled: bool,
    csp: HeaderValue,
    info: Info,
}

/// `GET /v1/info`: what a client needs before signing in.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Info {
    pub node: String,
    pub protocol: u32,
    pub registration: Registration,
    pub limits: InfoLimits,
    /// The origin media URLs point at (the node itself in embedded mode).
    pub media_origin: String,
    /// Content types the node accepts for uploads; empty means any.
    pub allowed_types: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InfoLimits {
    pub max_message_bytes: usize,
    pub max_attachment_bytes: u64,
    pub max_attachments: usize,
    pub max_participants: usize,
    pub max_chat_name_chars: usize,
    pub max_file_name_chars: usize,
    pub history_max_limit: u32,
    pub min_password_chars: usize,
}

impl Site {
    /// `public_url` is where clients reach this process (the configured one, or
    /// `http://<listen address>`).
    pub fn new(config: &Config, public_url: &str) -> Self {
        let node_origin = origin(public_url).unwrap_or_default();
        let media_origin = config
            .web
            .media_origin
            .clone()
            .or_else(|| media_origin(config, &node_origin))
            .unwrap_or_else(|| node_origin.clone());
        let csp = csp(&node_origin, &media_origin);
        if config.web.enabled {
            // Compress now, not on the first request.
            LazyLock::force(&ASSETS);
        }
        Self {
            enabled: config.web.enabled,
            csp: HeaderValue::from_str(&csp).expect("origins are header-safe"),
            info: Info {
                node: config.node.to_string(),
                protocol: protocol::PROTOCOL_VERSION,
                registration: config.registration,
                limits: InfoLimits {
                    max_message_bytes: protocol::MAX_MESSAGE_BYTES,
                    max_attachment_bytes: config.media.max_size,
                    max_attachments: protocol::MAX_ATTACHMENTS,
                    max_participants: protocol::MAX_PARTICIPANTS,
                    max_chat_name_chars: protocol::MAX_CHAT_NAME_CHARS,
                    max_file_name_chars: protocol::MAX_FILE_NAME_CHARS,
                    history_max_limit: protocol::HISTORY_MAX_LIMIT,
                    min_password_chars: protocol::MIN_PASSWORD_CHARS,
                },
                media_origin,
                allowed_types: config.media.allowed_types.clone(),
            },
        }
    }

    pub fn csp(&self) -> &HeaderValue {
        &self.csp
    }
}

/// `scheme://host[:port]` of a URL, or `None` when it is not one.
fn origin(url: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).ok()?;
    let origin = url.origin();
    origin.is_tuple().then(|| origin.ascii_serialization())
}

/// Where this configuration's media URLs point: the node (embedded store) or the
/// S3 endpoint, with the bucket in the host for virtual-hosted requests.
fn media_origin(config: &Config, node_origin: &str) -> Option<String> {
    let s3 = match &config.media.backend {
        MediaBackend::Local { .. } => return Some(node_origin.to_owned()),
        MediaBackend::S3(s3) => s3,
    };
    let endpoint = s3
        .endpoint
        .clone()
        .unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", s3.region));
    let mut url = reqwest::Url::parse(&endpoint).ok()?;
    if !s3.path_style {
        let host = format!("{}.{}", s3.bucket, url.host_str()?);
        url.set_host(Some(&host)).ok()?;
    }
    origin(url.as_str())
}

/// The policy: everything from this origin only, no inline script or style,
/// connections to the node (HTTP and WebSocket) and its media store, images from
/// the media store, no framing, no forms posting elsewhere.
fn csp(node_origin: &str, media_origin: &str) -> String {
    let ws_origin = node_origin
        .replacen("https://", "wss://", 1)
        .replacen("http://", "ws://", 1);
    let mut connect: Vec<&str> = Vec::new();
    for source in ["'self'", node_origin, ws_origin.as_str(), media_origin] {
        if !source.is_empty() && !connect.contains(&source) {
            connect.push(source);
        }
    }
    let img = ["'self'", "blob:", media_origin].join(" ");
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src {img}; \
         connect-src {}; manifest-src 'self'; form-action 'none'; \
         frame-ancestors 'none'; base-uri 'none'",
        connect.join(" ")
    )
}

/// `/`, `/web/{name}` (when the client is enabled) and `/v1/info` (always).
pub(super) fn router(gw: &Gateway) -> Router<Gateway> {
    let info = Router::new().route("/v1/info", get(info));
    if !gw.site.enabled {
        return info;
    }
    info.route("/", get(index)).route("/web/{name}", get(asset))
}

async fn info(State(gw): State<Gateway>) -> Response {
    let mut response = axum::Json(gw.site.info.clone()).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn index(State(gw): State<Gateway>, headers: HeaderMap) -> Response {
    serve(&gw.site, "index.html", &headers)
}

async fn asset(
    State(gw): State<Gateway>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if name == "index.html" {
        return ApiError::new(ErrorCode::NotFound, "no such file").into_response();
    }
    serve(&gw.site, &name, &headers)
}

fn serve(site: &Site, name: &str, request: &HeaderMap) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.source.name == name) else {
        return ApiError::new(ErrorCode::NotFound, "no such file").into_response();
    };
    let mut headers = HeaderMap::new();
    security_headers(site, &mut headers);
    headers.insert(header::ETAG, asset.etag.clone());
    // Revalidated on every load (the ETag makes that a 304): module imports are
    // not content-hashed, so nothing may be cached as immutable.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    let matches = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == asset.etag));
    if matches {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.source.content_type),
    );
    let accepts = |coding| accepts_encoding(request, coding);
    let body: &[u8] = if accepts("br") {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("br"));
        &asset.brotli
    } else if accepts("gzip") {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        &asset.gzip
    } else {
        asset.source.bytes
    };
    (StatusCode::OK, headers, body.to_vec()).into_response()
}

/// The headers every page and file of the client carries.
fn security_headers(site: &Site, headers: &mut HeaderMap) {
    headers.insert(header::CONTENT_SECURITY_POLICY, site.csp.clone());
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
}

/// Whether `Accept-Encoding` allows `coding` (named, or `*`, with a q above 0).
fn accepts_encoding(headers: &HeaderMap, coding: &str) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim();
            let zero = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    == Some(0.0)
            });
            (name.eq_ignore_ascii_case(coding) || name == "*") && !zero
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_of_the_client_is_served_and_the_budget_holds() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().unwrap().is_file())
            .map(|e| e.file_name().into_string().unwrap())
            .filter(|n| !n.starts_with('.') && !n.starts_with("package"))
            .collect();
        on_disk.sort();
        let mut listed: Vec<String> = SOURCES.iter().map(|s| s.name.to_owned()).collect();
        listed.sort();
        assert_eq!(listed, on_disk, "SOURCES must list node/web's files");
        assert!(client_bytes() < 150 * 1024, "{} bytes", client_bytes());
    }

    #[test]
    fn compressed_forms_decode_to_the_file() {
        for asset in ASSETS.iter() {
            let mut out = Vec::new();
            let mut gz = flate2::read::GzDecoder::new(&asset.gzip[..]);
            std::io::Read::read_to_end(&mut gz, &mut out).unwrap();
            assert_eq!(out, asset.source.bytes, "{}", asset.source.name);
            let mut out = Vec::new();
            brotli::BrotliDecompress(&mut &asset.brotli[..], &mut out).unwrap();
            assert_eq!(out, asset.source.bytes, "{}", asset.source.name);
        }
    }

    #[test]
    fn accept_encoding_honours_q_zero_and_wildcards() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(v));
            h
        };
        assert!(accepts_encoding(&with("gzip, deflate, br"), "br"));
        assert!(!accepts_encoding(&with("gzip;q=1, br;q=0"), "br"));
        assert!(accepts_encoding(&with("*"), "gzip"));
        assert!(!accepts_encoding(&with("identity"), "gzip"));
        assert!(!accepts_encoding(&HeaderMap::new(), "gzip"));
    }

    #[test]
    fn policy_names_the_node_and_the_media_store_only() {
        let p = csp("https://chat.example.org", "https://media.example.org");
        assert!(p.contains(
            "connect-src 'self' https://chat.example.org wss://chat.example.org https://media.example.org;"
        ));
        assert!(p.contains("script-src 'self';"));
        assert!(!p.contains("unsafe"));
        let p = csp("http://127.0.0.1:7070", "http://127.0.0.1:7070");
        assert!(p.contains("connect-src 'self' http://127.0.0.1:7070 ws://127.0.0.1:7070;"));
    }
}
