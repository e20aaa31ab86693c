//! The core: the rules of the chat, the write path and the read path.
//!
//! Owns: validating commands against the store, the single writer thread
//! ([`writer`]) that applies every write in group-committed batches, and the reads
//! that sessions and HTTP handlers need (backlog, history, chat lists).
//! Accounts (registration, logins, users, invites) are in [`accounts`];
//! attachments (upload targets, download URLs, upload checks, their sweep) in
//! [`attachments`].
//! Does not own: sockets (the gateway), or how a delivery reaches a connection (the
//! [`Hub`](crate::delivery::Hub)).
//!
//! Boundary: [`Core`] is what a gateway talks to. Its inputs and outputs are
//! serializable protocol types and ids, so that a gateway in another process can
//! talk to it over NATS request/reply.

mod accounts;
mod admin;
mod attachments;
pub mod client;
pub mod federation;
pub mod inbox_reads;
pub mod limits;
pub mod login_limits;
mod render;
pub mod rpc;
pub mod rpc_lanes;
mod writer;

pub use accounts::{Invite, UserInfo};
pub use admin::{
    AdminLimits, ChatDetail, ChatInfo, DeletedChat, DeletedUser, DeviceInfo, InboxDepth,
    InviteInfo, NodeStats, UserDetail,
};
use login_limits::LoginLimits;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::clock::{Clock, rfc3339};
use crate::delivery::rpc::CallError;
use crate::delivery::{Presence, Publisher};
use crate::federation::Wakers;
use crate::ids::{ChatId, DeliveryId, DeviceId, GatewayId, NodeName, Username};
use crate::media::{Media, MediaError};
use crate::protocol::{self, ChatSummary, Command, CommandResult, ErrorCode};
use crate::store::{Store, StoreError};
use rpc::{Answer, answered};

pub use writer::SweepReport;
use writer::{Actor, Op, Outcome, SweepCursor, WriteCommand, WriteRequest, Writer};

/// Who is acting: one authenticated device of a local user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCtx {
    pub user: Username,
    /// `name@node`.
    pub user_id: String,
    pub device: DeviceId,
}

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The request was refused; the code goes to the client as is.
    #[error("{message}")]
    Rejected { code: ErrorCode, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A broken invariant inside the node (logged, shown to clients as
    /// `internal`); the message says which.
    #[error("{0}")]
    Internal(String),
    #[error("a blocking task failed")]
    Join(#[from] tokio::task::JoinError),
    #[error("media store")]
    Media(#[from] MediaError),
    #[error("password hashing")]
    Password(#[source] crate::auth::PasswordError),
    #[error("encoding a request")]
    Encode(#[source] serde_json::Error),
    #[error("decoding the core's reply")]
    Decode(#[source] serde_json::Error),
    /// The node key files (a rotation could not write them).
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    #[error("the writer thread could not start")]
    WriterThread(#[source] std::io::Error),
    /// The commit group this operation was in failed because of another
    /// operation's fault: nothing of the group was stored.
    #[error("the commit group failed")]
    GroupFailed(#[source] std::sync::Arc<CoreError>),
    /// A part of the node this needs is unreachable (the core, in another
    /// process); retry.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The same, as answered by a core in another process.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The writer has stopped (the node is shutting down).
    #[error("the node is shutting down")]
    Stopped,
    /// Over a per-user rate limit (`rate_limited`); a retry after
    /// `retry_after_ms` may succeed.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after_ms: u64,
    },
}

impl CoreError {
    pub fn reject(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Rejected {
            code,
            message: message.into(),
        }
    }

    /// The stable code a client sees. Internal causes are never shown; the caller
    /// logs them.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Rejected { code, .. } => *code,
            Self::RateLimited { .. } => ErrorCode::RateLimited,
            Self::Unavailable(_) | Self::Call(_) | Self::Stopped => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        }
    }

    /// The message a client sees.
    pub fn public_message(&self) -> String {
        match self {
            Self::Rejected { message, .. } | Self::RateLimited { message, .. } => message.clone(),
            Self::Unavailable(message) => message.clone(),
            Self::Call(e) => e.to_string(),
            Self::Stopped => "the node is shutting down".into(),
            _ => "internal error".into(),
        }
    }

    /// For `rate_limited`: in how many milliseconds a retry may succeed.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after_ms, .. } => Some(*retry_after_ms),
            _ => None,
        }
    }

    /// Whether this is a refusal the client caused (not logged as a fault).
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Rejected { .. } | Self::RateLimited { .. })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    Open,
    Invite,
    Closed,
}

impl std::str::FromStr for Registration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "open" => Ok(Self::Open),
            "invite" => Ok(Self::Invite),
            "closed" => Ok(Self::Closed),
            other => Err(format!(
                "registration must be open, invite or closed, not {other:?}"
            )),
        }
    }
}

