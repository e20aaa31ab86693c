//! natter's profile of HTTP Message Signatures: what one node signs when it
//! calls another, and how such a signature is read back and checked against a
//! key. docs/federation.md ("Request signing") is the specification.
//!
//! The signature, labelled `natter`, covers exactly [`COVERED`] in that order,
//! with the parameters `created`, `nonce`, `keyid`, `alg="ed25519"`. This module
//! checks the signature itself; which key to use, the destination, the clock
//! window, the body digest and replays are [`super::verify`]'s job.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sfv::BareItem;

use super::digest::content_digest;
use super::error::{SignError, VerifyError};
use super::rfc9421::{Message, SignatureInput, parse_signature_field, signature_field};

/// The label of natter's entry in `Signature-Input` and `Signature`.
pub const LABEL: &str = "natter";
/// The only algorithm natter signs and accepts.
pub const ALG: &str = "ed25519";
pub const ORIGIN: &str = "natter-origin";
pub const DESTINATION: &str = "natter-destination";
pub const CONTENT_DIGEST: &str = "content-digest";
pub const SIGNATURE_INPUT: &str = "signature-input";
pub const SIGNATURE: &str = "signature";
/// The covered components, in the order they are signed.
pub const COVERED: [&str; 7] = [
    "@method",
    "@authority",
    "@path",
    "@query",
    CONTENT_DIGEST,
    ORIGIN,
    DESTINATION,
];
/// The longest nonce accepted (natter sends 22 characters); bounds the replay cache.
pub const MAX_NONCE_LEN: usize = 64;

/// A request one node is about to send to another.
#[derive(Clone, Copy, Debug)]
pub struct OutgoingRequest<'a> {
    /// This node's name (`natter-origin`).
    pub origin: &'a str,
    /// The peer's node name (`natter-destination`).
    pub destination: &'a str,
    pub method: &'a str,
    /// The authority the request is sent to, as it will appear in `Host`.
    pub authority: &'a str,
    /// The path as it will be sent, e.g. `/federation/v1/events`.
    pub path: &'a str,
    /// The query as it will be sent, without `?`.
    pub query: Option<&'a str>,
    /// The exact body bytes.
    pub body: &'a [u8],
}

/// The header fields that carry a signature; add all five to the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedHeaders {
    pub content_digest: String,
    pub origin: String,
    pub destination: String,
    pub signature_input: String,
    pub signature: String,
}

impl SignedHeaders {
    /// (name, value) pairs, names lowercase.
    pub fn fields(&self) -> [(&'static str, &str); 5] {
        [
            (CONTENT_DIGEST, &self.content_digest),
            (ORIGIN, &self.origin),
            (DESTINATION, &self.destination),
            (SIGNATURE_INPUT, &self.signature_input),
            (SIGNATURE, &self.signature),
        ]
    }
}

/// Signs `req` with `key`, announced as `key_id`, created at `created_s`
/// (Unix seconds) with a fresh `nonce` (natter: 16 random bytes, base64url
/// without padding).
pub fn sign_request(
    key: &SigningKey,
    key_id: &str,
    req: &OutgoingRequest<'_>,
    created_s: i64,
    nonce: &str,
) -> Result<SignedHeaders, SignError> {
    let (input, digest) = prepare(req, key_id, created_s, nonce)?;
    let base = base_for(req, &input, &digest)?;
    let signature = key.sign(base.as_bytes()).to_bytes();
    Ok(SignedHeaders {
        signature_input: input.to_field(),
        signature: signature_field(LABEL, &signature)?,
        content_digest: digest,
        origin: req.origin.to_owned(),
        destination: req.destination.to_owned(),
    })
}

/// The signature base [`sign_request`] signs, for test vectors and debugging.
pub fn signature_base(
    req: &OutgoingRequest<'_>,
    key_id: &str,
    created_s: i64,
    nonce: &str,
) -> Result<String, SignError> {
    let (input, digest) = prepare(req, key_id, created_s, nonce)?;
    base_for(req, &input, &digest)
}

/// Validates the request's values and builds natter's `Signature-Input`
/// entry and the body's `Content-Digest`.
fn prepare(
    req: &OutgoingRequest<'_>,
    key_id: &str,
    created_s: i64,
    nonce: &str,
) -> Result<(SignatureInput, String), SignError> {
    let checks = [
        ("origin", req.origin),
        ("destination", req.destination),
        ("method", req.method),
        ("authority", req.authority),
        ("path", req.path),
        ("nonce", nonce),
    ];
    for (field, value) in checks {
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SignError::InvalidValue { field });
        }
    }
    if req
        .query
        .is_some_and(|q| !q.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(SignError::InvalidValue { field: "query" });
    }
    if nonce.len() > MAX_NONCE_LEN {
        return Err(SignError::InvalidValue { field: "nonce" });
    }
    let string = |v: &str, field| {
        sfv::String::from_string(v.to_owned())
            .map(BareItem::String)
            .map_err(|_| SignError::InvalidValue { field })
    };
    let params = vec![
        ("created", BareItem::Integer(integer(created_s)?)),
        ("nonce", string(nonce, "nonce")?),
        ("keyid", string(key_id, "key_id")?),
        ("alg", string(ALG, "alg")?),
    ];
    let input = SignatureInput::new(LABEL, &COVERED, params)?;
    Ok((input, content_digest(req.body)))
}

