//! The writer's read-position and inbox commands: `markRead`, `ack`, `sync`.

use super::{Batch, Member, Writer};
use crate::core::{CoreError, DeviceCtx, render};
use crate::ids::{ChatId, DeliveryId};
use crate::protocol::CommandResult;
use crate::store::InboxKind;

impl Writer {
    pub(super) fn mark_read(
        &mut self,
        b: &mut Batch<'_, '_>,
        ctx: &DeviceCtx,
        chat_id: ChatId,
        seq: u64,
    ) -> Result<CommandResult, CoreError> {
        // Read positions are this node's, for mirrored chats too.
        let chat = self
            .chat(b.tx, chat_id)?
            .ok_or_else(super::chat::unknown_chat)?;
        if !chat.has(&ctx.user_id) {
            return Err(super::chat::not_participant());
        }
        let last_seq = chat.record.last_seq;
        if let Some(mut record) = b.tx.view().user_chat(&ctx.user, chat_id)? {
            let read = seq.min(last_seq);
            if read > record.read_seq {
                record.read_seq = read;
                b.tx.put_user_chat(&ctx.user, chat_id, &record);
                // The user's other devices learn it through their inboxes; the
                // position is the user's own, so nothing goes to peers.
                let me = [Member {
                    id: ctx.user_id.clone(),
                    local: Some(ctx.user.clone()),
                    remote: None,
                }];
                let kind = InboxKind::Read {
                    chat: chat_id,
                    seq: read,
                };
                let event = render::read_event(chat_id, read);
                self.fan_out(b, &me, Some(ctx.device), kind, &event)?;
            }
        }
        Ok(CommandResult::Empty {})
    }

    /// Acknowledged deliveries leave the device's inbox.
    pub(super) fn ack(
        b: &mut Batch<'_, '_>,
        ctx: &DeviceCtx,
        delivery_ids: Vec<DeliveryId>,
    ) -> CommandResult {
        for id in delivery_ids {
            b.tx.delete_inbox(ctx.device, id.0);
        }
        CommandResult::Empty {}
    }

    /// The newest delivery id in the device's inbox once everything queued
    /// before this command is committed.
    pub(super) fn sync(b: &mut Batch<'_, '_>, ctx: &DeviceCtx) -> Result<CommandResult, CoreError> {
        Ok(CommandResult::Synced {
            up_to: b.tx.view().inbox_last(ctx.device)?.unwrap_or(0).to_string(),
        })
    }
}
