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
//! The caches (chat membership, each user's devices, which users are disabled,
//! the counters) exist because this thread is the only writer: they are updated
//! with the writes, loaded lazily, and dropped when a commit fails.
//!
//! Invariant: a client command is applied only for a device that exists and a
//! user that is not disabled (`check_session`, against the caches), so a logout
//! or a disable holds even if the order to close a connection was lost.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;

mod accounts;
mod admin;
mod chat;
mod federation;
mod inbox;
mod media;
mod message;
mod ops;
mod sweep;

pub(crate) use ops::{Actor, Op, Outcome, WriteCommand, WriteRequest};
pub(crate) use sweep::SweepCursor;
pub use sweep::SweepReport;

use super::render;
use super::{CoreConfig, CoreError};
use crate::clock::Clock;
use crate::delivery::{Delivery, Presence, Publisher};
use crate::federation::Wakers;
use crate::ids::{ChatId, DeliveryId, DeviceId, NodeName, UserRef, Username};
use crate::protocol::{CommandResult, Event, Operation};
use crate::store::{
    ChatRecord, Durability, InboxEntry, InboxKind, Store, StoreError, Tx, UpdateRecord, keys,
};

/// One commit group as the operations in it see it: the transaction they all
/// write to, the time of the operation being applied, the deliveries to hand to
/// the live hop after the commit, and whether the commit must be fsync'd.
pub(super) struct Batch<'a, 't> {
    pub tx: &'a mut Tx<'t>,
    pub now: i64,
    pub pushes: Vec<(DeviceId, Delivery)>,
    pub durability: Durability,
    /// Peers with new events in their outbox, to wake after the commit.
    pub federated: Vec<NodeName>,
}

impl Batch<'_, '_> {
    /// This group must be on disk before anyone is answered.
    pub(super) fn sync(&mut self) {
        self.durability = Durability::Sync;
    }
}

#[derive(Clone, Debug)]
struct Member {
    /// `name@node`.
    id: String,
    /// The local name when the member is a user of this node.
    local: Option<Username>,
    /// The member's node when it is a peer.
    remote: Option<NodeName>,
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
    /// Whether each user (of those looked up) is disabled.
    disabled: HashMap<Username, bool>,
    next_delivery: u64,
    next_update: u64,
    saved_delivery: u64,
    saved_update: u64,
    /// The last outbox seq given out per peer (written with each entry).
    outbox_seqs: HashMap<NodeName, u64>,
    wakers: Wakers,
    /// A device whose old inbox entries take several sweep steps, and the
    /// `expired` notice the last step left it.
    paged_notice: Option<(DeviceId, u64)>,
    /// Messages stored per second, for `stats`.
    message_rate: Arc<super::admin::MessageRate>,
}

impl Writer {
    pub(super) fn new(
        store: Store,
        publisher: Publisher,
        presence: Presence,
        clock: Clock,
        config: CoreConfig,
        wakers: Wakers,
        message_rate: Arc<super::admin::MessageRate>,
    ) -> Result<Self, StoreError> {
        let mut writer = Self {
            store,
            publisher,
            presence,
            clock,
            config,
            chats: HashMap::new(),
            devices: HashMap::new(),
            disabled: HashMap::new(),
            next_delivery: 0,
            next_update: 0,
            saved_delivery: 0,
            saved_update: 0,
            outbox_seqs: HashMap::new(),
            wakers,
            paged_notice: None,
            message_rate,
        };
        writer.reset()?;
        Ok(writer)
    }

    /// Forgets every cache and reloads the counters from what is committed.
    fn reset(&mut self) -> Result<(), StoreError> {
        self.chats.clear();
        self.devices.clear();
        self.disabled.clear();
        self.outbox_seqs.clear();
        let view = self.store.snapshot();
        self.next_delivery = view.counter(keys::COUNTER_DELIVERY)?;
        self.next_update = view.counter(keys::COUNTER_UPDATE)?;
        self.saved_delivery = self.next_delivery;
        self.saved_update = self.next_update;
        Ok(())
    }

