//! What the writer is asked to do ([`Op`]) and what it answers ([`Outcome`]).
//!
//! Client commands reach the writer as [`WriteCommand`], a type that only the
//! commands which write can be turned into: reads (`listChats`, `getHistory`,
//! attachment URLs) are answered by the core off the writer thread and cannot be
//! queued here by mistake.

use tokio::sync::oneshot;

use super::{SweepCursor, SweepReport};
use crate::core::{CoreError, DeviceCtx, Invite};
use crate::federation::events::Numbered;
use crate::ids::{AttachmentId, ChatId, DeliveryId, DeviceId, NodeName, UserRef, Username};
use crate::protocol::{CommandResult, Operation};
use crate::store::{AttachmentRecord, AttachmentRef, OutboxEntry, PeerRecord};

/// Who a command is applied for.
#[derive(Debug)]
pub(crate) enum Actor {
    /// A device of a local user.
    Device(DeviceCtx),
    /// A user of a peer node, acting in a chat whose home is this node; `device`
    /// is its node's opaque name for the sending device.
    Remote {
        user: UserRef,
        device: Option<String>,
    },
}

impl Actor {
    /// `name@node`.
    pub(crate) fn user_id(&self) -> String {
        match self {
            Self::Device(ctx) => ctx.user_id.clone(),
            Self::Remote { user, .. } => user.to_string(),
        }
    }

    pub(crate) fn device(&self) -> Option<&DeviceCtx> {
        match self {
            Self::Device(ctx) => Some(ctx),
            Self::Remote { .. } => None,
        }
    }
}

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
    DeleteInvite {
        code: String,
    },
    ResetPassword {
        name: Username,
        password_hash: String,
    },
    /// Answers [`Outcome::Devices`]: the devices removed.
    DeleteUser {
        name: Username,
    },
    /// A chat whose home is this node.
    DeleteChat {
        chat: ChatId,
    },
    /// Up to `limit` messages of a deleted chat; answers [`Outcome::Count`].
    PurgeChat {
        chat: ChatId,
        limit: usize,
    },
    Touch {
        device: DeviceId,
    },
    Command {
        actor: Actor,
        command: WriteCommand,
    },
    /// Adds a peer or replaces its record.
    PutPeer {
        node: NodeName,
        record: PeerRecord,
    },
    RemovePeer {
        node: NodeName,
    },
    /// Events from a chat's home (a peer), applied in order, each once.
    ApplyEvents {
        origin: NodeName,
        events: Vec<Numbered>,
        /// Applied only if the events up to this seq are (`EventBatch::after`).
        after: Option<u64>,
    },
    /// A peer confirmed every outbox entry up to `delivered`; `dead`, if any,
    /// becomes a dead letter (the peer refused it, or it is too old).
    OutboxDone {
        node: NodeName,
        /// The oldest entry that may still be there (the batch's first).
        from: u64,
        delivered: u64,
        dead: Option<u64>,
    },
    /// An event read from the JetStream outbox becomes a dead letter (the
    /// peer refused it, or it is too old); dead letters stay on fjall.
    DeadLetter {
        node: NodeName,
        seq: u64,
        entry: OutboxEntry,
    },
    /// A peer's dead letters go back to its outbox, in their order.
    ReplayDead {
        node: NodeName,
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
    /// The send check sealed `uploader`'s upload `id` (`Media::seal`): from
    /// now on it is served from its sealed copy. Idempotent.
    SealAttachment {
        id: AttachmentId,
        uploader: String,
    },
    /// Uploads of `from` (a user of this node) in a send forwarded to the
    /// home of `chat`: offered to that home, or (`sent`) accepted by it, hence
    /// sent in that chat. Idempotent.
    HeldAttachments {
        from: String,
        chat: ChatId,
        ids: Vec<AttachmentId>,
        sent: bool,
    },
    Sweep {
        at: SweepCursor,
    },
    Stop,
}

#[derive(Debug)]
pub(crate) enum Outcome {
    UserId(String),
    /// A new device, and the devices removed to make room for it (the
    /// devices quota), whose sessions must be closed.
    Device(DeviceCtx, Vec<DeviceId>),
    Invite(Invite),
    /// Devices an operation removed, whose sessions must be closed.
    Devices(Vec<DeviceId>),
    Command(CommandResult),
    Swept {
        report: SweepReport,
        next: Option<SweepCursor>,
    },
    /// Whether a `DropAttachment` removed the record.
    Dropped(bool),
    /// Whether a `SealAttachment` found the record (and marked it sealed).
    Sealed(bool),
    /// Events applied up to this seq; the next one was refused when `refused`.
    Applied {
        applied: u64,
        refused: Option<CoreError>,
    },
    /// Nothing applied: the batch before it is not (events up to `applied`
    /// are).
    OutOfOrder {
        applied: u64,
    },
    /// How many entries an operation moved.
    Count(u64),
    Done,
}
