//! The [`Verifier`]: every check an inbound federation request passes before
//! its body is parsed, in the order docs/federation.md fixes, and the replay
//! cache those checks share.
//!
//! Order: the origin is a known peer, its key is valid now, the signature
//! verifies, the destination is this node, `created` is within the window, the
//! body matches `Content-Digest`, the nonce is unseen. The nonce is recorded
//! last, so only a request that passed everything else uses it up. Time comes
//! in as `now_ms`; the module never reads a clock.

use std::sync::{Mutex, PoisonError};

use super::digest::check_content_digest;
use super::error::VerifyError;
use super::keys::{KeyLookup, PeerKey, PeerKeys};
use super::nonce::NonceCache;
use super::rfc9421::Message;
use super::signing::{CONTENT_DIGEST, ParsedSignature, parse_signature};

/// ±5 minutes (DESIGN §5).
pub const DEFAULT_WINDOW_MS: i64 = 5 * 60 * 1000;
/// About 13 MB at most (docs/federation.md); enough for 330 accepted
/// requests/s sustained over the 10-minute retention.
pub const DEFAULT_NONCE_CAPACITY: usize = 200_000;

/// What the verifier needs to know about this node.
#[derive(Clone, Debug)]
pub struct VerifierConfig {
    /// This node's name; requests must name it in `natter-destination`.
    pub node: String,
    /// How far `created` may be from now, either way. Nonces are kept twice as long.
    pub window_ms: i64,
    /// The most nonces remembered at once.
    pub nonce_capacity: usize,
}

impl VerifierConfig {
    pub fn new(node: &str) -> Self {
        Self {
            node: node.to_owned(),
            window_ms: DEFAULT_WINDOW_MS,
            nonce_capacity: DEFAULT_NONCE_CAPACITY,
        }
    }
}

/// Who sent an accepted request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub origin: String,
    pub key_id: String,
    pub created_s: i64,
}

/// Checks signed requests against the peers' keys; shared by the federation
/// endpoints (`&self`: the replay cache has its own short-held lock).
#[derive(Debug)]
pub struct Verifier<K> {
    config: VerifierConfig,
    keys: K,
    nonces: Mutex<NonceCache>,
}

impl<K: PeerKeys> Verifier<K> {
    pub fn new(config: VerifierConfig, keys: K) -> Self {
        let nonces = NonceCache::new(2 * config.window_ms, config.nonce_capacity);
        Self {
            config,
            keys,
            nonces: Mutex::new(nonces),
        }
    }

    pub fn keys(&self) -> &K {
        &self.keys
    }

    /// Runs every check on a request (`msg` with all its header fields, `body`
    /// its raw bytes) at `now_ms`; the first that fails is the error.
    pub fn verify_request(
        &self,
        msg: &Message<'_>,
        body: &[u8],
        now_ms: i64,
    ) -> Result<Verified, VerifyError> {
        let sig = parse_signature(msg)?;
        let key = self.valid_key(&sig, now_ms)?;
        sig.verify(msg, &key.key)?;
        if !sig.destination.eq_ignore_ascii_case(&self.config.node) {
            return Err(VerifyError::WrongDestination {
                destination: sig.destination,
            });
        }
        self.check_time(&sig, now_ms)?;
        // Present: it is a covered component, so the signature check needed it.
        let digest = msg.field(CONTENT_DIGEST).unwrap_or_default();
        check_content_digest(&digest, body)?;
        self.check_nonce(&sig, now_ms)?;
        Ok(Verified {
            origin: sig.origin,
            key_id: sig.key_id,
            created_s: sig.created_s,
        })
    }

    /// The origin is a peer and the named key is one of its keys, valid now.
    fn valid_key(&self, sig: &ParsedSignature, now_ms: i64) -> Result<Box<PeerKey>, VerifyError> {
        let not_valid = || VerifyError::KeyNotValid {
            origin: sig.origin.clone(),
            key_id: sig.key_id.clone(),
        };
        match self.keys.lookup(&sig.origin, &sig.key_id) {
            KeyLookup::UnknownPeer => Err(VerifyError::UnknownOrigin {
                origin: sig.origin.clone(),
            }),
            KeyLookup::UnknownKey => Err(not_valid()),
            KeyLookup::Found(key) if key.is_valid_at(now_ms) => Ok(key),
            KeyLookup::Found(_) => Err(not_valid()),
        }
    }

