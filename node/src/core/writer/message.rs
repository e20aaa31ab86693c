//! The writer's `sendMessage`, and the attachment records it marks as sent.

use super::chat::unknown_chat;
use super::{Batch, Outcome, Writer};
use crate::clock::rfc3339;
use crate::core::render;
use crate::core::{CoreError, DeviceCtx};
use crate::ids::{AttachmentId, ChatId, MessageId};
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
        ctx: &DeviceCtx,
        send: Send,
    ) -> Result<CommandResult, CoreError> {
        if let Some(cmid) = &send.client_msg_id
            && let Some(previous) = b.tx.view().idem(&ctx.user, cmid)?
        {
            // A retry: the first send's answer, and nothing delivered twice.
            return Ok(CommandResult::MessageSent {
                message_id: previous.message_id.to_string(),
                seq: previous.seq,
                sent_at: rfc3339(previous.sent_at),
            });
        }
        self.chat_of(b, ctx, send.chat_id)?;
        let records = Self::sent_attachments(b, ctx, &send.attachments)?;
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
            from: ctx.user_id.clone(),
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
        let joined_at =
            b.tx.view()
                .user_chat(&ctx.user, chat_id)?
                .map_or(now, |r| r.joined_at);
        let read = UserChatRecord {
            joined_at,
            read_seq: seq,
        };
        b.tx.put_user_chat(&ctx.user, chat_id, &read);
        if let Some(cmid) = &send.client_msg_id {
            let idem = IdemRecord {
                chat: chat_id,
                seq,
                message_id: record.id,
                sent_at: now,
            };
            b.tx.put_idem(&ctx.user, cmid, &idem);
        }
        let event = Event::NewMessage(render::message_view(chat_id, seq, &record));
        let kind = InboxKind::Message { chat: chat_id, seq };
        self.fan_out(b, &members, Some(ctx.device), kind, &event)?;
        b.sync();
        Ok(CommandResult::MessageSent {
            message_id: record.id.to_string(),
            seq,
            sent_at: rfc3339(now),
        })
    }

    /// The records of a send's attachments. The core checked each upload against
    /// the media store; here each record must still be there and the sender's (a
    /// sweep may have removed one since).
    fn sent_attachments(
        b: &Batch<'_, '_>,
        ctx: &DeviceCtx,
        attachments: &[AttachmentRef],
    ) -> Result<Vec<(AttachmentId, AttachmentRecord)>, CoreError> {
        let mut records = Vec::with_capacity(attachments.len());
        for att in attachments {
            let id = AttachmentId::parse(&att.id)
                .ok_or_else(|| unknown_attachment("no such attachment".into()))?;
            match b.tx.view().attachment(id)? {
                Some(r) if r.uploader == ctx.user_id => records.push((id, r)),
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
            Some(r) => (!r.sent && r.created_at < unsent_before) || r.created_at < any_before,
            None => false,
        };
        if drop {
            b.tx.delete_attachment(id);
            b.sync();
        }
        Ok(Outcome::Dropped(drop))
    }
}
