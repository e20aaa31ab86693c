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

mod commands;
mod sweep;

use super::{CoreConfig, CoreError, DeviceCtx, Invite};
use crate::auth;
use crate::clock::{Clock, rfc3339};
use crate::delivery::{Delivery, Presence, Publisher};
use crate::ids::{AttachmentId, ChatId, DeliveryId, DeviceId, Username};
use crate::protocol::{Command, CommandResult, ErrorCode, Event};
use crate::store::{
    AttachmentRecord, AttachmentRef, ChatRecord, DeviceRecord, Durability, InboxEntry, InboxKind,
    InviteRecord, Store, StoreError, Tx, UserRecord, encode_hex, keys,
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
}
