//! Identifiers, parsed once at the edge so that invalid ids never travel inward.
//!
//! Chats, devices and messages are ULIDs: 16 bytes that sort by creation time, so
//! they make good big-endian key prefixes. On the wire they are opaque 26-character
//! strings. Delivery ids are a node-wide monotonic `u64` (so a device's ids only
//! grow); on the wire they are decimal strings. Users are `name@node`.

use std::fmt;

use serde::{Deserialize, Serialize};
use ulid::Ulid;

/// Generates a fresh ULID. Monotonic within this process for a given millisecond.
fn next_ulid() -> Ulid {
    use std::sync::Mutex;
    // A process-wide generator keeps ULIDs made in the same millisecond ordered,
    // which keeps chat ids made in a burst in creation order.
    static GEN: Mutex<Option<ulid::Generator>> = Mutex::new(None);
    let mut guard = GEN.lock().unwrap_or_else(|e| e.into_inner());
    let generator = guard.get_or_insert_with(ulid::Generator::new);
    generator.generate().unwrap_or_else(|_| Ulid::new())
}

macro_rules! ulid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Ulid);

        impl $name {
            /// A new id, ordered after every id made earlier by this process.
            pub fn generate() -> Self {
                Self(next_ulid())
            }

            /// Parses the wire form. `None` for anything that is not a ULID.
            pub fn parse(s: &str) -> Option<Self> {
                Ulid::from_string(s).ok().map(Self)
            }

            /// The 16 big-endian bytes used in store keys.
            pub fn to_bytes(self) -> [u8; 16] {
                self.0.to_bytes()
            }

            pub fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(Ulid::from_bytes(bytes))
            }

            /// Reads an id from the first 16 bytes of a key.
            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                let arr: [u8; 16] = bytes.get(..16)?.try_into().ok()?;
                Some(Self::from_bytes(arr))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
                Self::parse(&s).ok_or_else(|| serde::de::Error::custom("invalid id"))
            }
        }
    };
}

ulid_id!(
    /// A chat.
    ChatId
);
ulid_id!(
    /// One device (a login) of a user: the Clients table of the design.
    DeviceId
);
ulid_id!(
    /// One message, unique across chats.
    MessageId
);
ulid_id!(
    /// One uploaded file. Time-ordered, so the oldest uploads are scanned first.
    AttachmentId
);

/// A delivery to one device. Node-wide monotonic, so per device it only grows.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeliveryId(pub u64);

impl DeliveryId {
    pub fn parse(s: &str) -> Option<Self> {
        // Canonical decimal only: no sign, no leading zeros, so one id has one spelling.
        if s.is_empty() || s.len() > 20 || (s.len() > 1 && s.starts_with('0')) {
            return None;
        }
        if !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok().map(Self)
    }
}

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A local user name: 1–32 of `a-z 0-9 . _ -`, starting with a letter or digit.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Username(String);

impl Username {
    pub fn parse(s: &str) -> Option<Self> {
        let bytes = s.as_bytes();
        let first_ok = bytes
            .first()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let all_ok = bytes.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
        (first_ok && all_ok && bytes.len() <= 32).then(|| Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Username {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s).ok_or_else(|| format!("invalid username {s:?}"))
    }
}

impl From<Username> for String {
    fn from(u: Username) -> String {
        u.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A node name: a DNS-like name (`localhost`, `chat.example.org`, `node-1`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeName(String);

impl TryFrom<String> for NodeName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s).ok_or_else(|| format!("invalid node name {s:?}"))
    }
}

impl From<NodeName> for String {
    fn from(n: NodeName) -> String {
        n.0
    }
}

impl NodeName {
    pub fn parse(s: &str) -> Option<Self> {
        let ok = !s.is_empty()
            && s.len() <= 253
            && s.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            });
        ok.then(|| Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A user as named in a command: `name@node`, or a bare `name` meaning this node.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct UserRef {
    pub name: Username,
    pub node: NodeName,
}

impl UserRef {
    /// Parses `name@node` or a bare `name` (which means `local`).
    pub fn parse(s: &str, local: &NodeName) -> Option<Self> {
        if s.contains('@') {
            return Self::parse_full(s).ok();
        }
        Some(Self {
            name: Username::parse(s)?,
            node: local.clone(),
        })
    }

    /// Parses the full `name@node` form; the error says which part is wrong.
    fn parse_full(s: &str) -> Result<Self, &'static str> {
        let (name, node) = s.split_once('@').ok_or("expected name@node")?;
        Ok(Self {
            name: Username::parse(name).ok_or("invalid name")?,
            node: NodeName::parse(node).ok_or("invalid node")?,
        })
    }
}

impl Serialize for UserRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for UserRef {
    /// Only the full `name@node` form: a bare name has no node to resolve against.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Self::parse_full(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for UserRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.node)
    }
}

