//! What nodes say to each other about chats: the events a chat's home sends to
//! every participating node ([`Event`], in batches), and the actions a
//! participating node forwards to the home for its users ([`Action`]).
//!
//! **Boundary**: these are the federation wire format (docs/federation.md),
//! spoken by nodes of other builds and, one day, other implementations. Their
//! own types, not the client protocol's nor the store's: add variants and
//! optional fields, never change existing ones.

use serde::{Deserialize, Serialize};

use crate::ids::{ChatId, MessageId, NodeName, UserRef};
use crate::protocol::Operation;

/// Why a chat's state changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Reason {
    Created,
    Added,
    Removed,
    Renamed,
    /// The home deleted the chat (an admin did): the receiver deletes its
    /// mirror. `participants` is empty. Nodes of builds before it refuse the
    /// event (it becomes a dead letter at the home).
    Deleted,
}

/// An attachment as a message carries it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    pub attachment_id: String,
    pub content_type: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The node that holds the bytes, when it is not the chat's home: a
    /// participating node whose user sent it (in an event), or the sending node
    /// (in an action, where it must be the requesting node). Omitted: the home.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<NodeName>,
}

/// One event of a chat, from its home.
/// `POST /federation/v1/actions` with several actions (a node sends this form
/// only when it has more than one to send): the home applies them in this
/// order, so a sender's actions get their seqs in the order it sent them, and
/// answers [`ActionResults`], one outcome per action, in the same order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ActionBatch {
    pub actions: Vec<ActionRequest>,
}

/// The answer to an [`ActionBatch`] (200): one outcome per action, in order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ActionResults {
    pub results: Vec<ActionOutcome>,
}

/// One action's outcome: `{"result": {...}}`, the `result` fields a client
/// would get (as the single form's 200 answer), or `{"error": {"code",
/// "message"}}`, what the single form answers with a 4xx/5xx.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ActionOutcome {
    Result(crate::protocol::CommandResult),
    Error(ActionError),
}

/// Why the home did not apply an action: a client protocol error code (kept as
/// text, so codes of newer nodes still read) and its message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActionError {
    pub code: String,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Event {
    /// The chat as it is now, and why it changed. Sent to the nodes of the
    /// participants after the change, and to the node of one just removed.
    Chat {
        chat_id: ChatId,
        name: Option<String>,
        /// `name@node` of the creator.
        creator: String,
        created_at: i64,
        /// Every participant, `name@node`, sorted.
        participants: Vec<String>,
        reason: Reason,
        at: i64,
        /// The chat's last message seq at the home when this was sent, so a
        /// node joining a chat late starts its read positions there.
        #[serde(default)]
        last_seq: u64,
    },
    /// A message, as the home sequenced it.
    Message {
        chat_id: ChatId,
        seq: u64,
        message_id: MessageId,
        /// `name@node` of the sender.
        from: String,
        sent_at: i64,
        text: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attachments: Vec<Attachment>,
        /// The sender's device, as its node named it in the action: that node
        /// does not echo the message to the device that sent it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sender_device: Option<String>,
    },
}

impl Event {
    pub fn chat_id(&self) -> ChatId {
        match self {
            Self::Chat { chat_id, .. } | Self::Message { chat_id, .. } => *chat_id,
        }
    }
}

/// `POST /federation/v1/events`: events for the receiver, numbered per
/// (sender, receiver) from 1, growing, oldest first.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventBatch {
    pub events: Vec<Numbered>,
    /// The last seq of the batch the sender sent just before this one, when
    /// that one may still be on its way: the receiver applies this batch only
    /// once that seq is applied (it waits a little for it, then refuses with
    /// `out_of_order`), so several batches can be in flight and still be
    /// applied in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Numbered {
    pub seq: u64,
    pub event: Event,
}

/// The answer to an [`EventBatch`]: every event up to `applied` is applied
/// (now or before). A refused event is answered 403 with the same field.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Applied {
    pub applied: u64,
    /// The receiver honours [`EventBatch::after`]: the sender may keep
    /// several batches in flight. Absent from a node of an earlier version,
    /// which is then sent one batch at a time.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ordered: bool,
}