fn integer(value: i64) -> Result<sfv::Integer, SignError> {
    sfv::Integer::try_from(value).map_err(|_| SignError::InvalidValue { field: "created" })
}

fn base_for(
    req: &OutgoingRequest<'_>,
    input: &SignatureInput,
    digest: &str,
) -> Result<String, SignError> {
    let headers = [
        (CONTENT_DIGEST, digest),
        (ORIGIN, req.origin),
        (DESTINATION, req.destination),
    ];
    let msg = Message {
        method: req.method,
        authority: req.authority,
        path: req.path,
        query: req.query,
        headers: &headers,
    };
    input
        .signature_base(&msg)
        .map_err(|_| SignError::InvalidValue { field: "component" })
}

/// natter's signature as read from a request, before any check.
#[derive(Clone, Debug)]
pub struct ParsedSignature {
    /// `natter-origin`, lowercased.
    pub origin: String,
    /// `natter-destination`, lowercased.
    pub destination: String,
    pub key_id: String,
    pub nonce: String,
    /// Unix seconds.
    pub created_s: i64,
    /// Unix seconds, when the signer set `expires`.
    pub expires_s: Option<i64>,
    input: SignatureInput,
    signature: Signature,
}

/// Reads natter's signature from `msg`: the `natter` entries of
/// `Signature-Input` and `Signature`, and the origin and destination fields.
/// Anything missing or not in natter's profile is [`VerifyError::Malformed`].
pub fn parse_signature(msg: &Message<'_>) -> Result<ParsedSignature, VerifyError> {
    let field = |name, missing| msg.field(name).ok_or(VerifyError::Malformed(missing));
    let input = SignatureInput::parse(&field(SIGNATURE_INPUT, "no Signature-Input")?, LABEL)?;
    if input.components() != COVERED {
        return Err(VerifyError::Malformed(
            "covered components are not natter's",
        ));
    }
    if param_str(&input, "alg")? != ALG {
        return Err(VerifyError::Malformed("alg is not ed25519"));
    }
    let nonce = param_str(&input, "nonce")?;
    if nonce.is_empty() || nonce.len() > MAX_NONCE_LEN {
        return Err(VerifyError::Malformed("nonce is empty or too long"));
    }
    let bytes = parse_signature_field(&field(SIGNATURE, "no Signature")?, LABEL)?;
    let bytes: [u8; 64] = bytes
        .try_into()
        .map_err(|_| VerifyError::Malformed("signature is not 64 bytes"))?;
    // Node names are DNS-like: compared and reported lowercase. The base is
    // rebuilt from `msg`, so this does not change what is verified.
    Ok(ParsedSignature {
        origin: field(ORIGIN, "no natter-origin")?.to_ascii_lowercase(),
        destination: field(DESTINATION, "no natter-destination")?.to_ascii_lowercase(),
        key_id: param_str(&input, "keyid")?.to_owned(),
        nonce: nonce.to_owned(),
        created_s: param_int(&input, "created")?.ok_or(VerifyError::Malformed("no created"))?,
        expires_s: param_int(&input, "expires")?,
        signature: Signature::from_bytes(&bytes),
        input,
    })
}

