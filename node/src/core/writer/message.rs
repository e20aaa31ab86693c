//! The writer's `sendMessage`, and the attachment records it marks as sent.

use super::chat::unknown_chat;
use super::{Actor, Batch, Outcome, Writer};
use crate::clock::rfc3339;
use crate::core::CoreError;
use crate::core::render;
use crate::federation::events::{Attachment, Event as FedEvent};
use crate::ids::{AttachmentId, ChatId, MessageId, Username};
use crate::protocol::{CommandResult, ErrorCode, Event};
use crate::store::{
    AttachmentRecord, AttachmentRef, IdemRecord, InboxKind, MessageRecord, UserChatRecord,
};

/// A send, as the writer applies it.
pub(super) struct Send {
    pub chat_id: ChatId,
    pub text: String,
    /// Checked against the media store by the core before queueing.
    pub attachments: Vec<AttachmentRef>,
    pub client_msg_id: Option<String>,
}

fn unknown_attachment(message: String) -> CoreError {
    CoreError::reject(ErrorCode::UnknownAttachment, message)
}

impl Writer {
    pub(super) fn send_message(
        &mut self,
        b: &mut Batch<'_, '_>,
        actor: &Actor,
        send: Send,
    ) -> Result<CommandResult, CoreError> {
        let user_id = actor.user_id();
        if let Some(cmid) = &send.client_msg_id
            && let Some(previous) = b.tx.view().idem(&user_id, send.chat_id, cmid)?
        {
            // A retry: the first send's answer, and nothing delivered twice.
            return Ok(CommandResult::MessageSent {
                message_id: previous.message_id.to_string(),
                seq: previous.seq,
                sent_at: rfc3339(previous.sent_at),
            });
        }
        self.chat_of(b, &user_id, send.chat_id)?;
        let records = Self::sent_attachments(b, &user_id, &send.attachments)?;
        let chat_id = send.chat_id;
        let now = b.now;
        let chat = self.chat(b.tx, chat_id)?.ok_or_else(unknown_chat)?;
        let seq = chat.record.last_seq + 1;
        chat.record.last_seq = seq;
        chat.record.last_message_at = Some(now);
        let chat_record = chat.record.clone();
        let members = chat.members.clone();
        let record = MessageRecord {
            id: MessageId::generate(),
            from: user_id.clone(),
            sent_at: now,
            text: send.text,
            attachments: send.attachments,
        };
        for (id, mut att) in records {
            att.sent = true;
            if !att.chats.contains(&chat_id) {
                att.chats.push(chat_id);
            }
            b.tx.put_attachment(id, &att);
        }
        b.tx.put_chat(chat_id, &chat_record);
        b.tx.put_message(chat_id, seq, &record);
        self.message_rate.note(b.now);
        self.remember_attachments(b, None, chat_id, &record)?;
        if let Some(ctx) = actor.device() {
            self.mark_sent(b, &ctx.user, chat_id, seq)?;
        }
        if let Some(cmid) = &send.client_msg_id {
            let idem = IdemRecord {
                chat: chat_id,
                seq,
                message_id: record.id,
                sent_at: now,
            };
            b.tx.put_idem(&user_id, cmid, &idem);
        }
        let event = Event::NewMessage(render::message_view(chat_id, seq, &record));
        let kind = InboxKind::Message { chat: chat_id, seq };
        let skip = actor.device().map(|ctx| ctx.device);
        self.fan_out(b, &members, skip, kind, &event)?;
        let sender_device = match actor {
            Actor::Remote { device, .. } => device.clone(),
            Actor::Device(_) => None,
        };
        self.federate(
            b,
            &members,
            &federated(chat_id, seq, &record, sender_device),
        )?;
        b.sync();
        Ok(CommandResult::MessageSent {
            message_id: record.id.to_string(),
            seq,
            sent_at: rfc3339(now),
        })
    }

    /// The sender has read everything up to its own message.
    pub(super) fn mark_sent(
        &mut self,
        b: &mut Batch<'_, '_>,
        user: &Username,
        chat_id: ChatId,
        seq: u64,
    ) -> Result<(), CoreError> {
        let joined_at =
            b.tx.view()
                .user_chat(user, chat_id)?
                .map_or(b.now, |r| r.joined_at);
        let read = UserChatRecord {
            joined_at,
            read_seq: seq,
        };
        b.tx.put_user_chat(user, chat_id, &read);
        Ok(())
    }