/// `POST /federation/v1/actions`: a participating node asks a chat's home to do
/// something for one of its users.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionRequest {
    /// `name@node` of the user; its node must be the sender.
    pub actor: UserRef,
    pub action: Action,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Action {
    SendMessage {
        chat_id: ChatId,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<String>,
        /// The sending device (opaque to the home; echoed in the event).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        /// Attachments the sending node holds (its user uploaded them there and
        /// it checked them), each with `holder` = the sending node.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attachments: Vec<Attachment>,
    },
    ModifyChatParticipants {
        chat_id: ChatId,
        user_id: UserRef,
        operation: Operation,
    },
    RenameChat {
        chat_id: ChatId,
        name: Option<String>,
    },
}

impl Action {
    pub fn chat_id(&self) -> ChatId {
        match self {
            Self::SendMessage { chat_id, .. }
            | Self::ModifyChatParticipants { chat_id, .. }
            | Self::RenameChat { chat_id, .. } => *chat_id,
        }
    }
}

/// `POST /federation/v1/attachment-url`: a participating node asks a chat's
/// home for a download URL of an attachment, for one of its users. The home
/// answers `{"url", "expiresAt"}` if the user is a participant of a chat the
/// attachment was sent in.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentUrlRequest {
    /// `name@node`; its node must be the sender.
    pub user: UserRef,
    pub attachment_id: crate::ids::AttachmentId,
}

/// `POST /federation/v1/keys`: a node tells a peer its new key, signed with
/// the key it retires (the one the peer still trusts).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyAnnouncement {
    /// The announcing node: the request's origin, and no other.
    pub node: String,
    pub new_key: NewKey,
    pub old_key: OldKey,
}

/// The key a node signs with from now on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewKey {
    /// `ed25519-` and 16 hex digits of its SHA-256 (checked by the receiver).
    pub key_id: String,
    /// base64 of the 32-byte ed25519 public key.
    pub public_key: String,
}

/// The key the announcement is signed with, and when it stops verifying.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OldKey {
    pub key_id: String,
    /// Unix ms.
    pub not_after: i64,
}

/// The answer to a [`KeyAnnouncement`]: the key now trusted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyAccepted {
    pub key_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/federation.md's send with an attachment its node holds.
    #[test]
    fn a_send_carries_attachments_with_their_holder() {
        let text = r#"{"actor": "bob@beta.example",
         "action": {"type": "sendMessage", "chatId": "01JGXQ4V7Z8M3N5P6R7S8T9V0W",
           "message": "", "device": "01JGXPZ0M1N2P3Q4R5S6T7V8W9",
           "attachments": [{"attachmentId": "01JGXQ7C4D5E6F7G8H9J0K1M2N",
             "contentType": "image/png", "size": 48213, "name": "cat.png",
             "holder": "beta.example"}]}}"#;
        let request: ActionRequest = serde_json::from_str(text).unwrap();
        let Action::SendMessage { attachments, .. } = &request.action else {
            panic!("a send: {request:?}");
        };
        assert_eq!(attachments.len(), 1);
        assert_eq!(
            attachments[0].holder.as_ref().map(NodeName::as_str),
            Some("beta.example")
        );
        // Without attachments (an older node's send) the field is absent, and
        // an attachment the home holds has no `holder`.
        let old =
            r#"{"type": "sendMessage", "chatId": "01JGXQ4V7Z8M3N5P6R7S8T9V0W", "message": "hi"}"#;
        let action: Action = serde_json::from_str(old).unwrap();
        assert_eq!(
            serde_json::to_value(&action).unwrap()["attachments"],
            serde_json::Value::Null
        );
        let mut home_held = attachments[0].clone();
        home_held.holder = None;
        assert!(
            serde_json::to_value(&home_held)
                .unwrap()
                .get("holder")
                .is_none()
        );
    }
}
