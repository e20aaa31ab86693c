//! Why a signed federation request was refused ([`VerifyError`]), and the one
//! mapping of each refusal to a stable wire code and an HTTP status.
//!
//! It does not build responses (no HTTP types here); the federation endpoint
//! turns a refusal into `{"code": ..., "message": ...}` with [`VerifyError::code`]
//! and [`VerifyError::status`], and logs the `Display` text as the reason.

/// A refusal, one kind per check (docs/federation.md, "Request signing").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The signature fields are missing, unparsable, or do not follow natter's
    /// profile (wrong components, missing parameter, other algorithm).
    #[error("malformed signature: {0}")]
    Malformed(&'static str),
    /// `natter-origin` names a node that is not a configured peer.
    #[error("unknown origin {origin:?}")]
    UnknownOrigin { origin: String },
    /// The peer has no key with this id, or the key is outside its validity window.
    #[error("key {key_id:?} of {origin:?} is unknown or not valid now")]
    KeyNotValid { origin: String, key_id: String },
    /// The ed25519 signature does not verify over the rebuilt signature base.
    #[error("signature does not verify")]
    BadSignature,
    /// `natter-destination` names another node.
    #[error("request is for {destination:?}, not this node")]
    WrongDestination { destination: String },
    /// `created` is further from now than the window (or `expires` has passed).
    #[error("signature created {skew_ms} ms from now, outside the window")]
    StaleTimestamp { skew_ms: i64 },
    /// This origin already used this nonce within the replay window.
    #[error("nonce already used by this origin")]
    ReplayedNonce,
    /// The body's sha-256 is not the one in `Content-Digest`.
    #[error("content-digest does not match the body")]
    DigestMismatch,
}

impl VerifyError {
    /// The stable code clients of the federation API see.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed_signature",
            Self::UnknownOrigin { .. } => "unknown_peer",
            Self::KeyNotValid { .. } => "key_not_valid",
            Self::BadSignature => "bad_signature",
            Self::WrongDestination { .. } => "wrong_destination",
            Self::StaleTimestamp { .. } => "stale_request",
            Self::ReplayedNonce => "replayed_request",
            Self::DigestMismatch => "digest_mismatch",
        }
    }

    /// The HTTP status: 403 when a genuine peer sent to the wrong node, 401
    /// for everything that means "not authenticated".
    pub fn status(&self) -> u16 {
        match self {
            Self::WrongDestination { .. } => 403,
            _ => 401,
        }
    }
}

/// A request natter cannot sign: a value that has no place in an HTTP field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("{field} is not a valid field value")]
    InvalidValue { field: &'static str },
}
