//! HTTP Message Signatures (RFC 9421) in general: the value of each covered
//! component of a request (§2.1, §2.2), the signature base (§2.5), and the
//! `Signature-Input` and `Signature` dictionaries (§4), parsed and serialized
//! as structured fields (RFC 9651) with `sfv`.
//!
//! It knows nothing of natter's profile (which components, which parameters,
//! whose key): that is [`super::signing`]. A request is seen through
//! [`Message`], so no HTTP library is involved. Supported components: the
//! derived `@method`, `@authority`, `@path`, `@query`, `@request-target`, and
//! header fields by name; component parameters (`;sf`, `;key`, `;req`, ...)
//! are refused as malformed.

use sfv::{
    BareItem, Dictionary, InnerList, Item, Key, ListEntry, ListSerializer, Parameters, Parser,
};

use super::error::{SignError, VerifyError};

/// The parts of an HTTP request a signature can cover.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    /// The method as sent, e.g. `POST` (case-sensitive, §2.2.1).
    pub method: &'a str,
    /// The target's authority as in `Host`, e.g. `b.example:8443`; compared
    /// lowercased (§2.2.3).
    pub authority: &'a str,
    /// The absolute path as sent, percent-encoding untouched; empty means `/`.
    pub path: &'a str,
    /// The query as sent, without its `?`; `None` when there is none.
    pub query: Option<&'a str>,
    /// Header fields as (name, value); names match case-insensitively and
    /// repeated fields are joined with `", "` (§2.1).
    pub headers: &'a [(&'a str, &'a str)],
}

impl Message<'_> {
    /// A header field's value per §2.1: each instance trimmed, joined by `", "`.
    pub fn field(&self, name: &str) -> Option<String> {
        let mut values = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim_matches([' ', '\t']));
        let first = values.next()?.to_owned();
        Some(values.fold(first, |mut all, v| {
            all.push_str(", ");
            all.push_str(v);
            all
        }))
    }

    /// The value of one covered component, as it goes into the signature base.
    pub fn component_value(&self, id: &str) -> Result<String, VerifyError> {
        let path = if self.path.is_empty() { "/" } else { self.path };
        let value = match id {
            "@method" => self.method.to_owned(),
            "@authority" => self.authority.to_ascii_lowercase(),
            "@path" => path.to_owned(),
            // §2.2.7: an absent query is the `?` alone.
            "@query" => format!("?{}", self.query.unwrap_or("")),
            "@request-target" => match self.query {
                Some(q) => format!("{path}?{q}"),
                None => path.to_owned(),
            },
            _ if id.starts_with('@') => {
                return Err(VerifyError::Malformed("unsupported derived component"));
            }
            name => self
                .field(name)
                .ok_or(VerifyError::Malformed("a covered header field is missing"))?,
        };
        if value.contains(['\r', '\n']) {
            return Err(VerifyError::Malformed("a component value has a line break"));
        }
        Ok(value)
    }
}

/// One signature's entry in `Signature-Input`: its label, the covered
/// components in order, and its parameters in order (§4.1).
#[derive(Clone, Debug, PartialEq)]
pub struct SignatureInput {
    label: String,
    list: InnerList,
}

