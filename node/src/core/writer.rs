//! The single writer: one thread applies every write of the node.
//!
//! It takes whatever commands are queued (up to `max_group`), applies them one
//! after another in one fjall transaction, commits that once (one fsync for the
//! group when any of them needs durability), then answers every command and hands
//! the group's deliveries to the live hop. This is group commit: durability costs
//! one fsync per group, not per command.
//!
//! Invariant: an operation rejects (validation) before it writes anything to the
//! transaction or to the caches, so a rejected command leaves no trace; an
//! internal error aborts the whole group and resets the caches.
//!
//! The caches (chat membership, each user's devices, the counters) exist because
//! this thread is the only writer: they are updated with the writes, loaded lazily,
//! and dropped when a commit fails.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::render;
use super::{CoreConfig, CoreError, DeviceCtx, Invite};
use crate::auth;
use crate::clock::{Clock, rfc3339};
use crate::delivery::{Delivery, Presence, Publisher};
use crate::ids::{AttachmentId, ChatId, DeliveryId, DeviceId, MessageId, Username};
use crate::protocol::{self, Command, CommandResult, ErrorCode, Event, Operation, UpdateReason};
use crate::store::{
    AttachmentRecord, AttachmentRef, ChatRecord, DeviceRecord, Durability, IdemRecord, InboxEntry,
    InboxKind, InviteRecord, MemberRecord, MessageRecord, Store, StoreError, Tx, UpdateRecord,
    UserChatRecord, UserRecord, encode_hex, keys,
};

pub(crate) struct WriteRequest {
    pub op: Op,
    pub reply: oneshot::Sender<Result<Outcome, CoreError>>,
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
        command: Command,
        /// For `sendMessage`: its attachments, already checked against the media store.
        attachments: Vec<AttachmentRef>,
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

/// What one retention/expiry sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SweepReport {
    pub devices_deactivated: u64,
    pub entries_expired: u64,
    pub devices_notified: u64,
    pub updates_removed: u64,
    pub idempotency_keys_removed: u64,
    pub invites_removed: u64,
    pub orphan_uploads_removed: u64,
    pub attachments_expired: u64,
}

impl SweepReport {
    pub fn add(&mut self, other: &SweepReport) {
        self.devices_deactivated += other.devices_deactivated;
        self.entries_expired += other.entries_expired;
        self.devices_notified += other.devices_notified;
        self.updates_removed += other.updates_removed;
        self.idempotency_keys_removed += other.idempotency_keys_removed;
        self.invites_removed += other.invites_removed;
        self.orphan_uploads_removed += other.orphan_uploads_removed;
        self.attachments_expired += other.attachments_expired;
    }
}

/// Devices examined per sweep step (one step is one commit).
const SWEEP_DEVICES: usize = 256;
/// Old inbox entries of one device handled in one sweep step.
const SWEEP_ENTRIES: usize = 100_000;
/// Idempotency rows and updates examined per sweep.
const SWEEP_ROWS: usize = 100_000;

#[derive(Clone, Debug)]
struct Member {
    /// `name@node`.
    id: String,
    /// The local name when the member is a user of this node.
    local: Option<Username>,
}

struct ChatState {
    record: ChatRecord,
    /// Sorted by id, like the store's member keys.
    members: Arc<Vec<Member>>,
}

impl ChatState {
    fn has(&self, user_id: &str) -> bool {
        self.members.iter().any(|m| m.id == user_id)
    }

    fn member_ids(&self) -> Vec<String> {
        self.members.iter().map(|m| m.id.clone()).collect()
    }
}

pub(crate) struct Writer {
    store: Store,
    publisher: Publisher,
    presence: Presence,
    clock: Clock,
    config: CoreConfig,
    chats: HashMap<ChatId, ChatState>,
    devices: HashMap<Username, Vec<DeviceId>>,
    next_delivery: u64,
    next_update: u64,
    saved_delivery: u64,
    saved_update: u64,
}