    /// `created` within ±window of now, and `expires` (if any) not yet reached.
    fn check_time(&self, sig: &ParsedSignature, now_ms: i64) -> Result<(), VerifyError> {
        let to_ms = |s: i64| {
            s.checked_mul(1000)
                .ok_or(VerifyError::Malformed("timestamp out of range"))
        };
        let skew_ms = to_ms(sig.created_s)?.saturating_sub(now_ms);
        if skew_ms.abs() > self.config.window_ms {
            return Err(VerifyError::StaleTimestamp { skew_ms });
        }
        if let Some(expires) = sig.expires_s
            && now_ms >= to_ms(expires)?
        {
            return Err(VerifyError::StaleTimestamp { skew_ms });
        }
        Ok(())
    }

    fn check_nonce(&self, sig: &ParsedSignature, now_ms: i64) -> Result<(), VerifyError> {
        let mut nonces = self.nonces.lock().unwrap_or_else(PoisonError::into_inner);
        if nonces.insert(&sig.origin, &sig.nonce, now_ms) {
            Ok(())
        } else {
            Err(VerifyError::ReplayedNonce)
        }
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::federation::keys::{PeerDirectory, key_id};
    use crate::federation::signing::{OutgoingRequest, sign_request};

    const NOW_MS: i64 = 1_767_225_600_000;
    const A: &str = "a.example";
    const B: &str = "b.example";

    fn a_key() -> SigningKey {
        SigningKey::from_bytes(&[1; 32])
    }

    /// A request as it arrives: line, header fields, body.
    struct Arrived {
        path: String,
        query: Option<String>,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Arrived {
        fn verify<K: PeerKeys>(
            &self,
            v: &Verifier<K>,
            now_ms: i64,
        ) -> Result<Verified, VerifyError> {
            let headers: Vec<(&str, &str)> = self
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            let msg = Message {
                method: "POST",
                authority: "b.example",
                path: &self.path,
                query: self.query.as_deref(),
                headers: &headers,
            };
            v.verify_request(&msg, &self.body, now_ms)
        }
    }

    /// `a.example` signs a request to `destination` with `key`.
    fn signed(key: &SigningKey, destination: &str, created_ms: i64, nonce: &str) -> Arrived {
        let body = br#"{"events":[{"id":"01J"}]}"#;
        let req = OutgoingRequest {
            origin: A,
            destination,
            method: "POST",
            authority: "b.example",
            path: "/federation/v1/events",
            query: None,
            body,
        };
        let id = key_id(&key.verifying_key());
        let headers = sign_request(key, &id, &req, created_ms / 1000, nonce).unwrap();
        let mut fields: Vec<(String, String)> =
            [("host", "b.example"), ("content-type", "application/json")]
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect();
        fields.extend(
            headers
                .fields()
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned())),
        );
        Arrived {
            path: req.path.to_owned(),
            query: None,
            headers: fields,
            body: body.to_vec(),
        }
    }

    fn request(nonce: &str) -> Arrived {
        signed(&a_key(), B, NOW_MS, nonce)
    }

    /// `b.example`, which knows `a.example` by `a_key`, valid from the epoch on.
    fn verifier() -> Verifier<PeerDirectory> {
        let mut peers = PeerDirectory::default();
        peers.add_key(A, PeerKey::new(a_key().verifying_key(), Some(0)));
        Verifier::new(VerifierConfig::new(B), peers)
    }

    #[test]
    fn accepts_a_signed_request() {
        let verified = request("n1").verify(&verifier(), NOW_MS).unwrap();
        assert_eq!(verified.origin, A);
        assert_eq!(verified.key_id, key_id(&a_key().verifying_key()));
        assert_eq!(verified.created_s * 1000, NOW_MS);
    }

    #[test]
    fn refuses_a_tampered_body() {
        let mut req = request("n1");
        req.body = br#"{"events":[{"id":"02K"}]}"#.to_vec();
        assert_eq!(
            req.verify(&verifier(), NOW_MS),
            Err(VerifyError::DigestMismatch)
        );
    }