fn param_str<'a>(input: &'a SignatureInput, name: &str) -> Result<&'a str, VerifyError> {
    input
        .param(name)
        .and_then(BareItem::as_string)
        .map(|s| s.as_str())
        .ok_or(VerifyError::Malformed("a string parameter is missing"))
}

/// An integer parameter: `None` when absent, malformed when not an integer.
fn param_int(input: &SignatureInput, name: &str) -> Result<Option<i64>, VerifyError> {
    match input.param(name) {
        None => Ok(None),
        Some(item) => item
            .as_integer()
            .map(|i| Some(i64::from(i)))
            .ok_or(VerifyError::Malformed(
                "an integer parameter is not an integer",
            )),
    }
}

impl ParsedSignature {
    /// Rebuilds the signature base from `msg` and checks the signature with
    /// `verify_strict` (which refuses weak keys and malleable signatures).
    pub fn verify(&self, msg: &Message<'_>, key: &VerifyingKey) -> Result<(), VerifyError> {
        let base = self.input.signature_base(msg)?;
        key.verify_strict(base.as_bytes(), &self.signature)
            .map_err(|_| VerifyError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::federation::keys::key_id;

    /// natter's test vector (docs/federation.md, "Test vector").
    pub(crate) fn vector_key() -> SigningKey {
        let seed: [u8; 32] = std::array::from_fn(|i| i as u8);
        SigningKey::from_bytes(&seed)
    }

    pub(crate) const VECTOR_BODY: &[u8] = br#"{"events":[]}"#;
    pub(crate) const VECTOR_CREATED: i64 = 1_767_225_600;
    pub(crate) const VECTOR_NONCE: &str = "AAECAwQFBgcICQoLDA0ODw";

    pub(crate) fn vector_request() -> OutgoingRequest<'static> {
        OutgoingRequest {
            origin: "a.example",
            destination: "b.example",
            method: "POST",
            authority: "b.example:8443",
            path: "/federation/v1/events",
            query: Some("txn=42"),
            body: VECTOR_BODY,
        }
    }

    pub(crate) const VECTOR_KEY_ID: &str = "ed25519-56475aa75463474c";
    const VECTOR_PUBLIC_HEX: &str =
        "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8";
    const VECTOR_BASE: &str = concat!(
        "\"@method\": POST\n",
        "\"@authority\": b.example:8443\n",
        "\"@path\": /federation/v1/events\n",
        "\"@query\": ?txn=42\n",
        "\"content-digest\": sha-256=:JN4cShnEOtQbAT8T3NhYwXsNqn8zpT8ZkT5bETZtHC4=:\n",
        "\"natter-origin\": a.example\n",
        "\"natter-destination\": b.example\n",
        "\"@signature-params\": (\"@method\" \"@authority\" \"@path\" \"@query\" ",
        "\"content-digest\" \"natter-origin\" \"natter-destination\")",
        ";created=1767225600;nonce=\"AAECAwQFBgcICQoLDA0ODw\"",
        ";keyid=\"ed25519-56475aa75463474c\";alg=\"ed25519\"",
    );
    const VECTOR_SIGNATURE_INPUT: &str = concat!(
        "natter=(\"@method\" \"@authority\" \"@path\" \"@query\" ",
        "\"content-digest\" \"natter-origin\" \"natter-destination\")",
        ";created=1767225600;nonce=\"AAECAwQFBgcICQoLDA0ODw\"",
        ";keyid=\"ed25519-56475aa75463474c\";alg=\"ed25519\"",
    );
    const VECTOR_SIGNATURE: &str = "natter=:gfl+N/1DCPCpAu/vnh7XTDHMfe1rJHnPFWRz9cULtwSy8+8UfjHQVXmwX3Btlm1d3t9rH9lh1qL6kytHUCvhDQ==:";

    /// The vector in docs/federation.md: if this fails, the docs (and every
    /// other implementation) disagree with the code.
    #[test]
    fn natter_test_vector() {
        let key = vector_key();
        let public = key.verifying_key();
        assert_eq!(
            crate::store::encode_hex(public.as_bytes()),
            VECTOR_PUBLIC_HEX
        );
        assert_eq!(key_id(&public), VECTOR_KEY_ID);
        let req = vector_request();
        let base = signature_base(&req, VECTOR_KEY_ID, VECTOR_CREATED, VECTOR_NONCE).unwrap();
        assert_eq!(base, VECTOR_BASE);
        let signed = sign_request(&key, VECTOR_KEY_ID, &req, VECTOR_CREATED, VECTOR_NONCE);
        let expected = SignedHeaders {
            content_digest: "sha-256=:JN4cShnEOtQbAT8T3NhYwXsNqn8zpT8ZkT5bETZtHC4=:".into(),
            origin: "a.example".into(),
            destination: "b.example".into(),
            signature_input: VECTOR_SIGNATURE_INPUT.into(),
            signature: VECTOR_SIGNATURE.into(),
        };
        assert_eq!(signed.unwrap(), expected);
    }

    /// docs/federation.md prints the same vector; keep the two in step.
    #[test]
    fn the_docs_show_this_vector() {
        let doc = include_str!("../../../docs/federation.md");
        let seed = crate::store::encode_hex(&vector_key().to_bytes());
        let fields = [
            format!("Signature-Input: {VECTOR_SIGNATURE_INPUT}"),
            format!("Signature: {VECTOR_SIGNATURE}"),
        ];
        let lines = VECTOR_BASE.lines().take(COVERED.len()).map(str::to_owned);
        let expected = [seed, VECTOR_PUBLIC_HEX.into(), VECTOR_KEY_ID.into()];
        for text in expected.into_iter().chain(fields).chain(lines) {
            assert!(doc.contains(&text), "docs/federation.md lacks {text}");
        }
    }

    #[test]
    fn parses_back_what_it_signs() {
        let key = vector_key();
        let req = vector_request();
        let signed = sign_request(&key, VECTOR_KEY_ID, &req, VECTOR_CREATED, VECTOR_NONCE);
        let signed = signed.unwrap();
        let fields = signed.fields();
        let msg = Message {
            method: req.method,
            authority: req.authority,
            path: req.path,
            query: req.query,
            headers: &fields,
        };
        let parsed = parse_signature(&msg).unwrap();
        assert_eq!(parsed.origin, "a.example");
        assert_eq!(parsed.destination, "b.example");
        assert_eq!(parsed.key_id, VECTOR_KEY_ID);
        assert_eq!(parsed.nonce, VECTOR_NONCE);
        assert_eq!(parsed.created_s, VECTOR_CREATED);
        assert_eq!(parsed.expires_s, None);
        assert_eq!(parsed.verify(&msg, &key.verifying_key()), Ok(()));
        let other = SigningKey::from_bytes(&[7; 32]).verifying_key();
        assert_eq!(parsed.verify(&msg, &other), Err(VerifyError::BadSignature));
    }

    #[test]
    fn refuses_to_sign_values_that_cannot_travel() {
        let key = vector_key();
        let bad = [
            OutgoingRequest {
                origin: "",
                ..vector_request()
            },
            OutgoingRequest {
                destination: "b example",
                ..vector_request()
            },
            OutgoingRequest {
                path: "/x\r\n",
                ..vector_request()
            },
            OutgoingRequest {
                query: Some("a=1\nb"),
                ..vector_request()
            },
            OutgoingRequest {
                query: Some("a b"),
                ..vector_request()
            },
        ];
        for req in bad {
            assert!(
                sign_request(&key, VECTOR_KEY_ID, &req, 1, "n").is_err(),
                "{req:?}"
            );
        }
        let long_nonce = "n".repeat(MAX_NONCE_LEN + 1);
        let req = vector_request();
        assert!(sign_request(&key, VECTOR_KEY_ID, &req, 1, &long_nonce).is_err());
    }
}