/// A gateway process's id: one NATS subject token, 1-32 of `a-z 0-9 -`. It
/// names the gateway's delivery subject, its durable consumer and its presence.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GatewayId(String);

impl GatewayId {
    pub fn parse(s: &str) -> Option<Self> {
        let ok = !s.is_empty()
            && s.len() <= 32
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        ok.then(|| Self(s.to_owned()))
    }

    /// A fresh id (`gw-` and ten random characters) for a process not given one.
    pub fn generate() -> Self {
        Self(format!(
            "gw-{}",
            Ulid::new().to_string()[16..].to_ascii_lowercase()
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for GatewayId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s).ok_or_else(|| format!("invalid gateway id {s:?}"))
    }
}

impl From<GatewayId> for String {
    fn from(g: GatewayId) -> String {
        g.0
    }
}

impl fmt::Display for GatewayId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        for ok in [
            "a",
            "alice",
            "bob.smith",
            "x_1-2",
            "9lives",
            &"a".repeat(32),
        ] {
            assert!(Username::parse(ok).is_some(), "{ok}");
        }
        for bad in [
            "",
            "Alice",
            "_a",
            ".a",
            "-a",
            "a b",
            "a@b",
            "é",
            &"a".repeat(33),
        ] {
            assert!(Username::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn user_refs() {
        let local = NodeName::parse("localhost").unwrap();
        let bare = UserRef::parse("alice", &local).unwrap();
        assert_eq!(bare.to_string(), "alice@localhost");
        let remote = UserRef::parse("bob@chat.example.org", &local).unwrap();
        assert_eq!(remote.node.as_str(), "chat.example.org");
        assert!(UserRef::parse("bob@", &local).is_none());
        assert!(UserRef::parse("bob@Bad_Node", &local).is_none());
    }

    #[test]
    fn ulid_ids_round_trip_and_order() {
        let a = ChatId::generate();
        let b = ChatId::generate();
        assert!(a < b);
        assert!(a.to_bytes() < b.to_bytes());
        assert_eq!(ChatId::parse(&a.to_string()), Some(a));
        assert_eq!(ChatId::from_slice(&a.to_bytes()), Some(a));
        assert_eq!(ChatId::parse("nope"), None);
    }

    #[test]
    fn delivery_ids_have_one_spelling() {
        assert_eq!(DeliveryId::parse("42"), Some(DeliveryId(42)));
        assert_eq!(DeliveryId::parse("0"), Some(DeliveryId(0)));
        for bad in [
            "",
            "042",
            "-1",
            "+1",
            "1.0",
            "abc",
            "99999999999999999999999",
        ] {
            assert_eq!(DeliveryId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn gateway_ids_are_single_tokens() {
        assert!(GatewayId::parse("gw-1").is_some());
        for bad in ["gw.1", "GW", "", "*", &"a".repeat(33)] {
            assert!(GatewayId::parse(bad).is_none(), "{bad}");
        }
        let generated = GatewayId::generate();
        assert_eq!(GatewayId::parse(generated.as_str()), Some(generated));
    }
}
