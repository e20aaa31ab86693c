//! Property tests of the client frame decoder: whatever a client sends, the
//! decoder does not panic, and what it answers is a protocol v1 frame (a
//! command, `auth`, or an error with a v1 code that carries the request's id
//! whenever the request had a usable one). A bounded number of cases, so they
//! run in CI with the other unit tests; failing inputs are shrunk and printed.

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::*;

/// The error codes of protocol v1 (shared/PROTOCOL.md, "Error codes").
const V1_CODES: [ErrorCode; 13] = [
    ErrorCode::BadRequest,
    ErrorCode::UnknownType,
    ErrorCode::Unauthorized,
    ErrorCode::Forbidden,
    ErrorCode::UnknownChat,
    ErrorCode::UnknownUser,
    ErrorCode::NotParticipant,
    ErrorCode::TooManyParticipants,
    ErrorCode::MessageTooLarge,
    ErrorCode::UnknownAttachment,
    ErrorCode::AttachmentTooLarge,
    ErrorCode::RateLimited,
    ErrorCode::Internal,
];

const TYPES: [&str; 13] = [
    "auth",
    "ack",
    "createChat",
    "sendMessage",
    "modifyChatParticipants",
    "getAttachmentTarget",
    "getAttachmentUrl",
    "listChats",
    "sync",
    "getHistory",
    "markRead",
    "renameChat",
    "noSuchCommand",
];

const FIELDS: [&str; 24] = [
    "token",
    "deliveryIds",
    "participants",
    "name",
    "chatId",
    "message",
    "attachments",
    "clientMsgId",
    "userId",
    "operation",
    "size",
    "contentType",
    "sha256",
    "attachmentId",
    "limit",
    "cursor",
    "beforeSeq",
    "afterSeq",
    "seq",
    "type",
    "id",
    "__proto__",
    "",
    "\u{202e}",
];

/// Strings a hostile client would try: ids of the right shape, names with
/// control and bidi characters, users of other nodes, huge and empty ones.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        2 => Just(ChatId::generate().to_string()),
        1 => Just(crate::ids::DeviceId::generate().to_string()),
        1 => Just("bob@other.example".to_string()),
        1 => Just("ADD".to_string()),
        1 => Just("REMOVE".to_string()),
        1 => Just("image/png".to_string()),
        1 => Just("47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=".to_string()),
        1 => "[a-z\u{0}-\u{1f}\u{202a}-\u{202e}]{0,40}",
        1 => (0usize..70_000).prop_map(|n| "x".repeat(n)),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        (0u64..300).prop_map(Value::from),
    ]
}

/// Any JSON value, nested a few levels.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..12).prop_map(Value::Array),
            prop::collection::vec((text(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// An object that looks like a command: a type (mostly a known one), usually
/// an id, and fields with the names commands use, holding anything.
fn frame() -> impl Strategy<Value = Value> {
    let kind = prop_oneof![
        6 => prop::sample::select(&TYPES[..]).prop_map(|t| Value::String(t.into())),
        1 => value(),
    ];
    let id = prop_oneof![
        4 => "[a-z0-9-]{1,12}".prop_map(Value::String),
        1 => value(),
    ];
    let fields = prop::collection::vec((prop::sample::select(&FIELDS[..]), value()), 0..8);
    (prop::option::of(kind), prop::option::of(id), fields).prop_map(|(kind, id, fields)| {
        let mut map = Map::new();
        for (name, v) in fields {
            map.insert(name.to_string(), v);
        }
        if let Some(kind) = kind {
            map.insert("type".into(), kind);
        }
        if let Some(id) = id {
            map.insert("id".into(), id);
        }
        Value::Object(map)
    })
}

/// Valid frames with one character inserted, deleted or replaced.
fn mutated() -> impl Strategy<Value = String> {
    let valid = [
        json!({"type":"sendMessage","id":"1","chatId": ChatId::generate().to_string(),"message":"hi"}),
        json!({"type":"createChat","id":"2","participants":["bob","carol@other.example"],"name":"x"}),
        json!({"type":"ack","deliveryIds":[crate::ids::DeliveryId(7).to_string()]}),
        json!({"type":"getHistory","id":"3","chatId": ChatId::generate().to_string(),"limit":20}),
    ]
    .map(|v| v.to_string());
    (
        prop::sample::select(valid.to_vec()),
        any::<prop::sample::Index>(),
        any::<char>(),
        0u8..3,
    )
        .prop_map(|(frame, at, c, how)| {
            let mut chars: Vec<char> = frame.chars().collect();
            let i = at.index(chars.len());
            match how {
                0 => chars.insert(i, c),
                1 => {
                    chars.remove(i);
                }
                _ => chars[i] = c,
            }
            chars.into_iter().collect()
        })
}

/// What must hold for any input: no panic, and a v1 answer.
fn answers_in_v1(text: &str) -> Result<(), TestCaseError> {
    let local = NodeName::parse("localhost").unwrap();
    let Err(err) = decode_client_frame(text, &local) else {
        return Ok(());
    };
    prop_assert!(
        V1_CODES.contains(&err.code),
        "{:?} is not a v1 code",
        err.code
    );
    prop_assert!(!err.message.is_empty());
    // The error carries the request's id whenever it had a usable one.
    if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text)
        && let Some(Value::String(id)) = map.get("id")
        && id.chars().count() <= MAX_REQUEST_ID_CHARS
    {
        prop_assert_eq!(err.id.as_deref(), Some(id.as_str()));
    }
    // And never an id the request did not have.
    if let Some(id) = &err.id {
        let request: Value = serde_json::from_str(text).unwrap_or_default();
        prop_assert_eq!(request.get("id").and_then(Value::as_str), Some(id.as_str()));
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000)
}

proptest! {
    // 1,000 cases each in CI; `PROPTEST_CASES=100000` for a longer hunt.
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn any_text_gets_a_v1_answer(text in any::<String>()) {
        answers_in_v1(&text)?;
    }

    #[test]
    fn command_shaped_objects_get_a_v1_answer(frame in frame()) {
        answers_in_v1(&frame.to_string())?;
    }

    #[test]
    fn mutated_valid_frames_get_a_v1_answer(text in mutated()) {
        answers_in_v1(&text)?;
    }

    #[test]
    fn any_json_gets_a_v1_answer(v in value()) {
        answers_in_v1(&v.to_string())?;
    }
}
