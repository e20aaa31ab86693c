//! The writer's share of federation. At a chat's home: queueing each event for
//! the peers of its participants, in the same transaction as the change (so an
//! event is queued if and only if the change is stored). At a participating
//! node: applying a home's events to the mirror of its chat, in order and each
//! once. And the peers and their outboxes.

use std::sync::Arc;

use super::{Batch, ChatState, Member, Outcome, Writer};
use crate::core::CoreError;
use crate::federation::events::{Event, Numbered, Reason};
use crate::ids::{ChatId, NodeName, UserRef};
use crate::protocol::{self, ErrorCode};
use crate::store::{
    AttachmentRef, ChatRecord, InboxKind, MemberRecord, MessageRecord, OutboxEntry, PeerRecord,
    UpdateReason, UpdateRecord, UserChatRecord,
};

fn forbidden(message: impl Into<String>) -> CoreError {
    CoreError::reject(ErrorCode::Forbidden, message)
}

/// A home's message names a (chat, seq) that holds another message here: the
/// home reuses seqs it gave out before (it was restored from a backup). The
/// event is refused, so it becomes a dead letter at the home, not a silent
/// skip.
fn seq_taken(origin: &NodeName, chat_id: ChatId, seq: u64) -> CoreError {
    tracing::warn!(home = %origin, chat = %chat_id, seq, "a chat's home sent another message with a seq this node holds (was the home restored from a backup?): refused");
    crate::metrics::METRICS.federation_seq_conflicts.inc();
    CoreError::reject(
        ErrorCode::BadRequest,
        format!(
            "chat {chat_id} already holds another message at seq {seq} here (was its home restored from a backup?)"
        ),
    )
}

pub(super) fn reason_of(reason: UpdateReason) -> Reason {
    match reason {
        UpdateReason::Created => Reason::Created,
        UpdateReason::Added => Reason::Added,
        UpdateReason::Removed => Reason::Removed,
        UpdateReason::Renamed => Reason::Renamed,
        UpdateReason::Deleted => Reason::Deleted,
    }
}

fn stored_reason(reason: Reason) -> UpdateReason {
    match reason {
        Reason::Created => UpdateReason::Created,
        Reason::Added => UpdateReason::Added,
        Reason::Removed => UpdateReason::Removed,
        Reason::Renamed => UpdateReason::Renamed,
        Reason::Deleted => UpdateReason::Deleted,
    }
}

impl Writer {
    /// Queues `event` in the outbox of every peer node among `members`.
    pub(super) fn federate(
        &mut self,
        b: &mut Batch<'_, '_>,
        members: &[Member],
        event: &Event,
    ) -> Result<(), CoreError> {
        let mut nodes: Vec<&NodeName> = members.iter().filter_map(|m| m.remote.as_ref()).collect();
        if nodes.is_empty() {
            return Ok(());
        }
        nodes.sort();
        nodes.dedup();
        let entry = OutboxEntry {
            queued_at: b.now,
            event: serde_json::to_value(event).map_err(CoreError::Encode)?,
        };
        for node in nodes {
            if b.tx.view().peer(node)?.is_none() {
                // No longer a peer: nothing would send it (a removed peer's
                // outbox is dropped with it).
                continue;
            }
            let seq = match self.outbox_seqs.get(node) {
                Some(seq) => *seq,
                None => b.tx.view().outbox_counter(node)?,
            } + 1;
            self.outbox_seqs.insert(node.clone(), seq);
            b.tx.put_outbox(node, seq, &entry, false);
            b.tx.set_outbox_counter(node, seq);
            if !b.federated.contains(node) {
                b.federated.push(node.clone());
            }
        }
        Ok(())
    }