#[derive(Clone, Debug)]
pub struct CoreConfig {
    pub node: NodeName,
    pub registration: Registration,
    /// Undelivered inbox entries older than this are dropped (and the device told).
    pub retention_ms: i64,
    /// Devices not seen for this long are deactivated.
    pub device_ttl_ms: i64,
    /// Inbox entries, chat updates or idempotency keys one sweep step (one
    /// commit) handles.
    pub sweep_step_rows: usize,
    /// How long an invite is valid unless the admin says otherwise.
    pub invite_ttl_ms: i64,
    /// Most commands applied in one commit.
    pub max_group: usize,
    pub federation: federation::FederationConfig,
    /// The node's base URL, as its clients and peers reach it.
    pub public_url: String,
    /// Per-user rates of state-changing commands.
    pub rates: limits::UserRateConfig,
    pub quotas: limits::Quotas,
    /// Limits on logins and registrations (`[logins]`).
    pub logins: login_limits::LoginLimitsConfig,
    /// Bounds on admin reads (`[admin]`).
    pub admin: AdminLimits,
    /// Inbox reads that may run at once (`limits.inbox_reads_in_flight`).
    pub inbox_reads_in_flight: usize,
    /// Lets the admin API hold inbox reads (tests: `testing.inbox_read_gate`).
    pub inbox_read_gate: bool,
    /// Devices whose commands over NATS may wait in a lane at once
    /// (`limits.rpc_lanes`), and commands one lane holds
    /// (`limits.rpc_lane_commands`).
    pub rpc_lanes: usize,
    pub rpc_lane_commands: usize,
}

/// Handle to the core. Cheap to clone.
#[derive(Clone)]
pub struct Core {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    presence: Presence,
    /// Rings each peer's outbox sender.
    wakers: Wakers,
    federation: federation::Federation,
    writer: mpsc::Sender<WriteRequest>,
    clock: Clock,
    config: CoreConfig,
    media: Media,
    /// Per-user token buckets, checked before a command is queued.
    rates: limits::UserRates,
    /// Per-address attempt rates and failed-login throttling.
    login_limits: LoginLimits,
    /// Messages stored per second over the last minute (`stats`).
    message_rate: Arc<admin::MessageRate>,
    /// Slots for inbox reads (backlogs, resends).
    inbox_reads: inbox_reads::InboxReads,
}

/// Joins the writer thread.
pub struct WriterThread(std::thread::JoinHandle<()>);

impl WriterThread {
    /// Waits (on the blocking pool) until the writer has drained and persisted.
    pub async fn join(self) {
        let _ = tokio::task::spawn_blocking(move || self.0.join()).await;
    }
}