impl Writer {
    pub fn new(
        store: Store,
        publisher: Publisher,
        presence: Presence,
        clock: Clock,
        config: CoreConfig,
    ) -> Result<Self, StoreError> {
        let mut writer = Self {
            store,
            publisher,
            presence,
            clock,
            config,
            chats: HashMap::new(),
            devices: HashMap::new(),
            next_delivery: 0,
            next_update: 0,
            saved_delivery: 0,
            saved_update: 0,
        };
        writer.reset()?;
        Ok(writer)
    }

    /// Forgets every cache and reloads the counters from what is committed.
    fn reset(&mut self) -> Result<(), StoreError> {
        self.chats.clear();
        self.devices.clear();
        let view = self.store.snapshot();
        self.next_delivery = view.counter(keys::COUNTER_DELIVERY)?;
        self.next_update = view.counter(keys::COUNTER_UPDATE)?;
        self.saved_delivery = self.next_delivery;
        self.saved_update = self.next_update;
        Ok(())
    }

    pub fn run(mut self, mut rx: mpsc::Receiver<WriteRequest>) {
        let mut stopping = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut group = vec![first];
            while group.len() < self.config.max_group {
                match rx.try_recv() {
                    Ok(request) => group.push(request),
                    Err(_) => break,
                }
            }
            if let Some(pos) = group.iter().position(|r| matches!(r.op, Op::Stop)) {
                stopping = group.split_off(pos);
                self.commit_group(group);
                break;
            }
            self.commit_group(group);
        }
        rx.close();
        while let Ok(request) = rx.try_recv() {
            stopping.push(request);
        }
        let persisted = self.store.persist();
        if let Err(e) = &persisted {
            tracing::error!(error = %e, "final persist failed");
        }
        for request in stopping {
            let answer = match (&request.op, &persisted) {
                (Op::Stop, Ok(())) => Ok(Outcome::Done),
                _ => Err(CoreError::Stopped),
            };
            let _ = request.reply.send(answer);
        }
        tracing::info!("writer stopped");
    }

    fn commit_group(&mut self, group: Vec<WriteRequest>) {
        let started = std::time::Instant::now();
        let metrics = &crate::metrics::METRICS;
        metrics.commit_group.observe(group.len() as f64);
        let store = self.store.clone();
        let (ops, replies): (Vec<Op>, Vec<_>) = group.into_iter().map(|r| (r.op, r.reply)).unzip();
        let mut pushes = Vec::new();
        let mut results = Vec::with_capacity(ops.len());
        let committed = store.write(|tx| {
            let mut durability = Durability::Buffer;
            for op in ops {
                let result = self.apply(tx, op, &mut pushes, &mut durability);
                if let Err(e) = &result
                    && !matches!(e, CoreError::Rejected { .. })
                {
                    // A fault mid-command may have left part of it in the
                    // transaction: abort the whole group.
                    return Err(CoreError::Internal(format!("group aborted: {e}")));
                }
                results.push(result);
            }
            if self.next_delivery != self.saved_delivery {
                tx.set_counter(keys::COUNTER_DELIVERY, self.next_delivery);
            }
            if self.next_update != self.saved_update {
                tx.set_counter(keys::COUNTER_UPDATE, self.next_update);
            }
            Ok(((), durability))
        });
        metrics.commits.inc();
        metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        match committed {
            Ok(()) => {
                self.saved_delivery = self.next_delivery;
                self.saved_update = self.next_update;
                // Deliveries first: once a sender has its result, the recipients'
                // connections already hold the event.
                self.publisher.publish(pushes);
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "commit failed; caches reset");
                if let Err(e) = self.reset() {
                    tracing::error!(error = %e, "reloading counters failed");
                }
                for reply in replies {
                    let _ = reply.send(Err(CoreError::Internal(e.to_string())));
                }
            }
        }
    }

    fn local_user(&self, user_id: &str) -> Option<Username> {
        let (name, node) = user_id.split_once('@')?;
        (node == self.config.node.as_str())
            .then(|| Username::parse(name))
            .flatten()
    }

    fn member(&self, user_id: String) -> Member {
        Member {
            local: self.local_user(&user_id),
            id: user_id,
        }
    }

    fn user_id(&self, name: &Username) -> String {
        format!("{}@{}", name, self.config.node)
    }

    /// The chat's cached state, loaded from the transaction if needed.
    fn chat(&mut self, tx: &Tx<'_>, id: ChatId) -> Result<Option<&mut ChatState>, CoreError> {
        if !self.chats.contains_key(&id) {
            let view = tx.view();
            let Some(record) = view.chat(id)? else {
                return Ok(None);
            };
            let members = view
                .members(id)?
                .into_iter()
                .map(|m| self.member(m))
                .collect();
            if self.chats.len() >= 100_000 {
                self.chats.clear();
            }
            self.chats.insert(
                id,
                ChatState {
                    record,
                    members: Arc::new(members),
                },
            );
        }
        Ok(self.chats.get_mut(&id))
    }

    fn devices_of(&mut self, tx: &Tx<'_>, user: &Username) -> Result<&Vec<DeviceId>, CoreError> {
        if !self.devices.contains_key(user) {
            let devices = tx.view().user_devices(user)?;
            if self.devices.len() >= 100_000 {
                self.devices.clear();
            }
            self.devices.insert(user.clone(), devices);
        }
        Ok(&self.devices[user])
    }

    fn next_delivery(&mut self) -> u64 {
        self.next_delivery += 1;
        self.next_delivery
    }

    /// Queues one event for every device of `members` (except `skip`) in the
    /// transaction, and for the live hop after commit. The event is serialized once.
    fn fan_out(
        &mut self,
        tx: &mut Tx<'_>,
        members: &[Member],
        skip: Option<DeviceId>,
        kind: InboxKind,
        event: &Event,
        pushes: &mut Vec<(DeviceId, Delivery)>,
    ) -> Result<(), CoreError> {
        let encoded = event.encode();
        let entry = InboxEntry {
            queued_at: self.clock.now_ms(),
            kind,
        };
        let created_ms = crate::metrics::wall_ms();
        for member in members {
            // Remote members are reached through federation, not the inbox.
            let Some(name) = &member.local else { continue };
            let devices = self.devices_of(tx, name)?.clone();
            for device in devices {
                if Some(device) == skip {
                    continue;
                }
                let id = self.next_delivery();
                tx.put_inbox(device, id, &entry);
                pushes.push((
                    device,
                    Delivery {
                        id: DeliveryId(id),
                        encoded: encoded.clone(),
                        created_ms,
                    },
                ));
            }
        }
        Ok(())
    }

    fn apply(
        &mut self,
        tx: &mut Tx<'_>,
        op: Op,
        pushes: &mut Vec<(DeviceId, Delivery)>,
        durability: &mut Durability,
    ) -> Result<Outcome, CoreError> {
        let now = self.clock.now_ms();
        match op {
            Op::CreateUser {
                name,
                password_hash,
                invite,
            } => {
                let view = tx.view();
                if view.user(&name)?.is_some() {
                    return Err(CoreError::reject(
                        ErrorCode::UsernameTaken,
                        "that username is taken",
                    ));
                }
                let invite = match invite {
                    Some(code) => match view.invite(&code)? {
                        Some(record) if record.expires_at > now && record.uses_left > 0 => {
                            Some((code, record))
                        }
                        _ => {
                            return Err(CoreError::reject(
                                ErrorCode::InvalidInvite,
                                "that invite is unknown, used up or expired",
                            ));
                        }
                    },
                    None => None,
                };
                if let Some((code, mut record)) = invite {
                    record.uses_left -= 1;
                    if record.uses_left == 0 {
                        tx.delete_invite(&code);
                    } else {
                        tx.put_invite(&code, &record);
                    }
                }
                tx.put_user(&UserRecord {
                    name: name.clone(),
                    password_hash,
                    created_at: now,
                    disabled: false,
                });
                *durability = Durability::Sync;
                Ok(Outcome::UserId(self.user_id(&name)))
            }
            Op::SetUserDisabled { name, disabled } => {
                let Some(mut record) = tx.view().user(&name)? else {
                    return Err(CoreError::reject(ErrorCode::UnknownUser, "no such user"));
                };
                record.disabled = disabled;
                tx.put_user(&record);
                *durability = Durability::Sync;
                Ok(Outcome::Done)
            }
            Op::CreateDevice {
                user,
                name,
                token_hash,
            } => {
                let Some(record) = tx.view().user(&user)? else {
                    return Err(CoreError::reject(
                        ErrorCode::BadCredentials,
                        "wrong username or password",
                    ));
                };
                if record.disabled {
                    return Err(CoreError::reject(
                        ErrorCode::UserDisabled,
                        "this user is disabled",
                    ));
                }
                let device = DeviceId::generate();
                tx.put_device(
                    device,
                    &DeviceRecord {
                        user: user.clone(),
                        name,
                        created_at: now,
                        last_active: now,
                        token_hash: encode_hex(&token_hash),
                    },
                    &token_hash,
                );
                if let Some(devices) = self.devices.get_mut(&user) {
                    devices.push(device);
                }
                *durability = Durability::Sync;
                Ok(Outcome::Device(DeviceCtx {
                    user_id: self.user_id(&user),
                    user,
                    device,
                }))
            }
            Op::DeleteDevice { device } => {
                if let Some(record) = tx.view().device(device)? {
                    tx.delete_device(device, &record)?;
                    if let Some(devices) = self.devices.get_mut(&record.user) {
                        devices.retain(|d| *d != device);
                    }
                    *durability = Durability::Sync;
                }
                Ok(Outcome::Done)
            }
            Op::CreateInvite { uses, ttl_ms } => {
                let code = auth::new_invite_code();
                let expires_at = now.saturating_add(ttl_ms);
                tx.put_invite(
                    &code,
                    &InviteRecord {
                        created_at: now,
                        expires_at,
                        uses_left: uses,
                    },
                );
                *durability = Durability::Sync;
                Ok(Outcome::Invite(Invite {
                    code,
                    uses,
                    expires_at: rfc3339(expires_at),
                }))
            }
            Op::Touch { device } => {
                if let Some(mut record) = tx.view().device(device)? {
                    record.last_active = now;
                    tx.update_device(device, &record);
                }
                Ok(Outcome::Done)
            }
            Op::Command {
                ctx,
                command,
                attachments,
            } => {
                let result =
                    self.command(tx, &ctx, command, attachments, now, pushes, durability)?;
                Ok(Outcome::Command(result))
            }
            Op::CreateAttachment { id, record } => {
                tx.put_attachment(id, &record);
                *durability = Durability::Sync;
                Ok(Outcome::Done)
            }
            Op::DropAttachment {
                id,
                unsent_before,
                any_before,
            } => {
                let drop = match tx.view().attachment(id)? {
                    Some(r) => {
                        (!r.sent && r.created_at < unsent_before) || r.created_at < any_before
                    }
                    None => false,
                };
                if drop {
                    tx.delete_attachment(id);
                    *durability = Durability::Sync;
                }
                Ok(Outcome::Dropped(drop))
            }
            Op::Sweep { after } => {
                let (report, next) = self.sweep(tx, after, now, pushes)?;
                if report != SweepReport::default() {
                    *durability = Durability::Sync;
                }
                Ok(Outcome::Swept { report, next })
            }
            // Handled by `run` before a group is applied.
            Op::Stop => Ok(Outcome::Done),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn command(
        &mut self,
        tx: &mut Tx<'_>,
        ctx: &DeviceCtx,
        command: Command,
        verified: Vec<AttachmentRef>,
        now: i64,
        pushes: &mut Vec<(DeviceId, Delivery)>,
        durability: &mut Durability,
    ) -> Result<CommandResult, CoreError> {
        let unknown_chat = || CoreError::reject(ErrorCode::UnknownChat, "no such chat");
        let not_participant = || {
            CoreError::reject(
                ErrorCode::NotParticipant,
                "you are not a participant of this chat",
            )
        };
        match command {
            Command::CreateChat { participants, name } => {
                let mut ids = vec![ctx.user_id.clone()];
                for p in participants {
                    if p.node != self.config.node {
                        return Err(CoreError::reject(
                            ErrorCode::UnknownUser,
                            format!("{p}: federation with {} is not set up", p.node),
                        ));
                    }
                    let id = p.to_string();
                    if ids.contains(&id) {
                        continue;
                    }
                    if tx.view().user(&p.name)?.is_none() {
                        return Err(CoreError::reject(
                            ErrorCode::UnknownUser,
                            format!("no such user {id}"),
                        ));
                    }
                    ids.push(id);
                }
                if ids.len() > protocol::MAX_PARTICIPANTS {
                    return Err(CoreError::reject(
                        ErrorCode::TooManyParticipants,
                        format!(
                            "a chat has at most {} participants, the creator included",
                            protocol::MAX_PARTICIPANTS
                        ),
                    ));
                }
                ids.sort();
                let chat_id = ChatId::generate();
                let record = ChatRecord {
                    name: name.clone(),
                    creator: ctx.user_id.clone(),
                    created_at: now,
                    last_seq: 0,
                    last_message_at: None,
                };
                tx.put_chat(chat_id, &record);
                let members: Vec<Member> = ids.iter().map(|id| self.member(id.clone())).collect();
                for m in &members {
                    tx.put_member(chat_id, &m.id, &MemberRecord { joined_at: now });
                    if let Some(local) = &m.local {
                        tx.put_user_chat(
                            local,
                            chat_id,
                            &UserChatRecord {
                                joined_at: now,
                                read_seq: 0,
                            },
                        );
                    }
                }
                self.chats.insert(
                    chat_id,
                    ChatState {
                        record,
                        members: Arc::new(members.clone()),
                    },
                );
                self.update(
                    tx,
                    chat_id,
                    name,
                    ids,
                    UpdateReason::Created,
                    &members,
                    now,
                    pushes,
                )?;
                *durability = Durability::Sync;
                Ok(CommandResult::ChatCreated {
                    chat_id: chat_id.to_string(),
                })
            }
            Command::SendMessage {
                chat_id,
                message,
                attachments,
                client_msg_id,
            } => {
                if let Some(cmid) = &client_msg_id
                    && let Some(previous) = tx.view().idem(&ctx.user, cmid)?
                {
                    // A retry: the first send's answer, and nothing delivered twice.
                    return Ok(CommandResult::MessageSent {
                        message_id: previous.message_id.to_string(),
                        seq: previous.seq,
                        sent_at: rfc3339(previous.sent_at),
                    });
                }
                if !self
                    .chat(tx, chat_id)?
                    .ok_or_else(unknown_chat)?
                    .has(&ctx.user_id)
                {
                    return Err(not_participant());
                }
                // The core checked each upload against the media store; here the
                // records must still be there and the sender's (a sweep may have
                // removed one since).
                let mut records = Vec::with_capacity(verified.len());
                for att in &verified {
                    let id = AttachmentId::parse(&att.id).ok_or_else(|| {
                        CoreError::reject(ErrorCode::UnknownAttachment, "no such attachment")
                    })?;
                    match tx.view().attachment(id)? {
                        Some(r) if r.uploader == ctx.user_id => records.push((id, r)),
                        _ => {
                            return Err(CoreError::reject(
                                ErrorCode::UnknownAttachment,
                                format!("no such attachment {id}"),
                            ));
                        }
                    }
                }
                if verified.len() != attachments.len() {
                    return Err(CoreError::reject(
                        ErrorCode::UnknownAttachment,
                        "attachments were not checked",
                    ));
                }
                let chat = self.chat(tx, chat_id)?.ok_or_else(unknown_chat)?;
                let seq = chat.record.last_seq + 1;
                chat.record.last_seq = seq;
                chat.record.last_message_at = Some(now);
                let chat_record = chat.record.clone();
                let members = chat.members.clone();
                let record = MessageRecord {
                    id: MessageId::generate(),
                    from: ctx.user_id.clone(),
                    sent_at: now,
                    text: message,
                    attachments: verified,
                };
                for (id, mut att) in records {
                    att.sent = true;
                    if !att.chats.contains(&chat_id) {
                        att.chats.push(chat_id);
                    }
                    tx.put_attachment(id, &att);
                }
                tx.put_chat(chat_id, &chat_record);
                tx.put_message(chat_id, seq, &record);
                let joined_at = tx
                    .view()
                    .user_chat(&ctx.user, chat_id)?
                    .map_or(now, |r| r.joined_at);
                tx.put_user_chat(
                    &ctx.user,
                    chat_id,
                    &UserChatRecord {
                        joined_at,
                        read_seq: seq,
                    },
                );
                if let Some(cmid) = &client_msg_id {
                    tx.put_idem(
                        &ctx.user,
                        cmid,
                        &IdemRecord {
                            chat: chat_id,
                            seq,
                            message_id: record.id,
                            sent_at: now,
                        },
                    );
                }
                let event = Event::NewMessage(render::message_view(chat_id, seq, &record));
                self.fan_out(
                    tx,
                    &members,
                    Some(ctx.device),
                    InboxKind::Message { chat: chat_id, seq },
                    &event,
                    pushes,
                )?;
                *durability = Durability::Sync;
                Ok(CommandResult::MessageSent {
                    message_id: record.id.to_string(),
                    seq,
                    sent_at: rfc3339(now),
                })
            }
            Command::ModifyChatParticipants {
                chat_id,
                user,
                operation,
            } => {
                let local = user.node == self.config.node;
                let target = user.to_string();
                let target_exists = local && tx.view().user(&user.name)?.is_some();
                let chat = self.chat(tx, chat_id)?.ok_or_else(unknown_chat)?;
                if !chat.has(&ctx.user_id) {
                    return Err(not_participant());
                }
                match operation {
                    Operation::Add => {
                        if chat.has(&target) {
                            return Ok(CommandResult::Participants {
                                participants: chat.member_ids(),
                            });
                        }
                        if !target_exists {
                            return Err(CoreError::reject(
                                ErrorCode::UnknownUser,
                                format!("no such user {target}"),
                            ));
                        }
                        if chat.members.len() >= protocol::MAX_PARTICIPANTS {
                            return Err(CoreError::reject(
                                ErrorCode::TooManyParticipants,
                                format!(
                                    "a chat has at most {} participants",
                                    protocol::MAX_PARTICIPANTS
                                ),
                            ));
                        }
                        let last_seq = chat.record.last_seq;
                        let name = chat.record.name.clone();
                        let new_member = Member {
                            id: target.clone(),
                            local: Some(user.name.clone()),
                        };
                        let members = Arc::make_mut(&mut chat.members);
                        let at = members.partition_point(|m| m.id < target);
                        members.insert(at, new_member);
                        let members = chat.members.clone();
                        let ids = chat.member_ids();
                        tx.put_member(chat_id, &target, &MemberRecord { joined_at: now });
                        // History is readable, but not unread, for someone added later.
                        tx.put_user_chat(
                            &user.name,
                            chat_id,
                            &UserChatRecord {
                                joined_at: now,
                                read_seq: last_seq,
                            },
                        );
                        self.update(
                            tx,
                            chat_id,
                            name,
                            ids.clone(),
                            UpdateReason::Added,
                            &members,
                            now,
                            pushes,
                        )?;
                        *durability = Durability::Sync;
                        Ok(CommandResult::Participants { participants: ids })
                    }
                    Operation::Remove => {
                        if !chat.has(&target) {
                            return Err(CoreError::reject(
                                ErrorCode::NotParticipant,
                                format!("{target} is not a participant of this chat"),
                            ));
                        }
                        if target != ctx.user_id && chat.record.creator != ctx.user_id {
                            return Err(CoreError::reject(
                                ErrorCode::Forbidden,
                                "only the chat's creator may remove others",
                            ));
                        }
                        let name = chat.record.name.clone();
                        let removed = chat
                            .members
                            .iter()
                            .find(|m| m.id == target)
                            .cloned()
                            .into_iter()
                            .collect::<Vec<_>>();
                        Arc::make_mut(&mut chat.members).retain(|m| m.id != target);
                        let ids = chat.member_ids();
                        // The removed user gets this last update, then nothing more.
                        let mut recipients = (*chat.members).clone();
                        recipients.extend(removed);
                        tx.delete_member(chat_id, &target);
                        if local {
                            tx.delete_user_chat(&user.name, chat_id);
                        }
                        self.update(
                            tx,
                            chat_id,
                            name,
                            ids.clone(),
                            UpdateReason::Removed,
                            &recipients,
                            now,
                            pushes,
                        )?;
                        *durability = Durability::Sync;
                        Ok(CommandResult::Participants { participants: ids })
                    }
                }
            }
            Command::RenameChat { chat_id, name } => {
                let chat = self.chat(tx, chat_id)?.ok_or_else(unknown_chat)?;
                if !chat.has(&ctx.user_id) {
                    return Err(not_participant());
                }
                if chat.record.name == name {
                    return Ok(CommandResult::Empty {});
                }
                chat.record.name = name.clone();
                let record = chat.record.clone();
                let members = chat.members.clone();
                let ids = chat.member_ids();
                tx.put_chat(chat_id, &record);
                self.update(
                    tx,
                    chat_id,
                    name,
                    ids,
                    UpdateReason::Renamed,
                    &members,
                    now,
                    pushes,
                )?;
                *durability = Durability::Sync;
                Ok(CommandResult::Empty {})
            }
            Command::MarkRead { chat_id, seq } => {
                let chat = self.chat(tx, chat_id)?.ok_or_else(unknown_chat)?;
                if !chat.has(&ctx.user_id) {
                    return Err(not_participant());
                }
                let last_seq = chat.record.last_seq;
                if let Some(mut record) = tx.view().user_chat(&ctx.user, chat_id)? {
                    let read = seq.min(last_seq);
                    if read > record.read_seq {
                        record.read_seq = read;
                        tx.put_user_chat(&ctx.user, chat_id, &record);
                    }
                }
                Ok(CommandResult::Empty {})
            }
            Command::Ack { delivery_ids } => {
                for id in delivery_ids {
                    tx.delete_inbox(ctx.device, id.0);
                }
                Ok(CommandResult::Empty {})
            }
            // Through the writer so that everything queued before it is committed.
            Command::Sync => Ok(CommandResult::Synced {
                up_to: tx.view().inbox_last(ctx.device)?.unwrap_or(0).to_string(),
            }),
            Command::ListChats
            | Command::GetHistory { .. }
            | Command::GetAttachmentTarget { .. }
            | Command::GetAttachmentUrl { .. } => Err(CoreError::Internal(format!(
                "{} is a read and never reaches the writer",
                command.kind()
            ))),
        }
    }

    /// Stores a chat update once and queues it for every device of `recipients`.
    #[allow(clippy::too_many_arguments)]
    fn update(
        &mut self,
        tx: &mut Tx<'_>,
        chat: ChatId,
        name: Option<String>,
        participants: Vec<String>,
        reason: UpdateReason,
        recipients: &[Member],
        now: i64,
        pushes: &mut Vec<(DeviceId, Delivery)>,
    ) -> Result<(), CoreError> {
        self.next_update += 1;
        let id = self.next_update;
        let record = UpdateRecord {
            chat,
            name,
            participants,
            reason,
            at: now,
        };
        tx.put_update(id, &record);
        let event = Event::ChatUpdate(render::update_view(&record));
        self.fan_out(
            tx,
            recipients,
            None,
            InboxKind::Update { id },
            &event,
            pushes,
        )
    }

    fn sweep(
        &mut self,
        tx: &mut Tx<'_>,
        after: Option<DeviceId>,
        now: i64,
        pushes: &mut Vec<(DeviceId, Delivery)>,
    ) -> Result<(SweepReport, Option<DeviceId>), CoreError> {
        let mut report = SweepReport::default();
        let cutoff = now.saturating_sub(self.config.retention_ms);
        let dead_before = now.saturating_sub(self.config.device_ttl_ms);
        let devices = tx.view().devices_after(after, SWEEP_DEVICES)?;
        for (device, record) in &devices {
            if record.last_active < dead_before && !self.presence.is_online(*device) {
                report.entries_expired += tx.delete_device(*device, record)?;
                if let Some(list) = self.devices.get_mut(&record.user) {
                    list.retain(|d| d != device);
                }
                report.devices_deactivated += 1;
                tracing::info!(%device, user = %record.user, "device deactivated after its TTL");
                continue;
            }
            let entries = tx.view().inbox_after(*device, 0, SWEEP_ENTRIES)?;
            let old: Vec<_> = entries
                .iter()
                .take_while(|(_, e)| e.queued_at < cutoff)
                .collect();
            if old.is_empty() {
                continue;
            }
            let (mut count, mut oldest, mut newest) = (0u64, i64::MAX, i64::MIN);
            for (id, entry) in &old {
                let (n, from, to) = match entry.kind {
                    InboxKind::Expired {
                        count,
                        oldest,
                        newest,
                    } => (count, oldest, newest),
                    _ => {
                        report.entries_expired += 1;
                        (1, entry.queued_at, entry.queued_at)
                    }
                };
                count += n;
                oldest = oldest.min(from);
                newest = newest.max(to);
                tx.delete_inbox(*device, *id);
            }
            // The device is told, with an event it must ack like any other.
            let id = self.next_delivery();
            tx.put_inbox(
                *device,
                id,
                &InboxEntry {
                    queued_at: now,
                    kind: InboxKind::Expired {
                        count,
                        oldest,
                        newest,
                    },
                },
            );
            let event = render::expired_event(count, oldest, newest);
            pushes.push((
                *device,
                Delivery {
                    id: DeliveryId(id),
                    encoded: event.encode(),
                    created_ms: crate::metrics::wall_ms(),
                },
            ));
            report.devices_notified += 1;
        }
        if after.is_none() {
            for (id, at) in tx.updates_oldest(SWEEP_ROWS)? {
                if at >= cutoff {
                    break;
                }
                tx.delete_update(id);
                report.updates_removed += 1;
            }
            for (key, _, at) in tx.idem_rows_after(None, SWEEP_ROWS)? {
                if at < cutoff {
                    tx.delete_raw_user_key(&key);
                    report.idempotency_keys_removed += 1;
                }
            }
            for (code, invite) in tx.view().invites()? {
                if invite.expires_at <= now {
                    tx.delete_invite(&code);
                    report.invites_removed += 1;
                }
            }
        }
        let next = (devices.len() == SWEEP_DEVICES)
            .then(|| devices.last().map(|(d, _)| *d))
            .flatten();
        Ok((report, next))
    }
}
