//! Wire types of client protocol v1 (docs/protocol.md is the contract).
//!
//! Owns: the JSON shapes of every HTTP body and WebSocket frame, the limits the
//! contract names, the one function that decodes client frames, and the one
//! function that stamps a `deliveryId` onto a pre-serialized event.
//! Does not own: any I/O. No axum, fjall or NATS types appear here; everything
//! serializable here is part of a boundary.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ids::{AttachmentId, ChatId, DeliveryId, NodeName, UserRef};

pub const PROTOCOL_VERSION: u32 = 1;
/// Frames above this close the socket with 1009.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// `message` text limit, in bytes of UTF-8.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// Participants of one chat, the creator included.
pub const MAX_PARTICIPANTS: usize = 100;
pub const MAX_ATTACHMENTS: usize = 10;
pub const MAX_REQUEST_ID_CHARS: usize = 64;
pub const MAX_CLIENT_MSG_ID_CHARS: usize = 64;
pub const MAX_CHAT_NAME_CHARS: usize = 128;
pub const MAX_DEVICE_NAME_CHARS: usize = 64;
pub const MAX_FILE_NAME_CHARS: usize = 255;
pub const HISTORY_DEFAULT_LIMIT: u32 = 50;
pub const HISTORY_MAX_LIMIT: u32 = 200;
/// Chats in one `listChats` answer, when the client does not say (and at most).
pub const CHATS_MAX_LIMIT: u32 = 500;
pub const MAX_ACK_IDS: usize = 1024;
pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// WebSocket close codes used by the server.
pub mod close {
    /// The node is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// A frame was larger than [`super::MAX_FRAME_BYTES`].
    pub const TOO_BIG: u16 = 1009;
    /// The node cannot serve the connection right now (its core is unreachable).
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// An internal fault while serving the connection.
    pub const INTERNAL: u16 = 1011;
    /// Missing, bad or expired token; or no `auth` frame in time.
    pub const UNAUTHORIZED: u16 = 4401;
    /// Another connection of the same device took over.
    pub const DISPLACED: u16 = 4409;
}

/// Every stable error code of the contract (WebSocket and HTTP).
///
/// The wire name is serde's `snake_case`; strum's `snake_case` spells the same
/// name for [`ErrorCode::as_str`] (checked for every variant by a test).
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Debug,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    UnknownType,
    Unauthorized,
    Forbidden,
    UnknownChat,
    UnknownUser,
    NotParticipant,
    TooManyParticipants,
    MessageTooLarge,
    UnknownAttachment,
    AttachmentTooLarge,
    RateLimited,
    Internal,
    /// Extension: a part of the node is temporarily unreachable; retry.
    Unavailable,
    /// Extension: a per-user quota (chats, pending uploads) is used up.
    QuotaExceeded,
    // HTTP only.
    InvalidUsername,
    WeakPassword,
    RegistrationClosed,
    InvalidInvite,
    UsernameTaken,
    BadCredentials,
    UserDisabled,
    NotFound,
}

impl ErrorCode {
    /// The code as it appears on the wire, e.g. `bad_request`.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------- HTTP bodies

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub username: String,
    pub password: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invite: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterResponse {
    pub user_id: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoginResponse {
    pub token: String,
    pub device_id: String,
    pub user_id: String,
}

/// The body of every HTTP error, and the shape of `error` frames minus `type`/`id`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    /// Extension: with `rate_limited`, in how many milliseconds a retry may
    /// succeed (HTTP also sends `Retry-After`, in seconds).
    #[serde(
        rename = "retryAfterMs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub retry_after_ms: Option<u64>,
}

// ------------------------------------------------------------ client frames

/// A decoded client frame.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientFrame {
    /// `{"type":"auth","token":"…"}`, for clients that cannot set headers.
    Auth { token: String },
    Command {
        /// Absent only where the contract allows it (`ack`).
        id: Option<String>,
        command: Command,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operation {
    #[serde(rename = "ADD")]
    Add,
    #[serde(rename = "REMOVE")]
    Remove,
}

/// A client command, validated: ids parsed, limits checked. Serializable because
/// gateways forward commands to the core (over NATS, as [`crate::core::rpc`]).
///
/// Each variant's `type` is its name in camelCase: serde's tag here, and
/// [`CommandKind`] (derived from these variants) for the decoder and for logs.
/// A test checks that both spell every command the same.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, strum::EnumDiscriminants)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
#[strum_discriminants(
    name(CommandKind),
    derive(strum::EnumString, strum::IntoStaticStr, strum::VariantArray),
    strum(serialize_all = "camelCase")
)]
pub enum Command {
    CreateChat {
        participants: Vec<UserRef>,
        name: Option<String>,
    },
    SendMessage {
        chat_id: ChatId,
        message: String,
        attachments: Vec<AttachmentId>,
        client_msg_id: Option<String>,
    },
    ModifyChatParticipants {
        chat_id: ChatId,
        user: UserRef,
        operation: Operation,
    },
    GetAttachmentTarget {
        size: u64,
        content_type: String,
        name: Option<String>,
        /// Extension: base64 SHA-256 of the bytes; the store then refuses others.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
    },
    GetAttachmentUrl {
        attachment_id: AttachmentId,
    },
    /// `limit` chats from `cursor` on (*extension*: paging; without them, the
    /// first [`CHATS_MAX_LIMIT`]).
    ListChats {
        #[serde(default = "chats_max_limit")]
        limit: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
    },
    GetHistory {
        chat_id: ChatId,
        before_seq: Option<u64>,
        after_seq: Option<u64>,
        limit: u32,
    },
    MarkRead {
        chat_id: ChatId,
        seq: u64,
    },
    Ack {
        delivery_ids: Vec<DeliveryId>,
    },
    /// Extension: answered once every event pending for this device when the
    /// command was taken has been sent on this connection.
    Sync,
    /// Extension: renames a chat (`None` clears the name).
    RenameChat {
        chat_id: ChatId,
        name: Option<String>,
    },
}