impl SignatureInput {
    /// An entry to sign with. Component ids must be lowercase; parameters keep
    /// the order given.
    pub fn new(
        label: &str,
        components: &[&str],
        params: Vec<(&'static str, BareItem)>,
    ) -> Result<Self, SignError> {
        let mut items = Vec::with_capacity(components.len());
        for c in components {
            let s = sfv::String::from_string((*c).to_owned())
                .map_err(|_| SignError::InvalidValue { field: "component" })?;
            items.push(Item::new(s));
        }
        let mut map = Parameters::new();
        for (name, value) in params {
            let key = Key::from_string(name.to_owned())
                .map_err(|_| SignError::InvalidValue { field: "parameter" })?;
            map.insert(key, value);
        }
        let input = Self {
            label: label.to_owned(),
            list: InnerList::with_params(items, map),
        };
        input
            .check_components()
            .map_err(|_| SignError::InvalidValue { field: "component" })?;
        Ok(input)
    }

    /// Finds the entry labelled `label` in a `Signature-Input` field value.
    pub fn parse(field: &str, label: &str) -> Result<Self, VerifyError> {
        let dict: Dictionary = Parser::new(field)
            .parse()
            .map_err(|_| VerifyError::Malformed("Signature-Input is not a dictionary"))?;
        let list = match dict.get(label) {
            Some(ListEntry::InnerList(list)) => list.clone(),
            Some(ListEntry::Item(_)) => {
                return Err(VerifyError::Malformed(
                    "Signature-Input entry is not a list",
                ));
            }
            None => return Err(VerifyError::Malformed("no Signature-Input for our label")),
        };
        let input = Self {
            label: label.to_owned(),
            list,
        };
        input.check_components()?;
        Ok(input)
    }

    /// §2.5: every component a lowercase string without parameters, none twice.
    fn check_components(&self) -> Result<(), VerifyError> {
        let mut seen: Vec<&str> = Vec::with_capacity(self.list.items.len());
        for item in &self.list.items {
            let id = item
                .bare_item
                .as_string()
                .ok_or(VerifyError::Malformed("a component id is not a string"))?
                .as_str();
            if !item.params.is_empty() {
                return Err(VerifyError::Malformed(
                    "component parameters are not supported",
                ));
            }
            if id.bytes().any(|b| b.is_ascii_uppercase()) || seen.contains(&id) {
                return Err(VerifyError::Malformed(
                    "component ids must be lowercase and distinct",
                ));
            }
            seen.push(id);
        }
        Ok(())
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// The covered component ids, in order.
    pub fn components(&self) -> Vec<&str> {
        let strings = self
            .list
            .items
            .iter()
            .filter_map(|i| i.bare_item.as_string());
        strings.map(|s| s.as_str()).collect()
    }

    /// A signature parameter (`created`, `keyid`, ...), if present.
    pub fn param(&self, name: &str) -> Option<&BareItem> {
        self.list.params.get(name)
    }

    /// The `@signature-params` value: the serialized inner list with its
    /// parameters, e.g. `("@method" "@path");created=1618884473` (§2.3).
    pub fn params_value(&self) -> String {
        let mut out = String::new();
        let mut list = ListSerializer::with_buffer(&mut out);
        let mut inner = list.inner_list();
        inner.items(&self.list.items);
        inner.finish().parameters(&self.list.params);
        out
    }

    /// The `Signature-Input` field value carrying this one entry.
    pub fn to_field(&self) -> String {
        format!("{}={}", self.label, self.params_value())
    }

    /// The signature base over `msg` (§2.5): one line per covered component,
    /// `"<id>": <value>`, then the `"@signature-params"` line, no final newline.
    pub fn signature_base(&self, msg: &Message<'_>) -> Result<String, VerifyError> {
        let mut base = String::new();
        for id in self.components() {
            let value = msg.component_value(id)?;
            base.push_str(&format!("\"{id}\": {value}\n"));
        }
        base.push_str(&format!("\"@signature-params\": {}", self.params_value()));
        Ok(base)
    }
}

/// The `Signature` field value carrying one signature under `label` (§4.2).
pub fn signature_field(label: &str, signature: &[u8]) -> Result<String, SignError> {
    let key = Key::from_string(label.to_owned())
        .map_err(|_| SignError::InvalidValue { field: "label" })?;
    let mut dict = sfv::DictSerializer::new();
    dict.bare_item(&key, signature);
    dict.finish()
        .ok_or(SignError::InvalidValue { field: "signature" })
}

/// The signature bytes under `label` in a `Signature` field value.
pub fn parse_signature_field(field: &str, label: &str) -> Result<Vec<u8>, VerifyError> {
    let dict: Dictionary = Parser::new(field)
        .parse()
        .map_err(|_| VerifyError::Malformed("Signature is not a dictionary"))?;
    match dict.get(label) {
        Some(ListEntry::Item(item)) => {
            item.bare_item
                .as_byte_sequence()
                .map(<[u8]>::to_vec)
                .ok_or(VerifyError::Malformed(
                    "Signature entry is not a byte sequence",
                ))
        }
        Some(ListEntry::InnerList(_)) => Err(VerifyError::Malformed("Signature entry is a list")),
        None => Err(VerifyError::Malformed("no Signature for our label")),
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

    use super::*;

    // RFC 9421 Appendix B.1.4, `test-key-ed25519`, as PKCS#8 and SPKI DER in
    // base64: the raw 32-byte seed and public key are the last 32 bytes of each.
    const B14_PRIVATE: &str = "MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF";
    const B14_PUBLIC: &str = "MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=";

    // Appendix B.2's request:
    //   POST /foo?param=Value&Pet=dog HTTP/1.1
    //   Host: example.com
    //   Date: Tue, 20 Apr 2021 02:07:55 GMT
    //   Content-Type: application/json
    //   Content-Digest: sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:
    //   Content-Length: 18
    //
    //   {"hello": "world"}
    const B2_HEADERS: [(&str, &str); 5] = [
        ("Host", "example.com"),
        ("Date", "Tue, 20 Apr 2021 02:07:55 GMT"),
        ("Content-Type", "application/json"),
        (
            "Content-Digest",
            "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:",
        ),
        ("Content-Length", "18"),
    ];

    // Appendix B.2.6: the fields and the signature base.
    const B26_INPUT: &str = r#"sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519""#;
    const B26_SIGNATURE: &str = "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:";
    const B26_BASE: &str = concat!(
        "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n",
        "\"@method\": POST\n",
        "\"@path\": /foo\n",
        "\"@authority\": example.com\n",
        "\"content-type\": application/json\n",
        "\"content-length\": 18\n",
        "\"@signature-params\": (\"date\" \"@method\" \"@path\" \"@authority\" ",
        "\"content-type\" \"content-length\");created=1618884473;keyid=\"test-key-ed25519\"",
    );

    fn last_32(der_b64: &str) -> [u8; 32] {
        let der = STANDARD.decode(der_b64).unwrap();
        der[der.len() - 32..].try_into().unwrap()
    }

    fn b2_request() -> Message<'static> {
        Message {
            method: "POST",
            authority: "example.com",
            path: "/foo",
            query: Some("param=Value&Pet=dog"),
            headers: &B2_HEADERS,
        }
    }

    #[test]
    fn rfc9421_b26_ed25519_vector() {
        let key = SigningKey::from_bytes(&last_32(B14_PRIVATE));
        let public = VerifyingKey::from_bytes(&last_32(B14_PUBLIC)).unwrap();
        assert_eq!(
            key.verifying_key(),
            public,
            "the B.1.4 key pair belongs together"
        );

        let input = SignatureInput::parse(B26_INPUT, "sig-b26").unwrap();
        assert_eq!(input.to_field(), B26_INPUT, "serializes back unchanged");
        let base = input.signature_base(&b2_request()).unwrap();
        assert_eq!(base, B26_BASE);

        // Ed25519 is deterministic: signing the base must give the RFC's bytes.
        let expected = parse_signature_field(B26_SIGNATURE, "sig-b26").unwrap();
        let signature = key.sign(base.as_bytes()).to_bytes();
        assert_eq!(signature.as_slice(), expected.as_slice());
        assert_eq!(
            signature_field("sig-b26", &signature).unwrap(),
            B26_SIGNATURE
        );
        let parsed = Signature::from_slice(&expected).unwrap();
        public.verify_strict(base.as_bytes(), &parsed).unwrap();
    }

    #[test]
    fn derived_components_follow_section_2_2() {
        let headers = [("X-A", " one "), ("x-a", "two\t")];
        let msg = Message {
            method: "GET",
            authority: "Node.Example:8443",
            path: "",
            query: None,
            headers: &headers,
        };
        let cases = [
            ("@method", "GET"),
            ("@authority", "node.example:8443"),
            ("@path", "/"),
            ("@query", "?"),
            ("@request-target", "/"),
            ("x-a", "one, two"),
        ];
        for (id, value) in cases {
            assert_eq!(msg.component_value(id).unwrap(), value, "{id}");
        }
        for id in ["@target-uri", "missing"] {
            assert!(
                matches!(msg.component_value(id), Err(VerifyError::Malformed(_))),
                "{id}"
            );
        }
    }

    #[test]
    fn refuses_inputs_outside_what_is_supported() {
        let bad = [
            r#"sig=("@method" "@method");created=1"#,
            r#"sig=("Date");created=1"#,
            r#"sig=("@query-param";name="Pet");created=1"#,
            r#"sig=(date);created=1"#,
            r#"sig="@method""#,
            r#"other=("@method")"#,
            "sig=(",
        ];
        for field in bad {
            assert!(
                matches!(
                    SignatureInput::parse(field, "sig"),
                    Err(VerifyError::Malformed(_))
                ),
                "{field}"
            );
        }
    }
}