impl Core {
    /// Starts the writer thread. The writer stops after [`Core::stop`], once every
    /// command queued before it is committed.
    pub fn start(
        store: Store,
        publisher: Publisher,
        presence: Presence,
        media: Media,
        clock: Clock,
        config: CoreConfig,
        keys: crate::identity::NodeKeys,
    ) -> Result<(Self, WriterThread), CoreError> {
        let federation = federation::Federation::new(
            config.node.clone(),
            keys,
            config.public_url.clone(),
            config.federation.clone(),
        );
        let (tx, rx) = mpsc::channel(4096);
        let wakers = Wakers::default();
        let message_rate = Arc::new(admin::MessageRate::default());
        let writer = Writer::new(
            store.clone(),
            publisher,
            presence.clone(),
            clock.clone(),
            config.clone(),
            wakers.clone(),
            message_rate.clone(),
        )?;
        let handle = std::thread::Builder::new()
            .name("natter-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(CoreError::WriterThread)?;
        let core = Self {
            inner: Arc::new(Inner {
                store,
                presence,
                wakers,
                federation,
                writer: tx,
                clock,
                media,
                rates: limits::UserRates::new(config.rates.clone()),
                login_limits: LoginLimits::new(config.logins.clone()),
                message_rate,
                inbox_reads: inbox_reads::InboxReads::new(
                    config.inbox_reads_in_flight,
                    config.inbox_read_gate,
                ),
                config,
            }),
        };
        Ok((core, WriterThread(handle)))
    }

    pub fn node(&self) -> &NodeName {
        &self.inner.config.node
    }

    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    pub fn config(&self) -> &CoreConfig {
        &self.inner.config
    }

    pub fn media(&self) -> &Media {
        &self.inner.media
    }

    /// Commands waiting for the writer.
    pub fn queue_depth(&self) -> usize {
        let writer = &self.inner.writer;
        writer.max_capacity() - writer.capacity()
    }

    /// A consistent view of what is committed now (backups).
    pub(crate) fn snapshot(&self) -> crate::store::Snapshot {
        self.inner.store.snapshot()
    }

    pub fn store_stats(&self) -> crate::store::StoreStats {
        self.inner.store.stats()
    }

    /// False once the store has failed a commit (`/readyz` answers 503).
    pub fn store_healthy(&self) -> bool {
        self.inner.store.healthy()
    }

    /// Makes the store's next commit fail (tests: `testing.store_faults`).
    pub fn inject_store_fault(&self) -> bool {
        self.inner.store.fail_next_commit()
    }

    /// Queues a write; the returned receiver answers after the commit.
    async fn enqueue(
        &self,
        op: Op,
    ) -> Result<oneshot::Receiver<Result<Outcome, CoreError>>, CoreError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .writer
            .send(WriteRequest { op, reply })
            .await
            .map_err(|_| CoreError::Stopped)?;
        Ok(rx)
    }

    async fn write(&self, op: Op) -> Result<Outcome, CoreError> {
        self.enqueue(op)
            .await?
            .await
            .map_err(|_| CoreError::Stopped)?
    }

