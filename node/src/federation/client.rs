//! Signed requests to peers: [`PeerClient`] POSTs a JSON body to a peer's
//! `/federation/v1/...`, signed with this node's key (docs/federation.md), and
//! reads the JSON answer. Transport only: what is sent is the core's business.

use std::time::Duration;

use ed25519_dalek::SigningKey;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::keys::key_id;
use super::signing::{OutgoingRequest, sign_request};
use crate::ids::NodeName;

/// Why a request to a peer did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Not sent, or no answer (connection refused, timeout, TLS): retry later.
    #[error("{node} is unreachable")]
    Unreachable {
        node: NodeName,
        #[source]
        source: reqwest::Error,
    },
    /// The peer answered with an error.
    #[error("{node} refused the request ({status}): {body}")]
    Refused {
        node: NodeName,
        status: u16,
        /// The answer's body (JSON with `code` and `message`, and for event
        /// batches `applied`).
        body: serde_json::Value,
    },
    /// The peer answered, but not with what the request expects.
    #[error("{node} gave an unreadable answer")]
    BadAnswer {
        node: NodeName,
        #[source]
        source: reqwest::Error,
    },
    #[error("the peer's URL {0:?} is not an http(s) URL with a host")]
    BadUrl(String),
    #[error("signing the request")]
    Sign(#[from] super::error::SignError),
    #[error("encoding the request")]
    Encode(#[from] serde_json::Error),
}

/// This node's client for its peers. Cheap to clone. The caller names the
/// key each request is signed with (the current one, or during a rotation the
/// one a peer still trusts).
#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    node: NodeName,
}

impl PeerClient {
    /// Without the system's CA certificates (a host without Debian's
    /// `ca-certificates`) the client is made without TLS roots, with a warning:
    /// the node serves its users, and requests to peers over HTTPS fail (and
    /// wait in the outbox) until the certificates are installed.
    pub fn new(node: NodeName, timeout: Duration) -> Self {
        let builder = || {
            reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout.min(Duration::from_secs(5)))
        };
        let http = builder().build().unwrap_or_else(|error| {
            tracing::warn!(
                %error,
                "no TLS root certificates: requests to peers over HTTPS will fail \
                 until the system's CA certificates are installed (Debian: ca-certificates)"
            );
            builder()
                .tls_certs_only([])
                .build()
                .expect("an HTTP client without TLS roots")
        });
        Self { http, node }
    }

    /// POSTs `body` as JSON to `base_url` + `path` at `peer`, signed with
    /// `key` at `now_ms`, and decodes a 2xx answer.
    pub async fn post<T: Serialize, R: DeserializeOwned>(
        &self,
        key: &SigningKey,
        peer: &NodeName,
        base_url: &str,
        path: &str,
        body: &T,
        now_ms: i64,
    ) -> Result<R, PeerError> {
        let url = reqwest::Url::parse(&format!("{}{path}", base_url.trim_end_matches('/')))
            .map_err(|_| PeerError::BadUrl(base_url.to_owned()))?;
        let authority = match (url.host_str(), url.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            (None, _) => return Err(PeerError::BadUrl(base_url.to_owned())),
        };
        let bytes = serde_json::to_vec(body)?;
        let nonce = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            crate::auth::random_bytes::<16>(),
        );
        let request = OutgoingRequest {
            origin: self.node.as_str(),
            destination: peer.as_str(),
            method: "POST",
            authority: &authority,
            path: url.path(),
            query: url.query(),
            body: &bytes,
        };
        let id = key_id(&key.verifying_key());
        let signed = sign_request(key, &id, &request, now_ms / 1000, &nonce)?;
        let mut builder = self
            .http
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        for (name, value) in signed.fields() {
            builder = builder.header(name, value);
        }
        let unreachable = |source| PeerError::Unreachable {
            node: peer.clone(),
            source,
        };
        let answer = builder.body(bytes).send().await.map_err(unreachable)?;
        let status = answer.status();
        if !status.is_success() {
            let body = answer.json().await.unwrap_or(serde_json::Value::Null);
            return Err(PeerError::Refused {
                node: peer.clone(),
                status: status.as_u16(),
                body,
            });
        }
        answer.json().await.map_err(|source| PeerError::BadAnswer {
            node: peer.clone(),
            source,
        })
    }

    /// GETs a peer's well-known document (unsigned: it is public).
    pub async fn well_known(&self, base_url: &str) -> Result<serde_json::Value, reqwest::Error> {
        let url = format!("{}/.well-known/natter/node", base_url.trim_end_matches('/'));
        self.http
            .get(url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await
    }
}
