//! What the writer is asked to do ([`Op`]) and what it answers ([`Outcome`]).
//!
//! Client commands reach the writer as [`WriteCommand`], a type that only the
//! commands which write can be turned into: reads (`listChats`, `getHistory`,
//! attachment URLs) are answered by the core off the writer thread and cannot be
//! queued here by mistake.

use tokio::sync::oneshot;

use super::SweepReport;
use crate::core::{CoreError, DeviceCtx, Invite};
use crate::ids::{AttachmentId, ChatId, DeliveryId, DeviceId, UserRef, Username};
use crate::protocol::{CommandResult, Operation};
use crate::store::{AttachmentRecord, AttachmentRef};

pub(crate) struct WriteRequest {
    pub op: Op,
    pub reply: oneshot::Sender<Result<Outcome, CoreError>>,
}

/// A client command that writes, validated by the protocol decoder and, for
/// sends with attachments, checked against the media store.
#[derive(Debug)]
pub(crate) enum WriteCommand {
    CreateChat {
        participants: Vec<UserRef>,
        name: Option<String>,
    },
    SendMessage {
        chat_id: ChatId,
        message: String,
        /// One per attachment of the command, in its order, already checked.
        attachments: Vec<AttachmentRef>,
        client_msg_id: Option<String>,
    },
    ModifyChatParticipants {
        chat_id: ChatId,
        user: UserRef,
        operation: Operation,
    },
    RenameChat {
        chat_id: ChatId,
        name: Option<String>,
    },
    MarkRead {
        chat_id: ChatId,
        seq: u64,
    },
    Ack {
        delivery_ids: Vec<DeliveryId>,
    },
    /// Through the writer so that everything queued before it is committed.
    Sync,
}

#[derive(Debug)]
pub(crate) enum Op {
    CreateUser {
        name: Username,
        password_hash: String,
        invite: Option<String>,
    },
    SetUserDisabled {
        name: Username,
        disabled: bool,
    },
    CreateDevice {
        user: Username,
        name: Option<String>,
        token_hash: [u8; 32],
    },
    DeleteDevice {
        device: DeviceId,
    },
    CreateInvite {
        uses: u32,
        ttl_ms: i64,
    },
    Touch {
        device: DeviceId,
    },
    Command {
        ctx: DeviceCtx,
        command: WriteCommand,
    },
    CreateAttachment {
        id: AttachmentId,
        record: AttachmentRecord,
    },
    /// Removes an attachment record if it is unsent and created before
    /// `unsent_before`, or created before `any_before`.
    DropAttachment {
        id: AttachmentId,
        unsent_before: i64,
        any_before: i64,
    },
    Sweep {
        after: Option<DeviceId>,
    },
    Stop,
}

#[derive(Debug)]
pub(crate) enum Outcome {
    UserId(String),
    Device(DeviceCtx),
    Invite(Invite),
    Command(CommandResult),
    Swept {
        report: SweepReport,
        next: Option<DeviceId>,
    },
    /// Whether a `DropAttachment` removed the record.
    Dropped(bool),
    Done,
}