    /// Runs a read on the blocking pool against a fresh snapshot.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&crate::store::Snapshot) -> Result<T, CoreError> + Send + 'static,
    ) -> Result<T, CoreError> {
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || f(&store.snapshot())).await?
    }

    /// Like [`Self::read`], for a device's inbox: it first waits for one of the
    /// `limits.inbox_reads_in_flight` slots, so a reconnect storm cannot take
    /// every thread of the blocking pool.
    async fn inbox_read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&crate::store::Snapshot) -> Result<T, CoreError> + Send + 'static,
    ) -> Result<T, CoreError> {
        let slot = self.inner.inbox_reads.slot().await;
        let gate = self.inner.inbox_reads.gate();
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            if let Some(gate) = gate {
                gate.pass();
            }
            f(&store.snapshot())
        })
        .await?
    }

    /// Closes or opens the test gate on inbox reads (`testing.inbox_read_gate`);
    /// false when it is off.
    pub fn hold_inbox_reads(&self, hold: bool) -> bool {
        self.inner.inbox_reads.set_gate(hold)
    }

    /// Asks the writer to finish what is queued, persist, and stop.
    pub async fn stop(&self) {
        let _ = self.write(Op::Stop).await;
    }

    // ------------------------------------------------------------ retention

    /// Runs retention and device expiry over the whole store now, then removes
    /// orphaned and expired uploads.
    pub async fn sweep(&self) -> Result<SweepReport, CoreError> {
        self.inner.rates.prune(self.inner.clock.now_ms());
        let mut total = SweepReport::default();
        let mut at = SweepCursor::Start;
        loop {
            match self.write(Op::Sweep { at }).await? {
                Outcome::Swept { report, next } => {
                    total.add(&report);
                    match next {
                        Some(next) => at = next,
                        None => break,
                    }
                }
                other => return Err(unexpected(other)),
            }
        }
        self.sweep_media(&mut total).await?;
        total.deleted_chat_messages_removed += self.purge_deleted_chats().await?;
        Ok(total)
    }

    /// Starts a command. The returned future resolves to its result. Writes are
    /// queued before this returns, so commands dispatched one after another by one
    /// connection are applied in that order. Reads run apart, off the writer.
    pub async fn dispatch(&self, ctx: &DeviceCtx, command: Command) -> Answer<CommandResult> {
        if let Err(e) = self.take_rate(ctx, &command) {
            return answered(Err(e));
        }
        let this = self.clone();
        let write = match command {
            Command::ListChats { limit, cursor } => {
                let ctx = ctx.clone();
                return Box::pin(async move { this.list_chats(ctx, limit, cursor).await });
            }
            Command::GetHistory {
                chat_id,
                before_seq,
                after_seq,
                limit,
            } => {
                let ctx = ctx.clone();
                let range = (before_seq, after_seq, limit);
                return Box::pin(async move { this.history(ctx, chat_id, range).await });
            }
            Command::GetAttachmentTarget {
                size,
                content_type,
                name,
                sha256,
            } => {
                let ctx = ctx.clone();
                let upload = attachments::Upload {
                    size,
                    content_type,
                    name,
                    sha256,
                };
                return Box::pin(async move {
                    this.check_session(&ctx).await?;
                    this.attachment_target(&ctx, upload).await
                });
            }
            Command::GetAttachmentUrl { attachment_id } => {
                let ctx = ctx.clone();
                return Box::pin(async move {
                    this.check_session(&ctx).await?;
                    this.attachment_url(ctx.user_id, attachment_id).await
                });
            }
            command => match self.write_command(ctx, command).await {
                Ok(Ok(write)) => write,
                Ok(Err(forwarded)) => return forwarded,
                Err(e) => return answered(Err(e)),
            },
        };
        let queued = self
            .enqueue(Op::Command {
                actor: Actor::Device(ctx.clone()),
                command: write,
            })
            .await;
        Box::pin(async move {
            match queued?.await.map_err(|_| CoreError::Stopped)?? {
                Outcome::Command(result) => Ok(result),
                other => Err(unexpected(other)),
            }
        })
    }

    /// Takes a token from the user's bucket for the command's class, if it has
    /// one. Before anything else, so a refused command costs no work.
    fn take_rate(&self, ctx: &DeviceCtx, command: &Command) -> Result<(), CoreError> {
        let Some(class) = limits::Class::of(command) else {
            return Ok(());
        };
        let now = self.inner.clock.now_ms();
        self.inner
            .rates
            .take(&ctx.user, class, now)
            .map_err(|retry_after_ms| CoreError::RateLimited {
                message: class.refusal().to_owned(),
                retry_after_ms,
            })
    }

    /// The writer's form of a command that writes, or, for a chat whose home
    /// is a peer, the answer of the home it was forwarded to. A send's uploads
    /// are checked against the media store here, off the writer, before it is
    /// queued (so still in frame order).
    async fn write_command(
        &self,
        ctx: &DeviceCtx,
        command: Command,
    ) -> Result<Result<WriteCommand, Answer<CommandResult>>, CoreError> {
        if let Some(mut action) = federation::forwarded(ctx, &command, self.node())
            && let Some(home) = self.home_of(action.action.chat_id()).await?
        {
            // Uploads stay here: checked as for a local send, held by this node.
            let held = match &command {
                Command::SendMessage { attachments, .. } if !attachments.is_empty() => {
                    self.check_uploads(ctx, attachments).await?
                }
                _ => Vec::new(),
            };
            federation::attach_held(&mut action, &held, self.node());
            let chat = action.action.chat_id();
            let from = ctx.user_id.clone();
            if !held.is_empty() {
                self.mark_held(from.clone(), chat, &held, false).await?;
            }
            // Not through this node's writer: its session check is made here.
            self.check_session(ctx).await?;
            let sender = format!("{}/{}", ctx.user, ctx.device);
            let answer = self.forward(home, sender, action).await?;
            let this = self.clone();
            return Ok(Err(Box::pin(async move {
                let result = answer.await.map_err(|_| CoreError::Stopped)??;
                if !held.is_empty()
                    && let Err(e) = this.mark_held(from, chat, &held, true).await
                {
                    // The home's event for the message marks them too.
                    tracing::warn!(%chat, error = %e, "could not mark sent uploads");
                }
                Ok(result)
            })));
        }
        Ok(Ok(match command {
            Command::CreateChat { participants, name } => {
                WriteCommand::CreateChat { participants, name }
            }
            Command::SendMessage {
                chat_id,
                message,
                attachments,
                client_msg_id,
            } => WriteCommand::SendMessage {
                chat_id,
                message,
                attachments: match attachments.is_empty() {
                    true => Vec::new(),
                    false => self.check_uploads(ctx, &attachments).await?,
                },
                client_msg_id,
            },
            Command::ModifyChatParticipants {
                chat_id,
                user,
                operation,
            } => WriteCommand::ModifyChatParticipants {
                chat_id,
                user,
                operation,
            },
            Command::RenameChat { chat_id, name } => WriteCommand::RenameChat { chat_id, name },
            Command::MarkRead { chat_id, seq } => WriteCommand::MarkRead { chat_id, seq },
            Command::Ack { delivery_ids } => WriteCommand::Ack { delivery_ids },
            Command::Sync => WriteCommand::Sync,
            Command::ListChats { .. }
            | Command::GetHistory { .. }
            | Command::GetAttachmentTarget { .. }
            | Command::GetAttachmentUrl { .. } => {
                return Err(CoreError::Internal(format!(
                    "{} is a read; it has no writer form",
                    command.kind()
                )));
            }
        }))
    }

    /// The user's chats, most recent activity first, `limit` of them after
    /// `cursor` (`<activity ms>.<chat id>` of the last one of the previous page).
    async fn list_chats(
        &self,
        ctx: DeviceCtx,
        limit: u32,
        cursor: Option<String>,
    ) -> Result<CommandResult, CoreError> {
        let after = match cursor.as_deref().map(parse_cursor) {
            Some(None) => {
                return Err(CoreError::reject(ErrorCode::BadRequest, "invalid cursor"));
            }
            Some(Some(after)) => Some(after),
            None => None,
        };
        self.read(move |view| {
            accounts::session_ended(view, &ctx)?;
            let mut chats: Vec<((i64, String), ChatSummary)> = Vec::new();
            for (chat_id, membership) in view.user_chats(&ctx.user)? {
                let Some(chat) = view.chat(chat_id)? else {
                    continue;
                };
                let participants = view.members(chat_id)?;
                let recent = chat.last_message_at.unwrap_or(chat.created_at);
                let summary = ChatSummary {
                    chat_id: chat_id.to_string(),
                    name: chat.name,
                    participants,
                    last_seq: chat.last_seq,
                    last_message_at: chat.last_message_at.map(rfc3339),
                    unread: chat.last_seq.saturating_sub(membership.read_seq),
                };
                chats.push(((recent, chat_id.to_string()), summary));
            }
            // Newest first: descending (activity, id); a page starts after the cursor.
            chats.sort_by(|a, b| b.0.cmp(&a.0));
            let start = after.map_or(0, |after| chats.partition_point(|(key, _)| *key >= after));
            let page: Vec<_> = chats.into_iter().skip(start).collect();
            let more = page.len() > limit as usize;
            let page: Vec<_> = page.into_iter().take(limit as usize).collect();
            let next_cursor = more
                .then(|| page.last().map(|((at, id), _)| format!("{at}.{id}")))
                .flatten();
            Ok(CommandResult::Chats {
                chats: page.into_iter().map(|(_, c)| c).collect(),
                next_cursor,
            })
        })
        .await
    }

    /// A page of a chat's history; `range` is `(beforeSeq, afterSeq, limit)`.
    async fn history(
        &self,
        ctx: DeviceCtx,
        chat_id: ChatId,
        (before, after, limit): (Option<u64>, Option<u64>, u32),
    ) -> Result<CommandResult, CoreError> {
        self.read(move |view| {
            accounts::session_ended(view, &ctx)?;
            let user_id = &ctx.user_id;
            if view.chat(chat_id)?.is_none() {
                return Err(CoreError::reject(ErrorCode::UnknownChat, "no such chat"));
            }
            if !view.is_member(chat_id, user_id)? {
                return Err(CoreError::reject(
                    ErrorCode::NotParticipant,
                    "you are not a participant of this chat",
                ));
            }
            let from = after.map_or(1, |a| a.saturating_add(1));
            let to = before.unwrap_or(u64::MAX);
            // With only `beforeSeq` (or nothing) the client scrolls back: newest first.
            let newest = after.is_none();
            let rows = view.messages(chat_id, from, to, limit as usize, newest, FRAMES_BUDGET)?;
            Ok(CommandResult::History {
                messages: rows
                    .iter()
                    .map(|(seq, m)| render::message_view(chat_id, *seq, m))
                    .collect(),
            })
        })
        .await
    }

    // ------------------------------------------------------------ delivery

    /// A device's pending events with delivery id > `after`, oldest first, as
    /// frames: at most `limit` of them and about [`FRAMES_BUDGET`] bytes.
    /// `unauthorized` once the device has ended or its user is disabled.
    pub async fn backlog(
        &self,
        device: DeviceId,
        after: DeliveryId,
        limit: usize,
    ) -> Result<Frames, CoreError> {
        self.inbox_read(move |view| {
            accounts::device_ended(view, device)?;
            let entries = view.inbox_after(device, after.0, limit)?;
            let read = entries.len();
            let mut frames = Vec::with_capacity(read);
            let mut bytes = 0;
            for (id, entry) in entries {
                if bytes >= FRAMES_BUDGET {
                    break;
                }
                let event = render::entry_event(view, &entry)?;
                let frame = protocol::event_frame(DeliveryId(id), &event.encode());
                bytes += frame.len();
                frames.push((DeliveryId(id), frame));
            }
            // Fewer entries than asked for, all of them framed: nothing more now.
            let complete = read < limit && frames.len() == read;
            Ok(Frames { frames, complete })
        })
        .await
    }

    /// The frames of specific pending events (for resends); acked ones are skipped.
    pub async fn pending(
        &self,
        device: DeviceId,
        ids: Vec<DeliveryId>,
    ) -> Result<Frames, CoreError> {
        self.inbox_read(move |view| {
            accounts::device_ended(view, device)?;
            let mut frames = Vec::with_capacity(ids.len());
            let mut bytes = 0;
            let mut complete = true;
            for id in ids {
                if bytes >= FRAMES_BUDGET {
                    complete = false;
                    break;
                }
                if let Some(entry) = view.inbox_entry(device, id.0)? {
                    let event = render::entry_event(view, &entry)?;
                    let frame = protocol::event_frame(id, &event.encode());
                    bytes += frame.len();
                    frames.push((id, frame));
                }
            }
            Ok(Frames { frames, complete })
        })
        .await
    }

    /// A session of `device` started at `gateway`: deliveries are routed there
    /// from now on; the device counts as active.
    pub async fn session_started(&self, device: DeviceId, gateway: &GatewayId, round: u64) {
        self.inner
            .presence
            .session_started(device, gateway, round)
            .await;
        self.touch(device);
    }

    /// Devices online now, at any gateway.
    pub fn online(&self) -> usize {
        self.inner.presence.online()
    }
}

/// A `listChats` cursor: `<activity ms>.<chat id>`.
fn parse_cursor(cursor: &str) -> Option<(i64, String)> {
    let (at, id) = cursor.split_once('.')?;
    ChatId::parse(id)?;
    Some((at.parse().ok()?, id.to_owned()))
}

/// About this many bytes of frames go in one inbox read, so one answer fits in a
/// NATS message (1 MiB by default) with room to spare.
pub const FRAMES_BUDGET: usize = 512 * 1024;

/// Frames read from a device's inbox.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Frames {
    pub frames: Vec<(DeliveryId, String)>,
    /// Whether everything pending (after the cursor, or of the ids asked for) is here.
    pub complete: bool,
}

fn unexpected(outcome: Outcome) -> CoreError {
    CoreError::Internal(format!(
        "writer answered with an unexpected outcome: {outcome:?}"
    ))
}