    /// The records of a send's attachments held here. The core checked each
    /// upload against the media store; here each record must still be there and
    /// the sender's (a sweep may have removed one since). Those a participating
    /// node holds (a remote user's send) were checked there.
    fn sent_attachments(
        b: &Batch<'_, '_>,
        user_id: &str,
        attachments: &[AttachmentRef],
    ) -> Result<Vec<(AttachmentId, AttachmentRecord)>, CoreError> {
        let mut records = Vec::with_capacity(attachments.len());
        for att in attachments {
            if let Some(holder) = &att.holder {
                // Checked by the sending node, which holds it.
                Self::check_held_elsewhere(b, att, holder)?;
                continue;
            }
            let id = AttachmentId::parse(&att.id)
                .ok_or_else(|| unknown_attachment("no such attachment".into()))?;
            match b.tx.view().attachment(id)? {
                Some(r) if r.uploader == user_id => records.push((id, r)),
                _ => return Err(unknown_attachment(format!("no such attachment {id}"))),
            }
        }
        Ok(records)
    }

    /// Removes an attachment record if it is unsent and older than
    /// `unsent_before`, or older than `any_before`.
    pub(super) fn drop_attachment(
        &mut self,
        b: &mut Batch<'_, '_>,
        id: AttachmentId,
        unsent_before: i64,
        any_before: i64,
    ) -> Result<Outcome, CoreError> {
        let drop = match b.tx.view().attachment(id)? {
            Some(r) if (!r.sent && r.created_at < unsent_before) || r.created_at < any_before => {
                b.tx.delete_attachment(id, &r);
                b.sync();
                true
            }
            _ => false,
        };
        Ok(Outcome::Dropped(drop))
    }

    /// Marks `uploader`'s upload `id` sealed (its copy passed the send check).
    /// Durable before the check answers: the upload object is deleted next,
    /// and a message may take the attachment (the holder of a forwarded send
    /// offers it to the chat's home, whose users download the copy).
    pub(super) fn seal_attachment(
        b: &mut Batch<'_, '_>,
        id: AttachmentId,
        uploader: &str,
    ) -> Result<Outcome, CoreError> {
        match b.tx.view().attachment(id)? {
            Some(mut r) if r.uploader == uploader => {
                if !r.sealed {
                    r.sealed = true;
                    b.tx.put_attachment(id, &r);
                    b.sync();
                }
                Ok(Outcome::Sealed(true))
            }
            _ => Ok(Outcome::Sealed(false)),
        }
    }

    /// Records an upload to come, within the uploader's pending-uploads quota.
    pub(super) fn create_attachment(
        &mut self,
        b: &mut Batch<'_, '_>,
        id: AttachmentId,
        record: &AttachmentRecord,
    ) -> Result<Outcome, CoreError> {
        let quotas = &self.config.quotas;
        let (count, bytes) =
            b.tx.view()
                .pending_uploads(&record.uploader, quotas.pending_uploads)?;
        if count >= quotas.pending_uploads {
            return Err(CoreError::reject(
                ErrorCode::QuotaExceeded,
                format!(
                    "at most {} uploads may wait to be sent; send them first",
                    quotas.pending_uploads
                ),
            ));
        }
        if bytes.saturating_add(record.size) > quotas.pending_upload_bytes {
            return Err(CoreError::reject(
                ErrorCode::QuotaExceeded,
                format!(
                    "uploads waiting to be sent may hold at most {} bytes; send them first",
                    quotas.pending_upload_bytes
                ),
            ));
        }
        b.tx.put_attachment(id, record);
        b.sync();
        Ok(Outcome::Done)
    }
}

/// A stored message as the federation event that carries it to peers.
fn federated(
    chat_id: ChatId,
    seq: u64,
    record: &MessageRecord,
    sender_device: Option<String>,
) -> FedEvent {
    FedEvent::Message {
        chat_id,
        seq,
        message_id: record.id,
        from: record.from.clone(),
        sent_at: record.sent_at,
        text: record.text.clone(),
        attachments: record
            .attachments
            .iter()
            .map(|a| Attachment {
                attachment_id: a.id.clone(),
                content_type: a.content_type.clone(),
                size: a.size,
                name: a.name.clone(),
                holder: a.holder.clone(),
            })
            .collect(),
        sender_device,
    }
}
