//! `Content-Digest` (RFC 9530) with sha-256: the value a signer sends for a
//! body, and the check of a received body against the value it came with.
//!
//! The digest is over the raw body bytes exactly as sent: no JSON
//! canonicalization, nothing parsed. Other algorithms in the field are ignored;
//! natter requires `sha-256`.

use sfv::{Dictionary, KeyRef, ListEntry, Parser};
use sha2::{Digest, Sha256};

use super::error::VerifyError;

const SHA_256: &str = "sha-256";

/// The `Content-Digest` value for `body`: `sha-256=:<base64>:`.
pub fn content_digest(body: &[u8]) -> String {
    let hash = Sha256::digest(body);
    let mut dict = sfv::DictSerializer::new();
    // "sha-256" is a valid structured-field key (lowercase, digits, '-').
    if let Ok(key) = KeyRef::from_str(SHA_256) {
        dict.bare_item(key, hash.as_slice());
    }
    dict.finish().unwrap_or_default()
}

/// Checks `body` against a received `Content-Digest` value.
pub fn check_content_digest(field: &str, body: &[u8]) -> Result<(), VerifyError> {
    let dict: Dictionary = Parser::new(field)
        .parse()
        .map_err(|_| VerifyError::Malformed("Content-Digest is not a dictionary"))?;
    let sent = match dict.get(SHA_256) {
        Some(ListEntry::Item(item)) => item.bare_item.as_byte_sequence(),
        _ => None,
    };
    let sent = sent.ok_or(VerifyError::Malformed("Content-Digest has no sha-256"))?;
    if sent == Sha256::digest(body).as_slice() {
        Ok(())
    } else {
        Err(VerifyError::DigestMismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_the_rfc_example_body() {
        // The body of RFC 9421 Appendix B.2's example request; its sha-256
        // computed independently (`printf ... | sha256sum | xxd -r -p | base64`).
        let body = br#"{"hello": "world"}"#;
        let field = content_digest(body);
        assert_eq!(
            field,
            "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
        );
        assert_eq!(check_content_digest(&field, body), Ok(()));
    }

    #[test]
    fn refuses_other_bodies_and_missing_sha256() {
        let field = content_digest(b"one");
        assert_eq!(
            check_content_digest(&field, b"two"),
            Err(VerifyError::DigestMismatch)
        );
        let other = "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:";
        assert!(matches!(
            check_content_digest(other, b"one"),
            Err(VerifyError::Malformed(_))
        ));
        assert!(matches!(
            check_content_digest("not a digest(", b"one"),
            Err(VerifyError::Malformed(_))
        ));
    }
}