    /// Applies a home's events in order. Events already applied are skipped; a
    /// refused event stops the batch (those before it stay applied).
    pub(super) fn apply_events(
        &mut self,
        b: &mut Batch<'_, '_>,
        origin: &NodeName,
        events: Vec<Numbered>,
        after: Option<u64>,
    ) -> Result<Outcome, CoreError> {
        let mut applied = b.tx.view().applied(origin)?;
        if after.is_some_and(|after| applied < after) {
            return Ok(Outcome::OutOfOrder { applied });
        }
        for Numbered { seq, event } in events {
            if seq <= applied {
                continue;
            }
            let result = match event {
                Event::Chat { .. } => self.apply_chat(b, origin, event),
                Event::Message { .. } => self.apply_message(b, origin, event),
            };
            match result {
                Ok(()) => {
                    applied = seq;
                    b.tx.set_applied(origin, applied);
                    b.sync();
                }
                Err(e @ CoreError::Rejected { .. }) => {
                    return Ok(Outcome::Applied {
                        applied,
                        refused: Some(e),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Outcome::Applied {
            applied,
            refused: None,
        })
    }

    /// The participants of a chat event, checked: `name@node`, sorted, not too
    /// many, and the chat concerns this node.
    fn event_members(
        &self,
        participants: &[String],
        before: Option<&ChatState>,
    ) -> Result<Vec<Member>, CoreError> {
        if participants.len() > protocol::MAX_PARTICIPANTS {
            return Err(CoreError::reject(
                ErrorCode::TooManyParticipants,
                "too many participants",
            ));
        }
        let mut members = Vec::with_capacity(participants.len());
        for id in participants {
            if UserRef::parse(id, &self.config.node).is_none() || !id.contains('@') {
                return Err(CoreError::reject(
                    ErrorCode::BadRequest,
                    format!("participant {id:?} is not name@node"),
                ));
            }
            members.push(self.member(id.clone()));
        }
        members.sort_by(|a, b| a.id.cmp(&b.id));
        members.dedup_by(|a, b| a.id == b.id);
        let here_now = members.iter().any(|m| m.local.is_some());
        let here_before = before.is_some_and(|c| c.members.iter().any(|m| m.local.is_some()));
        if !here_now && !here_before {
            return Err(forbidden("this chat has no participants on this node"));
        }
        Ok(members)
    }

    fn apply_chat(
        &mut self,
        b: &mut Batch<'_, '_>,
        origin: &NodeName,
        event: Event,
    ) -> Result<(), CoreError> {
        let Event::Chat {
            chat_id,
            name,
            creator,
            created_at,
            participants,
            reason,
            at,
            last_seq: home_seq,
        } = event
        else {
            return Ok(());
        };
        if reason == Reason::Deleted {
            return self.apply_chat_deleted(b, origin, chat_id, at);
        }
        let before = self.chat(b.tx, chat_id)?;
        let (last_seq, last_message_at, old) = match &before {
            Some(chat) if chat.record.home.as_ref() != Some(origin) => {
                return Err(forbidden("only a chat's home may send its events"));
            }
            Some(chat) => (
                chat.record.last_seq,
                chat.record.last_message_at,
                chat.members.clone(),
            ),
            None if !creator.ends_with(&format!("@{origin}")) => {
                return Err(forbidden("a chat's home is its creator's node"));
            }
            None => (0, None, Arc::default()),
        };
        // History before this node joined is not mirrored, and not unread.
        let last_seq = last_seq.max(home_seq);
        let before = self.chats.get(&chat_id);
        let members = self.event_members(&participants, before)?;
        let record = ChatRecord {
            name: name.clone(),
            creator,
            created_at,
            last_seq,
            last_message_at,
            home: Some(origin.clone()),
        };
        b.tx.put_chat(chat_id, &record);
        let mut recipients: Vec<Member> = Vec::new();
        for gone in old.iter().filter(|m| !members.iter().any(|n| n.id == m.id)) {
            b.tx.delete_member(chat_id, &gone.id);
            if let Some(local) = &gone.local {
                b.tx.delete_user_chat(local, chat_id);
                recipients.push(gone.clone());
            }
        }
        for new in members.iter().filter(|m| !old.iter().any(|o| o.id == m.id)) {
            b.tx.put_member(chat_id, &new.id, &MemberRecord { joined_at: at });
            if let Some(local) = &new.local {
                let joined = UserChatRecord {
                    joined_at: at,
                    read_seq: last_seq,
                };
                b.tx.put_user_chat(local, chat_id, &joined);
            }
        }
        recipients.extend(members.iter().filter(|m| m.local.is_some()).cloned());
        self.cache_chat(chat_id, record.clone(), members);
        let update = UpdateRecord {
            chat: chat_id,
            name,
            participants,
            reason: stored_reason(reason),
            at,
        };
        self.update(b, &update, &recipients, &record)
    }

    /// The home deleted a chat: so does its mirror (once; a chat already gone
    /// is left alone).
    fn apply_chat_deleted(
        &mut self,
        b: &mut Batch<'_, '_>,
        origin: &NodeName,
        chat_id: ChatId,
        at: i64,
    ) -> Result<(), CoreError> {
        let Some(chat) = self.chat(b.tx, chat_id)? else {
            return Ok(());
        };
        if chat.record.home.as_ref() != Some(origin) {
            return Err(forbidden("only a chat's home may send its events"));
        }
        let record = chat.record.clone();
        let members = chat.members.clone();
        self.remove_chat(b, chat_id, &record, &members, at)
    }

    fn cache_chat(&mut self, id: ChatId, record: ChatRecord, members: Vec<Member>) {
        self.chats.insert(
            id,
            ChatState {
                record,
                members: Arc::new(members),
            },
        );
    }

    fn apply_message(
        &mut self,
        b: &mut Batch<'_, '_>,
        origin: &NodeName,
        event: Event,
    ) -> Result<(), CoreError> {
        let Event::Message {
            chat_id,
            seq,
            message_id,
            from,
            sent_at,
            text,
            attachments,
            sender_device,
        } = event
        else {
            return Ok(());
        };
        let chat = self.chat(b.tx, chat_id)?.ok_or_else(|| {
            CoreError::reject(ErrorCode::UnknownChat, "no such chat on this node")
        })?;
        if chat.record.home.as_ref() != Some(origin) {
            return Err(forbidden("only a chat's home may send its events"));
        }
        if !chat.members.iter().any(|m| m.local.is_some()) {
            return Err(forbidden("this chat has no participants on this node"));
        }
        if !chat.has(&from) || text.len() > protocol::MAX_MESSAGE_BYTES {
            return Err(CoreError::reject(
                ErrorCode::BadRequest,
                "the sender is not a participant, or the message is too large",
            ));
        }
        if let Some(held) = b.tx.view().message(chat_id, seq)? {
            if held.id == message_id {
                // Sent again: applied once.
                return Ok(());
            }
            return Err(seq_taken(origin, chat_id, seq));
        }
        chat.record.last_seq = chat.record.last_seq.max(seq);
        chat.record.last_message_at = chat.record.last_message_at.max(Some(sent_at));
        let chat_record = chat.record.clone();
        let members = chat.members.clone();
        let record = MessageRecord {
            id: message_id,
            from: from.clone(),
            sent_at,
            text,
            attachments: attachments
                .into_iter()
                .map(|a| AttachmentRef {
                    id: a.attachment_id,
                    content_type: a.content_type,
                    size: a.size,
                    name: a.name,
                    holder: a.holder,
                })
                .collect(),
        };
        b.tx.put_chat(chat_id, &chat_record);
        b.tx.put_message(chat_id, seq, &record);
        self.message_rate.note(b.now);
        self.remember_attachments(b, Some(origin), chat_id, &record)?;
        // The sender's own node: its read position moves, the uploads it holds
        // are sent, and the sending device does not get its message back.
        let skip = match self.local_user(&from) {
            Some(sender) => {
                self.mark_sent(b, &sender, chat_id, seq)?;
                Self::mark_held(b, &from, chat_id, &self.held_here(&record), true)?;
                sender_device
                    .as_deref()
                    .and_then(crate::ids::DeviceId::parse)
            }
            None => None,
        };
        let event =
            crate::protocol::Event::NewMessage(super::render::message_view(chat_id, seq, &record));
        let kind = InboxKind::Message { chat: chat_id, seq };
        self.fan_out(b, &members, skip, kind, &event)
    }

    pub(super) fn put_peer(
        &mut self,
        b: &mut Batch<'_, '_>,
        node: &NodeName,
        record: &PeerRecord,
    ) -> Outcome {
        b.tx.put_peer(node, record);
        b.sync();
        Outcome::Done
    }

    /// Forgets a peer and its queued events; its chats stay as they are.
    pub(super) fn remove_peer(
        &mut self,
        b: &mut Batch<'_, '_>,
        node: &NodeName,
    ) -> Result<Outcome, CoreError> {
        if b.tx.view().peer(node)?.is_none() {
            return Err(CoreError::reject(ErrorCode::NotFound, "no such peer"));
        }
        b.tx.delete_peer(node);
        for dead in [false, true] {
            for (seq, _) in b.tx.view().outbox(node, 0, usize::MAX, dead)? {
                b.tx.delete_outbox(node, seq, dead);
            }
        }
        b.sync();
        Ok(Outcome::Done)
    }

    pub(super) fn outbox_done(
        &mut self,
        b: &mut Batch<'_, '_>,
        node: &NodeName,
        from: u64,
        delivered: u64,
        dead: Option<u64>,
    ) -> Result<Outcome, CoreError> {
        let upto = dead.unwrap_or(delivered).max(delivered);
        let mut moved = 0;
        let count = usize::try_from(upto.saturating_sub(from) + 1).unwrap_or(usize::MAX);
        let after = from.saturating_sub(1);
        for (seq, entry) in b.tx.view().outbox(node, after, count, false)? {
            if seq > upto {
                break;
            }
            b.tx.delete_outbox(node, seq, false);
            if seq > delivered && Some(seq) == dead {
                b.tx.put_outbox(node, seq, &entry, true);
                moved += 1;
            }
        }
        Ok(Outcome::Count(moved))
    }

    /// Dead letters go back to the end of the outbox, in their order, with new
    /// numbers (the peer expects numbers to grow).
    pub(super) fn replay_dead(
        &mut self,
        b: &mut Batch<'_, '_>,
        node: &NodeName,
    ) -> Result<Outcome, CoreError> {
        let dead = b.tx.view().outbox(node, 0, usize::MAX, true)?;
        let mut seq = match self.outbox_seqs.get(node) {
            Some(seq) => *seq,
            None => b.tx.view().outbox_counter(node)?,
        };
        for (old, mut entry) in dead.iter().cloned() {
            seq += 1;
            entry.queued_at = b.now;
            b.tx.delete_outbox(node, old, true);
            b.tx.put_outbox(node, seq, &entry, false);
        }
        self.outbox_seqs.insert(node.clone(), seq);
        b.tx.set_outbox_counter(node, seq);
        if !dead.is_empty() {
            b.federated.push(node.clone());
            b.sync();
        }
        Ok(Outcome::Count(dead.len() as u64))
    }
}