impl Command {
    /// The `type` this command arrived as (for logs and metrics).
    pub fn kind(&self) -> &'static str {
        CommandKind::from(self).as_str()
    }
}

impl CommandKind {
    /// The command's `type` on the wire, e.g. `sendMessage`.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Why a client frame was refused; becomes an `error` frame.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodeError {
    pub id: Option<String>,
    pub code: ErrorCode,
    pub message: String,
}

impl DecodeError {
    fn new(id: &Option<String>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            id: id.clone(),
            code,
            message: message.into(),
        }
    }
}

// Raw shapes of each command, as they arrive. Unknown fields are ignored so that
// newer clients can talk to older nodes.
#[derive(Deserialize)]
struct RawCreateChat {
    #[serde(default)]
    participants: Vec<String>,
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSendMessage {
    chat_id: String,
    message: String,
    #[serde(default)]
    attachments: Vec<String>,
    client_msg_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawModify {
    chat_id: String,
    user_id: String,
    operation: Operation,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawAttachmentTarget {
    size: u64,
    content_type: String,
    name: Option<String>,
    sha256: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawAttachmentUrl {
    attachment_id: String,
}

fn chats_max_limit() -> u32 {
    CHATS_MAX_LIMIT
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawListChats {
    limit: Option<u32>,
    cursor: Option<String>,
}

impl Checked for RawListChats {
    fn check(self, id: &Option<String>, _local: &NodeName) -> Result<Command, DecodeError> {
        let limit = self.limit.unwrap_or(CHATS_MAX_LIMIT);
        if limit == 0 || limit > CHATS_MAX_LIMIT {
            return Err(DecodeError::new(
                id,
                ErrorCode::BadRequest,
                format!("limit must be 1-{CHATS_MAX_LIMIT}"),
            ));
        }
        if self.cursor.as_ref().is_some_and(|c| c.len() > 64) {
            return Err(DecodeError::new(
                id,
                ErrorCode::BadRequest,
                "invalid cursor",
            ));
        }
        Ok(Command::ListChats {
            limit,
            cursor: self.cursor,
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawHistory {
    chat_id: String,
    before_seq: Option<u64>,
    after_seq: Option<u64>,
    limit: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMarkRead {
    chat_id: String,
    seq: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRename {
    chat_id: String,
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawAck {
    delivery_ids: Vec<String>,
}

#[derive(Deserialize)]
struct RawAuth {
    token: String,
}

fn fields<T: serde::de::DeserializeOwned>(
    map: Map<String, Value>,
    id: &Option<String>,
) -> Result<T, DecodeError> {
    serde_json::from_value(Value::Object(map))
        .map_err(|e| DecodeError::new(id, ErrorCode::BadRequest, format!("invalid fields: {e}")))
}

fn chat_id(s: &str, id: &Option<String>) -> Result<ChatId, DecodeError> {
    ChatId::parse(s).ok_or_else(|| DecodeError::new(id, ErrorCode::UnknownChat, "no such chat"))
}

fn attachment_id(s: &str, id: &Option<String>) -> Result<AttachmentId, DecodeError> {
    AttachmentId::parse(s).ok_or_else(|| {
        DecodeError::new(
            id,
            ErrorCode::UnknownAttachment,
            format!("no such attachment {s:?}"),
        )
    })
}

fn user_ref(s: &str, local: &NodeName, id: &Option<String>) -> Result<UserRef, DecodeError> {
    UserRef::parse(s, local)
        .ok_or_else(|| DecodeError::new(id, ErrorCode::UnknownUser, format!("no such user {s:?}")))
}

/// A command's raw shape, checked into a [`Command`]: ids parsed, limits
/// applied. One impl per command, next to nothing else.
trait Checked: serde::de::DeserializeOwned {
    fn check(self, id: &Option<String>, local: &NodeName) -> Result<Command, DecodeError>;
}

fn checked<T: Checked>(
    map: Map<String, Value>,
    id: &Option<String>,
    local: &NodeName,
) -> Result<Command, DecodeError> {
    fields::<T>(map, id)?.check(id, local)
}

impl Checked for RawAck {
    fn check(self, id: &Option<String>, _local: &NodeName) -> Result<Command, DecodeError> {
        let raw = self;
        if raw.delivery_ids.len() > MAX_ACK_IDS {
            return Err(DecodeError::new(
                id,
                ErrorCode::BadRequest,
                format!("at most {MAX_ACK_IDS} deliveryIds per ack"),
            ));
        }
        let delivery_ids = raw
            .delivery_ids
            .iter()
            .map(|s| DeliveryId::parse(s))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| DecodeError::new(id, ErrorCode::BadRequest, "invalid deliveryId"))?;
        Ok(Command::Ack { delivery_ids })
    }
}

impl Checked for RawCreateChat {
    fn check(self, id: &Option<String>, local: &NodeName) -> Result<Command, DecodeError> {
        let raw = self;
        if let Some(name) = &raw.name {
            check_chat_name(name, id)?;
        }
        // Too many is refused by the core, which knows whether the creator is listed.
        if raw.participants.len() > 4 * MAX_PARTICIPANTS {
            return Err(DecodeError::new(
                id,
                ErrorCode::TooManyParticipants,
                format!("a chat has at most {MAX_PARTICIPANTS} participants"),
            ));
        }
        let participants = raw
            .participants
            .iter()
            .map(|p| user_ref(p, local, id))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Command::CreateChat {
            participants,
            name: raw.name,
        })
    }
}

impl Checked for RawSendMessage {
    fn check(self, id: &Option<String>, _local: &NodeName) -> Result<Command, DecodeError> {
        let raw = self;
        let chat_id = chat_id(&raw.chat_id, id)?;
        if raw.message.len() > MAX_MESSAGE_BYTES {
            return Err(DecodeError::new(
                id,
                ErrorCode::MessageTooLarge,
                format!("message is over {MAX_MESSAGE_BYTES} bytes"),
            ));
        }
        if raw.attachments.len() > MAX_ATTACHMENTS {
            return Err(DecodeError::new(
                id,
                ErrorCode::BadRequest,
                format!("at most {MAX_ATTACHMENTS} attachments"),
            ));
        }
        if raw.message.is_empty() && raw.attachments.is_empty() {
            return Err(DecodeError::new(
                id,
                ErrorCode::BadRequest,
                "a message needs text or attachments",
            ));
        }
        if let Some(c) = &raw.client_msg_id
            && (c.is_empty() || c.chars().count() > MAX_CLIENT_MSG_ID_CHARS)
        {
            return Err(DecodeError::new(
                id,
                ErrorCode::BadRequest,
                format!("clientMsgId must be 1-{MAX_CLIENT_MSG_ID_CHARS} characters"),
            ));
        }
        let attachments = raw
            .attachments
            .iter()
            .map(|a| attachment_id(a, id))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Command::SendMessage {
            chat_id,
            message: raw.message,
            attachments,
            client_msg_id: raw.client_msg_id,
        })
    }
}

impl Checked for RawModify {
    fn check(self, id: &Option<String>, local: &NodeName) -> Result<Command, DecodeError> {
        let raw = self;
        Ok(Command::ModifyChatParticipants {
            chat_id: chat_id(&raw.chat_id, id)?,
            user: user_ref(&raw.user_id, local, id)?,
            operation: raw.operation,
        })
    }
}

impl Checked for RawAttachmentTarget {
    fn check(self, id: &Option<String>, _local: &NodeName) -> Result<Command, DecodeError> {
        let raw = self;
        if !valid_content_type(&raw.content_type) {
            return Err(DecodeError::new(
                id,
                ErrorCode::BadRequest,
                "contentType must be a MIME type like image/png",
            ));
        }
        if raw.size == 0 {
            return Err(DecodeError::new(
                id,
                ErrorCode::BadRequest,
                "size must be at least 1",
            ));
        }
        if let Some(name) = &raw.name
            && (name.is_empty()
                || name.chars().count() > MAX_FILE_NAME_CHARS
                || !displayable(name)
                || name.contains(['/', '\\', '\0']))
        {
            return Err(DecodeError::new(
                id,
                ErrorCode::BadRequest,
                format!(
                    "name must be 1-{MAX_FILE_NAME_CHARS} characters without / or \\, control characters or bidirectional overrides"
                ),
            ));
        }
        if let Some(sum) = &raw.sha256
            && !valid_sha256(sum)
        {
            return Err(DecodeError::new(
                id,
                ErrorCode::BadRequest,
                "sha256 must be the base64 of 32 bytes",
            ));
        }
        Ok(Command::GetAttachmentTarget {
            size: raw.size,
            content_type: raw.content_type,
            name: raw.name,
            sha256: raw.sha256,
        })
    }
}

impl Checked for RawAttachmentUrl {
    fn check(self, id: &Option<String>, _local: &NodeName) -> Result<Command, DecodeError> {
        let raw = self;
        Ok(Command::GetAttachmentUrl {
            attachment_id: attachment_id(&raw.attachment_id, id)?,
        })
    }
}

impl Checked for RawHistory {
    fn check(self, id: &Option<String>, _local: &NodeName) -> Result<Command, DecodeError> {
        let raw = self;
        let limit = raw.limit.unwrap_or(HISTORY_DEFAULT_LIMIT);
        if limit == 0 || limit > HISTORY_MAX_LIMIT {
            return Err(DecodeError::new(
                id,
                ErrorCode::BadRequest,
                format!("limit must be 1-{HISTORY_MAX_LIMIT}"),
            ));
        }
        Ok(Command::GetHistory {
            chat_id: chat_id(&raw.chat_id, id)?,
            before_seq: raw.before_seq,
            after_seq: raw.after_seq,
            limit,
        })
    }
}

impl Checked for RawMarkRead {
    fn check(self, id: &Option<String>, _local: &NodeName) -> Result<Command, DecodeError> {
        let raw = self;
        Ok(Command::MarkRead {
            chat_id: chat_id(&raw.chat_id, id)?,
            seq: raw.seq,
        })
    }
}

impl Checked for RawRename {
    fn check(self, id: &Option<String>, _local: &NodeName) -> Result<Command, DecodeError> {
        let raw = self;
        if let Some(name) = &raw.name {
            check_chat_name(name, id)?;
        }
        Ok(Command::RenameChat {
            chat_id: chat_id(&raw.chat_id, id)?,
            name: raw.name,
        })
    }
}

/// Decodes one client text frame. This is the one place command names are matched.
pub fn decode_client_frame(text: &str, local: &NodeName) -> Result<ClientFrame, DecodeError> {
    let none = None;
    let value: Value = serde_json::from_str(text)
        .map_err(|e| DecodeError::new(&none, ErrorCode::BadRequest, format!("not JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(DecodeError::new(
            &none,
            ErrorCode::BadRequest,
            "a frame must be a JSON object",
        ));
    };
    decode_frame_object(map, local)
}

/// Puts a command that arrived from another process (a gateway, over NATS)
/// through the same decoder and limits as a client frame, so speaking to the
/// core directly cannot get past a limit the WebSocket enforces.
///
/// The command's serialized form differs from its frame in two fields only:
/// `modifyChatParticipants` names the user `user` (frame: `userId`), and `ack`
/// carries delivery ids as numbers (frame: strings).
pub fn recheck_command(command: &Command, local: &NodeName) -> Result<Command, DecodeError> {
    let none = None;
    let unreadable = |what: &str| DecodeError::new(&none, ErrorCode::BadRequest, what.to_owned());
    let Ok(Value::Object(mut map)) = serde_json::to_value(command) else {
        return Err(unreadable("a command must be a JSON object"));
    };
    if let Some(user) = map.remove("user") {
        map.insert("userId".to_owned(), user);
    }
    if let Some(Value::Array(ids)) = map.get_mut("deliveryIds") {
        for id in ids.iter_mut() {
            if let Value::Number(n) = id {
                *id = Value::String(n.to_string());
            }
        }
    }
    // The gateway keeps the client's request id; any will do for the check.
    map.insert("id".to_owned(), Value::String("rpc".to_owned()));
    match decode_frame_object(map, local)? {
        ClientFrame::Command { command, .. } => Ok(command),
        ClientFrame::Auth { .. } => Err(unreadable("auth is not a command")),
    }
}

/// [`decode_client_frame`] after the JSON: the frame's fields.
fn decode_frame_object(
    mut map: Map<String, Value>,
    local: &NodeName,
) -> Result<ClientFrame, DecodeError> {
    let none = None;
    let id = match map.remove("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.chars().count() <= MAX_REQUEST_ID_CHARS => Some(s),
        Some(Value::String(_)) => {
            return Err(DecodeError::new(
                &none,
                ErrorCode::BadRequest,
                format!("id longer than {MAX_REQUEST_ID_CHARS} characters"),
            ));
        }
        Some(_) => {
            return Err(DecodeError::new(
                &none,
                ErrorCode::BadRequest,
                "id must be a string",
            ));
        }
    };
    let kind = match map.remove("type") {
        Some(Value::String(s)) => s,
        Some(_) => {
            return Err(DecodeError::new(
                &id,
                ErrorCode::BadRequest,
                "type must be a string",
            ));
        }
        None => return Err(DecodeError::new(&id, ErrorCode::BadRequest, "missing type")),
    };
    // `auth` is a frame of its own, not a command.
    if kind == "auth" {
        let raw: RawAuth = fields(map, &id)?;
        return Ok(ClientFrame::Auth { token: raw.token });
    }
    let Ok(kind) = kind.parse::<CommandKind>() else {
        return Err(DecodeError::new(
            &id,
            ErrorCode::UnknownType,
            format!("unknown type {kind:?}"),
        ));
    };
    // Every command but `ack` needs an id (docs/protocol.md).
    if id.is_none() && kind != CommandKind::Ack {
        return Err(DecodeError::new(
            &none,
            ErrorCode::BadRequest,
            "commands need an id",
        ));
    }
    let command = match kind {
        CommandKind::Ack => checked::<RawAck>(map, &id, local)?,
        CommandKind::CreateChat => checked::<RawCreateChat>(map, &id, local)?,
        CommandKind::SendMessage => checked::<RawSendMessage>(map, &id, local)?,
        CommandKind::ModifyChatParticipants => checked::<RawModify>(map, &id, local)?,
        CommandKind::GetAttachmentTarget => checked::<RawAttachmentTarget>(map, &id, local)?,
        CommandKind::GetAttachmentUrl => checked::<RawAttachmentUrl>(map, &id, local)?,
        CommandKind::ListChats => checked::<RawListChats>(map, &id, local)?,
        CommandKind::Sync => Command::Sync,
        CommandKind::GetHistory => checked::<RawHistory>(map, &id, local)?,
        CommandKind::MarkRead => checked::<RawMarkRead>(map, &id, local)?,
        CommandKind::RenameChat => checked::<RawRename>(map, &id, local)?,
    };
    Ok(ClientFrame::Command { id, command })
}

/// Standard base64 (with padding) of a 32-byte digest, as S3's
/// `x-amz-checksum-sha256` header wants it.
fn valid_sha256(s: &str) -> bool {
    use base64::Engine;
    s.len() == 44
        && base64::engine::general_purpose::STANDARD
            .decode(s)
            .is_ok_and(|d| d.len() == 32)
}

/// `type/subtype`, visible ASCII without separators that could smuggle headers.
/// Whether an attachment's content type and file name are what
/// `getAttachmentTarget` accepts (for attachments a peer declares).
pub fn valid_attachment_meta(content_type: &str, name: Option<&str>) -> bool {
    valid_content_type(content_type)
        && name.is_none_or(|name| {
            !name.is_empty()
                && name.chars().count() <= MAX_FILE_NAME_CHARS
                && displayable(name)
                && !name.contains(['/', '\\', '\0'])
        })
}

fn valid_content_type(ct: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "!#$&^_.+-".contains(c);
    match ct.split_once('/') {
        Some((t, sub)) => {
            ct.len() <= 255
                && !t.is_empty()
                && !sub.is_empty()
                && t.chars().all(ok_char)
                && sub.chars().all(ok_char)
        }
        None => false,
    }
}

fn check_chat_name(name: &str, id: &Option<String>) -> Result<(), DecodeError> {
    if name.chars().count() > MAX_CHAT_NAME_CHARS {
        return Err(DecodeError::new(
            id,
            ErrorCode::BadRequest,
            format!("name is over {MAX_CHAT_NAME_CHARS} characters"),
        ));
    }
    if !displayable(name) {
        return Err(DecodeError::new(
            id,
            ErrorCode::BadRequest,
            "name has control characters or bidirectional overrides",
        ));
    }
    Ok(())
}

/// A name shown to other people (chat, file, device): no control characters
/// (newlines, escapes) and no bidirectional overrides or isolates, which can make
/// `gpj.exe` display as `exe.jpg`.
pub fn displayable(name: &str) -> bool {
    !name.chars().any(|c| {
        c.is_control()
            || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
    })
}

// ------------------------------------------------------------ server frames

/// Metadata of an attachment, as it travels with a message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AttachmentView {
    pub attachment_id: String,
    pub content_type: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A message as `newMessage` and `getHistory` show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MessageView {
    pub chat_id: String,
    pub message_id: String,
    pub seq: u64,
    pub from: String,
    pub sent_at: String,
    pub message: String,
    pub attachments: Vec<AttachmentView>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum UpdateReason {
    Created,
    Added,
    Removed,
    Renamed,
    /// *Extension*: an admin deleted the chat; `participants` is empty.
    Deleted,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChatUpdateView {
    pub chat_id: String,
    pub name: Option<String>,
    pub participants: Vec<String>,
    pub reason: UpdateReason,
}

/// *Extension* `chatRead`: the user read `chatId` up to `seq` on another of
/// their devices (their unread count there is `lastSeq - seq`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChatReadView {
    pub chat_id: String,
    pub seq: u64,
}

/// Sent in place of events that retention removed before the device fetched them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExpiredView {
    /// How many events were dropped.
    pub count: u64,
    pub oldest_at: String,
    pub newest_at: String,
}

/// A server event, without its `deliveryId` (which differs per device).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Event {
    NewMessage(MessageView),
    ChatUpdate(ChatUpdateView),
    /// *Extension*.
    ChatRead(ChatReadView),
    Expired(ExpiredView),
}

impl Event {
    /// Serializes the event once; [`event_frame`] then stamps it per device.
    pub fn encode(&self) -> Arc<str> {
        // Serializing these plain structs cannot fail.
        Arc::from(serde_json::to_string(self).unwrap_or_default())
    }
}

/// Builds the frame for one device from an event serialized once by [`Event::encode`].
pub fn event_frame(delivery_id: DeliveryId, encoded: &str) -> String {
    // `encoded` is a JSON object with at least `type`, so it starts with `{"`.
    let rest = encoded.strip_prefix('{').unwrap_or(encoded);
    let mut out = String::with_capacity(encoded.len() + 32);
    out.push_str("{\"deliveryId\":\"");
    out.push_str(&delivery_id.to_string());
    out.push_str("\",");
    out.push_str(rest);
    out
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChatSummary {
    pub chat_id: String,
    pub name: Option<String>,
    pub participants: Vec<String>,
    pub last_seq: u64,
    pub last_message_at: Option<String>,
    pub unread: u64,
}

/// The fields of a `result`, per command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged, rename_all = "camelCase")]
pub enum CommandResult {
    #[serde(rename_all = "camelCase")]
    MessageSent {
        message_id: String,
        seq: u64,
        sent_at: String,
    },
    #[serde(rename_all = "camelCase")]
    AttachmentTarget {
        attachment_id: String,
        upload_url: String,
        method: String,
        headers: std::collections::BTreeMap<String, String>,
        expires_at: String,
    },
    #[serde(rename_all = "camelCase")]
    AttachmentUrl {
        url: String,
        expires_at: String,
    },
    #[serde(rename_all = "camelCase")]
    ChatCreated {
        chat_id: String,
    },
    /// `sync`: the highest delivery id pending when it was taken ("0": none).
    #[serde(rename_all = "camelCase")]
    Synced {
        up_to: String,
    },
    Participants {
        participants: Vec<String>,
    },
    #[serde(rename_all = "camelCase")]
    Chats {
        chats: Vec<ChatSummary>,
        /// *Extension*: present when more chats follow; pass it as `cursor`.
        #[serde(skip_serializing_if = "Option::is_none")]
        next_cursor: Option<String>,
    },
    History {
        messages: Vec<MessageView>,
    },
    Empty {},
}

/// Frames the server sends that answer or greet (events are [`Event`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Reply {
    #[serde(rename_all = "camelCase")]
    Ready {
        user_id: String,
        device_id: String,
        node: String,
        protocol: u32,
    },
    Result {
        id: String,
        #[serde(flatten)]
        result: CommandResult,
    },
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        code: ErrorCode,
        message: String,
        /// Extension: with `rate_limited`, when a retry may succeed.
        #[serde(
            rename = "retryAfterMs",
            default,
            skip_serializing_if = "Option::is_none"
        )]
        retry_after_ms: Option<u64>,
    },
}

impl Reply {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod decoder_props;

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> NodeName {
        NodeName::parse("localhost").unwrap()
    }

    fn code_of(text: &str) -> (Option<String>, ErrorCode) {
        let err = decode_client_frame(text, &local()).unwrap_err();
        (err.id, err.code)
    }

    #[test]
    fn names_shown_to_others_refuse_control_and_bidi_characters() {
        let local = local();
        for name in ["a\nb", "x\u{1b}[31m", "cod\u{202E}gpj.exe", "a\u{2066}b"] {
            let chat = serde_json::json!({"type":"createChat","id":"1","name": name}).to_string();
            assert_eq!(
                code_of_frame(&chat, &local),
                ErrorCode::BadRequest,
                "{name:?}"
            );
            let file = serde_json::json!({"type":"getAttachmentTarget","id":"1","size":1,"contentType":"image/png","name": name})
                .to_string();
            assert_eq!(
                code_of_frame(&file, &local),
                ErrorCode::BadRequest,
                "{name:?}"
            );
        }
        assert!(displayable("Study Group ✨ שלום"));
    }

    fn code_of_frame(text: &str, local: &NodeName) -> ErrorCode {
        decode_client_frame(text, local).expect_err("refused").code
    }

    #[test]
    fn refuses_malformed_frames_with_stable_codes() {
        let cases: &[(&str, Option<&str>, ErrorCode)] = &[
            ("nope", None, ErrorCode::BadRequest),
            ("[1,2]", None, ErrorCode::BadRequest),
            (r#"{"id":"a"}"#, Some("a"), ErrorCode::BadRequest),
            (r#"{"id":"a","type":7}"#, Some("a"), ErrorCode::BadRequest),
            (
                r#"{"id":"a","type":"fly"}"#,
                Some("a"),
                ErrorCode::UnknownType,
            ),
            (
                r#"{"id":5,"type":"listChats"}"#,
                None,
                ErrorCode::BadRequest,
            ),
            (r#"{"type":"listChats"}"#, None, ErrorCode::BadRequest),
            (
                r#"{"id":"a","type":"sendMessage","chatId":"x","message":"hi"}"#,
                Some("a"),
                ErrorCode::UnknownChat,
            ),
            (
                r#"{"id":"a","type":"sendMessage","chatId":"01J00000000000000000000000"}"#,
                Some("a"),
                ErrorCode::BadRequest,
            ),
            (
                r#"{"id":"a","type":"createChat","participants":["Bad Name"]}"#,
                Some("a"),
                ErrorCode::UnknownUser,
            ),
            (
                r#"{"id":"a","type":"getHistory","chatId":"01J00000000000000000000000","limit":201}"#,
                Some("a"),
                ErrorCode::BadRequest,
            ),
            (
                r#"{"id":"a","type":"ack","deliveryIds":["x"]}"#,
                Some("a"),
                ErrorCode::BadRequest,
            ),
            (
                r#"{"id":"a","type":"modifyChatParticipants","chatId":"01J00000000000000000000000","userId":"bob","operation":"KICK"}"#,
                Some("a"),
                ErrorCode::BadRequest,
            ),
        ];
        for (text, id, code) in cases {
            assert_eq!(code_of(text), (id.map(str::to_owned), *code), "{text}");
        }
        let long_id = format!(r#"{{"id":"{}","type":"listChats"}}"#, "x".repeat(65));
        assert_eq!(code_of(&long_id), (None, ErrorCode::BadRequest));
    }

    #[test]
    fn message_size_limit_is_in_bytes() {
        let chat = ChatId::generate();
        let ok = "é".repeat(MAX_MESSAGE_BYTES / 2);
        let frame = serde_json::json!({"id":"1","type":"sendMessage","chatId":chat.to_string(),"message":ok});
        assert!(decode_client_frame(&frame.to_string(), &local()).is_ok());
        let big = "é".repeat(MAX_MESSAGE_BYTES / 2 + 1);
        let frame = serde_json::json!({"id":"1","type":"sendMessage","chatId":chat.to_string(),"message":big});
        assert_eq!(code_of(&frame.to_string()).1, ErrorCode::MessageTooLarge);
    }

    #[test]
    fn decodes_commands() {
        let chat = ChatId::generate();
        let text = format!(
            r#"{{"id":"r1","type":"modifyChatParticipants","chatId":"{chat}","userId":"bob","operation":"ADD"}}"#
        );
        let frame = decode_client_frame(&text, &local()).unwrap();
        assert_eq!(
            frame,
            ClientFrame::Command {
                id: Some("r1".into()),
                command: Command::ModifyChatParticipants {
                    chat_id: chat,
                    user: UserRef::parse("bob", &local()).unwrap(),
                    operation: Operation::Add,
                },
            }
        );
        let ack =
            decode_client_frame(r#"{"type":"ack","deliveryIds":["1","2"]}"#, &local()).unwrap();
        assert_eq!(
            ack,
            ClientFrame::Command {
                id: None,
                command: Command::Ack {
                    delivery_ids: vec![DeliveryId(1), DeliveryId(2)]
                },
            }
        );
    }

    #[test]
    fn event_frames_carry_the_delivery_id() {
        let event = Event::ChatUpdate(ChatUpdateView {
            chat_id: "c".into(),
            name: None,
            participants: vec!["a@n".into()],
            reason: UpdateReason::Created,
        });
        let encoded = event.encode();
        let frame = event_frame(DeliveryId(42), &encoded);
        let value: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(value["deliveryId"], "42");
        assert_eq!(value["type"], "chatUpdate");
        assert_eq!(value["participants"][0], "a@n");
    }

    /// A command built by hand (as a gateway speaking to the core over NATS
    /// could) meets the decoder's limits all the same.
    #[test]
    fn commands_from_nats_meet_the_frame_limits() {
        let local = local();
        let chat_id = ChatId::generate();
        let user = UserRef::parse("bob", &local).unwrap();
        let refused = |command: Command| recheck_command(&command, &local).unwrap_err().code;
        let send = |message: String, attachments: usize, client_msg_id: Option<String>| {
            Command::SendMessage {
                chat_id,
                message,
                attachments: (0..attachments).map(|_| AttachmentId::generate()).collect(),
                client_msg_id,
            }
        };
        let cases = [
            (
                send("x".repeat(MAX_MESSAGE_BYTES + 1), 0, None),
                ErrorCode::MessageTooLarge,
            ),
            (send(String::new(), 0, None), ErrorCode::BadRequest),
            (
                send("hi".into(), MAX_ATTACHMENTS + 1, None),
                ErrorCode::BadRequest,
            ),
            (
                send("hi".into(), 0, Some("c".repeat(65))),
                ErrorCode::BadRequest,
            ),
            (
                Command::CreateChat {
                    participants: vec![user.clone(); 4 * MAX_PARTICIPANTS + 1],
                    name: None,
                },
                ErrorCode::TooManyParticipants,
            ),
            (
                Command::RenameChat {
                    chat_id,
                    name: Some("evil\u{202E}gpj.exe".into()),
                },
                ErrorCode::BadRequest,
            ),
            (
                Command::Ack {
                    delivery_ids: vec![DeliveryId(1); MAX_ACK_IDS + 1],
                },
                ErrorCode::BadRequest,
            ),
            (
                Command::GetHistory {
                    chat_id,
                    before_seq: None,
                    after_seq: None,
                    limit: HISTORY_MAX_LIMIT + 1,
                },
                ErrorCode::BadRequest,
            ),
            (
                Command::ListChats {
                    limit: 0,
                    cursor: None,
                },
                ErrorCode::BadRequest,
            ),
            (
                Command::GetAttachmentTarget {
                    size: 0,
                    content_type: "image/png".into(),
                    name: None,
                    sha256: None,
                },
                ErrorCode::BadRequest,
            ),
            (
                Command::GetAttachmentTarget {
                    size: 1,
                    content_type: "text/html\r\nX-Evil: 1".into(),
                    name: None,
                    sha256: None,
                },
                ErrorCode::BadRequest,
            ),
        ];
        for (command, code) in cases {
            let kind = command.kind();
            assert_eq!(refused(command), code, "{kind}");
        }
        // What passes comes back unchanged, the special fields included.
        for command in [
            Command::ModifyChatParticipants {
                chat_id,
                user,
                operation: Operation::Remove,
            },
            Command::Ack {
                delivery_ids: vec![DeliveryId(7), DeliveryId(u64::MAX)],
            },
            send("x".repeat(MAX_MESSAGE_BYTES), MAX_ATTACHMENTS, None),
        ] {
            assert_eq!(recheck_command(&command, &local), Ok(command));
        }
    }

    /// Every JSON example in docs/protocol.md, checked against these types: client
    /// frames must decode; server frames and HTTP bodies must round-trip unchanged
    /// (so a renamed or missing field in either the doc or the code fails here).
    #[test]
    fn protocol_doc_examples() {
        use std::collections::BTreeSet;
        let doc = include_str!("../../docs/protocol.md");
        let node = NodeName::parse("chat.example.org").unwrap();
        let mut client_types = BTreeSet::new();
        let mut server_types = BTreeSet::new();
        let mut tags = BTreeSet::new();
        let mut lines = doc.lines();
        while let Some(line) = lines.next() {
            let Some(tag) = line.strip_prefix("```json") else {
                continue;
            };
            let tag = tag.trim();
            let mut body = String::new();
            for l in lines.by_ref() {
                if l.starts_with("```") {
                    break;
                }
                body.push_str(l);
                body.push('\n');
            }
            let value: Value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("example is not JSON ({e}):\n{body}"));
            let kind = value["type"].as_str().unwrap_or_default().to_owned();
            match tag {
                "client" => {
                    let frame = decode_client_frame(&body, &node)
                        .unwrap_or_else(|e| panic!("client example refused: {e:?}\n{body}"));
                    // The core's re-check of a command from NATS lets it through unchanged.
                    if let ClientFrame::Command { command, .. } = frame {
                        assert_eq!(recheck_command(&command, &node), Ok(command), "{body}");
                    }
                    client_types.insert(kind);
                }
                "server" if value.get("deliveryId").is_some() => {
                    let mut event = value.clone();
                    let id = event.as_object_mut().unwrap().remove("deliveryId").unwrap();
                    round_trip::<Event>(&event);
                    let encoded = serde_json::from_value::<Event>(event).unwrap().encode();
                    let framed: Value = serde_json::from_str(&event_frame(
                        DeliveryId::parse(id.as_str().unwrap()).unwrap(),
                        &encoded,
                    ))
                    .unwrap();
                    assert_eq!(framed, value, "event frame differs from the example");
                    server_types.insert(kind);
                }
                "server" => {
                    round_trip::<Reply>(&value);
                    server_types.insert(kind);
                }
                "http-register-request" => round_trip::<RegisterRequest>(&value),
                "http-register-response" => round_trip::<RegisterResponse>(&value),
                "http-login-request" => round_trip::<LoginRequest>(&value),
                "http-login-response" => round_trip::<LoginResponse>(&value),
                "http-error" => round_trip::<ErrorBody>(&value),
                "http-info" => round_trip::<crate::gateway::web::Info>(&value),
                other => panic!("unknown example tag {other:?}"),
            }
            tags.insert(tag.to_owned());
        }
        let want_client = [
            "ack",
            "auth",
            "createChat",
            "getAttachmentTarget",
            "getAttachmentUrl",
            "getHistory",
            "listChats",
            "markRead",
            "modifyChatParticipants",
            "renameChat",
            "sendMessage",
            "sync",
        ];
        assert_eq!(
            client_types,
            want_client.iter().map(|s| s.to_string()).collect(),
            "every client frame needs an example"
        );
        for kind in [
            "ready",
            "result",
            "error",
            "newMessage",
            "chatUpdate",
            "chatRead",
            "expired",
        ] {
            assert!(server_types.contains(kind), "no example of {kind}");
        }
        assert_eq!(tags.len(), 8, "{tags:?}");
    }

    fn round_trip<T: serde::de::DeserializeOwned + Serialize>(value: &Value) {
        let typed: T = serde_json::from_value(value.clone())
            .unwrap_or_else(|e| panic!("example does not parse ({e}): {value}"));
        assert_eq!(
            &serde_json::to_value(typed).unwrap(),
            value,
            "example changed in a round trip"
        );
    }

    /// serde spells the wire names; strum spells them for `as_str` and the
    /// decoder. Both must agree for every error code and every command.
    #[test]
    fn strum_names_match_serde_names() {
        use strum::VariantArray;
        for code in ErrorCode::VARIANTS {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
        let chat = ChatId::generate();
        for kind in CommandKind::VARIANTS {
            let command = match kind {
                CommandKind::CreateChat => Command::CreateChat {
                    participants: vec![],
                    name: None,
                },
                CommandKind::SendMessage => Command::SendMessage {
                    chat_id: chat,
                    message: "hi".into(),
                    attachments: vec![],
                    client_msg_id: None,
                },
                CommandKind::ModifyChatParticipants => Command::ModifyChatParticipants {
                    chat_id: chat,
                    user: UserRef::parse("bob", &local()).unwrap(),
                    operation: Operation::Add,
                },
                CommandKind::GetAttachmentTarget => Command::GetAttachmentTarget {
                    size: 1,
                    content_type: "image/png".into(),
                    name: None,
                    sha256: None,
                },
                CommandKind::GetAttachmentUrl => Command::GetAttachmentUrl {
                    attachment_id: AttachmentId::generate(),
                },
                CommandKind::ListChats => Command::ListChats {
                    limit: 1,
                    cursor: None,
                },
                CommandKind::GetHistory => Command::GetHistory {
                    chat_id: chat,
                    before_seq: None,
                    after_seq: None,
                    limit: 1,
                },
                CommandKind::MarkRead => Command::MarkRead {
                    chat_id: chat,
                    seq: 1,
                },
                CommandKind::Ack => Command::Ack {
                    delivery_ids: vec![],
                },
                CommandKind::Sync => Command::Sync,
                CommandKind::RenameChat => Command::RenameChat {
                    chat_id: chat,
                    name: None,
                },
            };
            assert_eq!(CommandKind::from(&command), *kind);
            assert_eq!(command.kind(), kind.as_str());
            assert_eq!(
                serde_json::to_value(&command).unwrap()["type"],
                kind.as_str()
            );
            assert_eq!(kind.as_str().parse::<CommandKind>(), Ok(*kind));
        }
    }

    #[test]
    fn result_frames_flatten_their_fields() {
        let reply = Reply::Result {
            id: "r1".into(),
            result: CommandResult::ChatCreated {
                chat_id: "c1".into(),
            },
        };
        let value: Value = serde_json::from_str(&reply.encode()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"type":"result","id":"r1","chatId":"c1"})
        );
        let empty = Reply::Result {
            id: "r2".into(),
            result: CommandResult::Empty {},
        };
        assert_eq!(empty.encode(), r#"{"type":"result","id":"r2"}"#);
    }
}