    pub(super) fn run(mut self, mut rx: mpsc::Receiver<WriteRequest>) {
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
        let mut results = Vec::with_capacity(ops.len());
        let committed = store.write(|tx| {
            let mut b = Batch {
                tx,
                now: 0,
                pushes: Vec::new(),
                durability: Durability::Buffer,
                federated: Vec::new(),
            };
            for op in ops {
                b.now = self.clock.now_ms();
                match self.apply(&mut b, op) {
                    // A fault mid-command may have left part of it in the
                    // transaction: abort the whole group.
                    Err(e) if !matches!(e, CoreError::Rejected { .. }) => return Err(e),
                    result => results.push(result),
                }
            }
            if self.next_delivery != self.saved_delivery {
                b.tx.set_counter(keys::COUNTER_DELIVERY, self.next_delivery);
            }
            if self.next_update != self.saved_update {
                b.tx.set_counter(keys::COUNTER_UPDATE, self.next_update);
            }
            Ok(((b.pushes, b.federated), b.durability))
        });
        metrics.commits.inc();
        metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        match committed {
            Ok((pushes, federated)) => {
                self.saved_delivery = self.next_delivery;
                self.saved_update = self.next_update;
                // Deliveries first: once a sender has its result, the recipients'
                // connections already hold the event.
                self.publisher.publish(pushes);
                for node in &federated {
                    self.wakers.wake(node);
                }
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "commit failed; caches reset");
                if let Err(e) = self.reset() {
                    tracing::error!(error = %e, "reloading counters failed");
                }
                let cause = Arc::new(e);
                for reply in replies {
                    let _ = reply.send(Err(CoreError::GroupFailed(cause.clone())));
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
        let local = self.local_user(&user_id);
        let remote = match &local {
            Some(_) => None,
            None => user_id
                .split_once('@')
                .and_then(|(_, node)| NodeName::parse(node)),
        };
        Member {
            local,
            remote,
            id: user_id,
        }
    }

    fn user_id(&self, name: &Username) -> String {
        UserRef {
            name: name.clone(),
            node: self.config.node.clone(),
        }
        .to_string()
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
        b: &mut Batch<'_, '_>,
        members: &[Member],
        skip: Option<DeviceId>,
        kind: InboxKind,
        event: &Event,
    ) -> Result<(), CoreError> {
        let encoded = event.encode();
        let entry = InboxEntry {
            queued_at: b.now,
            kind,
        };
        let created_ms = crate::metrics::wall_ms();
        for member in members {
            // Remote members are reached through federation, not the inbox.
            let Some(name) = &member.local else { continue };
            let devices = self.devices_of(b.tx, name)?.clone();
            for device in devices {
                if Some(device) == skip {
                    continue;
                }
                let id = self.next_delivery();
                b.tx.put_inbox(device, id, &entry);
                b.pushes.push((
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

    /// Stores a chat update once and queues it for every device of `recipients`;
    /// at the chat's home, also for the peers of `recipients`.
    fn update(
        &mut self,
        b: &mut Batch<'_, '_>,
        record: &UpdateRecord,
        recipients: &[Member],
        chat: &ChatRecord,
    ) -> Result<(), CoreError> {
        self.next_update += 1;
        let id = self.next_update;
        b.tx.put_update(id, record);
        let event = Event::ChatUpdate(render::update_view(record));
        self.fan_out(b, recipients, None, InboxKind::Update { id }, &event)?;
        if chat.home.is_none() {
            let event = crate::federation::events::Event::Chat {
                chat_id: record.chat,
                name: record.name.clone(),
                creator: chat.creator.clone(),
                created_at: chat.created_at,
                participants: record.participants.clone(),
                reason: federation::reason_of(record.reason),
                at: record.at,
                last_seq: chat.last_seq,
            };
            self.federate(b, recipients, &event)?;
        }
        Ok(())
    }

    /// Applies one operation to the group's transaction.
    fn apply(&mut self, b: &mut Batch<'_, '_>, op: Op) -> Result<Outcome, CoreError> {
        match op {
            Op::CreateUser {
                name,
                password_hash,
                invite,
            } => self.create_user(b, name, password_hash, invite),
            Op::SetUserDisabled { name, disabled } => self.set_user_disabled(b, &name, disabled),
            Op::CreateDevice {
                user,
                name,
                token_hash,
            } => self.create_device(b, user, name, token_hash),
            Op::DeleteDevice { device } => self.delete_device(b, device),
            Op::CreateInvite { uses, ttl_ms } => Ok(self.create_invite(b, uses, ttl_ms)),
            Op::DeleteInvite { code } => self.delete_invite(b, &code),
            Op::ResetPassword {
                name,
                password_hash,
            } => self.reset_password(b, &name, password_hash),
            Op::DeleteUser { name } => self.delete_user(b, &name),
            Op::DeleteChat { chat } => self.delete_chat(b, chat),
            Op::PurgeChat { chat, limit } => self.purge_chat(b, chat, limit),
            Op::Touch { device } => self.touch(b, device),
            Op::Command { actor, command } => {
                Ok(Outcome::Command(self.command(b, &actor, command)?))
            }
            Op::PutPeer { node, record } => Ok(self.put_peer(b, &node, &record)),
            Op::RemovePeer { node } => self.remove_peer(b, &node),
            Op::ApplyEvents {
                origin,
                events,
                after,
            } => self.apply_events(b, &origin, events, after),
            Op::OutboxDone {
                node,
                from,
                delivered,
                dead,
            } => self.outbox_done(b, &node, from, delivered, dead),
            Op::DeadLetter { node, seq, entry } => {
                b.tx.put_outbox(&node, seq, &entry, true);
                b.sync();
                Ok(Outcome::Done)
            }
            Op::ReplayDead { node } => self.replay_dead(b, &node),
            Op::CreateAttachment { id, record } => self.create_attachment(b, id, &record),
            Op::DropAttachment {
                id,
                unsent_before,
                any_before,
            } => self.drop_attachment(b, id, unsent_before, any_before),
            Op::SealAttachment { id, uploader } => Self::seal_attachment(b, id, &uploader),
            Op::HeldAttachments {
                from,
                chat,
                ids,
                sent,
            } => Self::mark_held(b, &from, chat, &ids, sent),
            Op::Sweep { at } => {
                let (report, next) = self.sweep(b, at)?;
                if report != SweepReport::default() {
                    b.sync();
                }
                Ok(Outcome::Swept { report, next })
            }
            // Handled by `run` before a group is applied.
            Op::Stop => Ok(Outcome::Done),
        }
    }

    /// Routes a client command to its function (one per command, by noun in
    /// `chat.rs`, `message.rs`, `inbox.rs`).
    fn command(
        &mut self,
        b: &mut Batch<'_, '_>,
        actor: &Actor,
        command: WriteCommand,
    ) -> Result<CommandResult, CoreError> {
        if let Actor::Device(ctx) = actor {
            self.check_session(b.tx, ctx)?;
        }
        // Commands that only concern a local device.
        let local = || {
            actor
                .device()
                .ok_or_else(|| CoreError::Internal("a peer's user cannot use this command".into()))
        };
        match command {
            WriteCommand::CreateChat { participants, name } => {
                self.create_chat(b, local()?, participants, name)
            }
            WriteCommand::SendMessage {
                chat_id,
                message,
                attachments,
                client_msg_id,
            } => self.send_message(
                b,
                actor,
                message::Send {
                    chat_id,
                    text: message,
                    attachments,
                    client_msg_id,
                },
            ),
            WriteCommand::ModifyChatParticipants {
                chat_id,
                user,
                operation: Operation::Add,
            } => self.add_participant(b, &actor.user_id(), chat_id, user),
            WriteCommand::ModifyChatParticipants {
                chat_id,
                user,
                operation: Operation::Remove,
            } => self.remove_participant(b, &actor.user_id(), chat_id, user),
            WriteCommand::RenameChat { chat_id, name } => {
                self.rename_chat(b, &actor.user_id(), chat_id, name)
            }
            WriteCommand::MarkRead { chat_id, seq } => self.mark_read(b, local()?, chat_id, seq),
            WriteCommand::Ack { delivery_ids } => Ok(Self::ack(b, local()?, delivery_ids)),
            WriteCommand::Sync => Self::sync(b, local()?),
        }
    }
}