    #[test]
    fn refuses_a_tampered_path_or_query() {
        let mut req = request("n1");
        req.path = "/federation/v1/other".into();
        assert_eq!(
            req.verify(&verifier(), NOW_MS),
            Err(VerifyError::BadSignature)
        );
        let mut req = request("n2");
        req.query = Some("x=1".into());
        assert_eq!(
            req.verify(&verifier(), NOW_MS),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn refuses_a_request_for_another_node() {
        let req = signed(&a_key(), "c.example", NOW_MS, "n1");
        let expected = VerifyError::WrongDestination {
            destination: "c.example".into(),
        };
        let err = req.verify(&verifier(), NOW_MS).unwrap_err();
        assert_eq!(err, expected);
        assert_eq!((err.status(), err.code()), (403, "wrong_destination"));
    }

    #[test]
    fn refuses_stale_and_future_timestamps_outside_the_window() {
        let v = verifier();
        let window = DEFAULT_WINDOW_MS;
        let cases = [
            (NOW_MS - window - 1000, false),
            (NOW_MS + window + 1000, false),
            (NOW_MS - window, true),
            (NOW_MS + window, true),
        ];
        for (i, (created_ms, ok)) in cases.into_iter().enumerate() {
            let req = signed(&a_key(), B, created_ms, &format!("n{i}"));
            let result = req.verify(&v, NOW_MS);
            if ok {
                assert!(result.is_ok(), "{created_ms}: {result:?}");
            } else {
                let skew_ms = created_ms - NOW_MS;
                assert_eq!(result, Err(VerifyError::StaleTimestamp { skew_ms }));
            }
        }
    }

    #[test]
    fn the_window_is_configurable() {
        let mut config = VerifierConfig::new(B);
        config.window_ms = 10_000;
        let mut peers = PeerDirectory::default();
        peers.add_key(A, PeerKey::new(a_key().verifying_key(), None));
        let v = Verifier::new(config, peers);
        let req = signed(&a_key(), B, NOW_MS - 11_000, "n1");
        let result = req.verify(&v, NOW_MS);
        assert_eq!(
            result,
            Err(VerifyError::StaleTimestamp { skew_ms: -11_000 })
        );
    }

    #[test]
    fn refuses_a_replayed_nonce() {
        let v = verifier();
        let req = request("n1");
        assert!(req.verify(&v, NOW_MS).is_ok());
        assert_eq!(req.verify(&v, NOW_MS + 1), Err(VerifyError::ReplayedNonce));
        // A new request with the same nonce is a replay too.
        let again = signed(&a_key(), B, NOW_MS + 5000, "n1");
        assert_eq!(
            again.verify(&v, NOW_MS + 5000),
            Err(VerifyError::ReplayedNonce)
        );
        // Past the window the copy is refused as stale, not remembered forever.
        let later = NOW_MS + 2 * DEFAULT_WINDOW_MS;
        assert!(matches!(
            req.verify(&v, later),
            Err(VerifyError::StaleTimestamp { .. })
        ));
    }

    #[test]
    fn a_refused_copy_does_not_use_up_the_nonce() {
        let v = verifier();
        let mut tampered = request("n1");
        tampered.body = b"{}".to_vec();
        assert_eq!(
            tampered.verify(&v, NOW_MS),
            Err(VerifyError::DigestMismatch)
        );
        assert!(request("n1").verify(&v, NOW_MS).is_ok());
    }

    #[test]
    fn refuses_an_unknown_origin() {
        let stranger = SigningKey::from_bytes(&[9; 32]);
        let v = Verifier::new(VerifierConfig::new(B), PeerDirectory::default());
        let err = signed(&stranger, B, NOW_MS, "n1")
            .verify(&v, NOW_MS)
            .unwrap_err();
        assert_eq!(err, VerifyError::UnknownOrigin { origin: A.into() });
        assert_eq!((err.status(), err.code()), (401, "unknown_peer"));
    }

    #[test]
    fn refuses_a_key_outside_its_validity_window_or_unknown() {
        let key = a_key().verifying_key();
        let window = |not_before_ms, not_after_ms| {
            let mut peers = PeerDirectory::default();
            let peer_key = PeerKey {
                not_before_ms,
                not_after_ms,
                ..PeerKey::new(key, None)
            };
            peers.add_key(A, peer_key);
            Verifier::new(VerifierConfig::new(B), peers)
        };
        let not_valid = VerifyError::KeyNotValid {
            origin: A.into(),
            key_id: key_id(&key),
        };
        let expired = window(Some(0), Some(NOW_MS));
        assert_eq!(
            request("n1").verify(&expired, NOW_MS),
            Err(not_valid.clone())
        );
        let not_yet = window(Some(NOW_MS + 1), None);
        assert_eq!(
            request("n1").verify(&not_yet, NOW_MS),
            Err(not_valid.clone())
        );
        let other = signed(&SigningKey::from_bytes(&[2; 32]), B, NOW_MS, "n1");
        let unknown = VerifyError::KeyNotValid {
            origin: A.into(),
            key_id: key_id(&SigningKey::from_bytes(&[2; 32]).verifying_key()),
        };
        assert_eq!(other.verify(&verifier(), NOW_MS), Err(unknown));
    }

    #[test]
    fn rotation_accepts_both_keys_during_the_overlap_only() {
        let (old, new) = (a_key(), SigningKey::from_bytes(&[2; 32]));
        let overlap_end = NOW_MS + 7 * 24 * 3600 * 1000;
        let mut peers = PeerDirectory::default();
        let old_key = PeerKey {
            not_after_ms: Some(overlap_end),
            ..PeerKey::new(old.verifying_key(), Some(0))
        };
        peers.add_key(A, old_key);
        peers.add_key(A, PeerKey::new(new.verifying_key(), Some(NOW_MS)));
        let v = Verifier::new(VerifierConfig::new(B), peers);
        assert!(signed(&old, B, NOW_MS, "n1").verify(&v, NOW_MS).is_ok());
        assert!(signed(&new, B, NOW_MS, "n2").verify(&v, NOW_MS).is_ok());
        let after = overlap_end + 1000;
        let result = signed(&old, B, after, "n3").verify(&v, after);
        assert!(
            matches!(result, Err(VerifyError::KeyNotValid { .. })),
            "{result:?}"
        );
        assert!(signed(&new, B, after, "n4").verify(&v, after).is_ok());
    }

    #[test]
    fn refuses_malformed_or_foreign_signatures() {
        let v = verifier();
        let strip = |name: &str| {
            let mut req = request("n1");
            req.headers.retain(|(n, _)| n != name);
            req
        };
        for name in [
            "signature-input",
            "signature",
            "natter-origin",
            "content-digest",
        ] {
            let result = strip(name).verify(&v, NOW_MS);
            assert!(
                matches!(result, Err(VerifyError::Malformed(_))),
                "{name}: {result:?}"
            );
        }
        let replace = |name: &str, from: &str, to: &str| {
            let mut req = request("n1");
            for (n, value) in &mut req.headers {
                if n == name {
                    *value = value.replace(from, to);
                }
            }
            req
        };
        let foreign = [
            replace("signature-input", "alg=\"ed25519\"", "alg=\"hmac-sha256\""),
            replace("signature-input", " \"content-digest\"", ""),
            replace("signature-input", "natter=", "other="),
            replace("signature", "natter=:", "natter=:AAAA"),
        ];
        for req in foreign {
            let result = req.verify(&v, NOW_MS);
            assert!(
                matches!(result, Err(VerifyError::Malformed(_))),
                "{result:?}"
            );
        }
    }

    #[test]
    fn checks_run_in_the_documented_order() {
        // Stale and for another node: the destination is checked first.
        let req = signed(&a_key(), "c.example", NOW_MS - 3_600_000, "n1");
        let result = req.verify(&verifier(), NOW_MS);
        assert!(
            matches!(result, Err(VerifyError::WrongDestination { .. })),
            "{result:?}"
        );
        // A bad signature from an unknown node: the origin is checked first.
        let mut req = request("n2");
        req.path = "/elsewhere".into();
        let v = Verifier::new(VerifierConfig::new(B), PeerDirectory::default());
        let result = req.verify(&v, NOW_MS);
        assert!(
            matches!(result, Err(VerifyError::UnknownOrigin { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn a_closure_can_look_up_keys() {
        let key = a_key().verifying_key();
        let lookup = move |origin: &str, _key_id: &str| match origin {
            A => KeyLookup::Found(Box::new(PeerKey::new(key, None))),
            _ => KeyLookup::UnknownPeer,
        };
        let v = Verifier::new(VerifierConfig::new(B), lookup);
        assert!(request("n1").verify(&v, NOW_MS).is_ok());
    }
}
