//! The writer's bookkeeping of attachments held on another node than the one
//! storing a message (docs/federation.md, "Remote media"):
//! - at a chat's home, attachments a participating node holds (its user sent
//!   them): the id must not be one this node knows otherwise, and the home
//!   remembers which node to ask for a URL;
//! - at a participating node, attachments of mirrored messages: which node to
//!   ask (the home, which asks the holder when it is another node);
//! - at the holder, its own user's uploads that a message sent through the
//!   home carries: marked sent, with the chat, exactly like a local send.

use super::{Batch, Outcome, Writer};
use crate::core::CoreError;
use crate::ids::{AttachmentId, ChatId, NodeName};
use crate::protocol::ErrorCode;
use crate::store::{AttachmentRef, MessageRecord, RemoteAttachment};

fn unknown_attachment(id: &str) -> CoreError {
    CoreError::reject(
        ErrorCode::UnknownAttachment,
        format!("no such attachment {id}"),
    )
}

impl Writer {
    /// At the home: an attachment a participating node declares it holds. Its
    /// id must be new here or already known as held by that same node (an id
    /// of this node's own uploads, or of another holder's, is refused).
    pub(super) fn check_held_elsewhere(
        b: &Batch<'_, '_>,
        att: &AttachmentRef,
        holder: &NodeName,
    ) -> Result<(), CoreError> {
        let id = AttachmentId::parse(&att.id).ok_or_else(|| unknown_attachment(&att.id))?;
        let view = b.tx.view();
        let clash = view.attachment(id)?.is_some()
            || view
                .remote_attachment(id)?
                .is_some_and(|known| &known.home != holder);
        if clash {
            return Err(unknown_attachment(&att.id));
        }
        Ok(())
    }

    /// Remembers, for each attachment of `record` that is not held here, the
    /// node to ask for a download URL and the chat it was sent in: its holder
    /// when this node is the chat's home (`ask_home` is `None`), else the home
    /// (which asks the holder itself when another node holds it).
    pub(super) fn remember_attachments(
        &self,
        b: &mut Batch<'_, '_>,
        ask_home: Option<&NodeName>,
        chat: ChatId,
        record: &MessageRecord,
    ) -> Result<(), CoreError> {
        for att in &record.attachments {
            if att.holder.as_ref() == Some(&self.config.node) {
                continue;
            }
            let Some(ask) = ask_home.or(att.holder.as_ref()) else {
                continue;
            };
            let Some(id) = AttachmentId::parse(&att.id) else {
                continue;
            };
            let mut known =
                b.tx.view()
                    .remote_attachment(id)?
                    .unwrap_or(RemoteAttachment {
                        home: ask.clone(),
                        chats: Vec::new(),
                    });
            if known.home == *ask && !known.chats.contains(&chat) {
                known.chats.push(chat);
                b.tx.put_remote_attachment(id, &known);
            }
        }
        Ok(())
    }

    /// At the holder: uploads of `from` (a user of this node) in a send to
    /// the home of `chat`. Offered (`sent` false, before the send is
    /// forwarded): that home may ask for their URL. Sent (the home accepted
    /// the message, or its event for it is applied): sent in `chat`, exactly
    /// like a local send, so they are neither swept as unsent nor refused to
    /// the chat's participants. Idempotent; an id that is not `from`'s upload
    /// (or no longer here) is left alone.
    pub(super) fn mark_held(
        b: &mut Batch<'_, '_>,
        from: &str,
        chat: ChatId,
        ids: &[AttachmentId],
        sent: bool,
    ) -> Result<Outcome, CoreError> {
        for id in ids {
            let Some(mut record) = b.tx.view().attachment(*id)? else {
                tracing::warn!(%id, %chat, "a message carries an upload this node no longer has");
                continue;
            };
            if record.uploader != from {
                tracing::warn!(%id, %chat, from, "a message carries another user's upload; not marked");
                continue;
            }
            let before = (record.sent, record.chats.len(), record.offered.len());
            if sent {
                record.sent = true;
                record.offered.retain(|c| *c != chat);
                if !record.chats.contains(&chat) {
                    record.chats.push(chat);
                }
            } else if !record.chats.contains(&chat) && !record.offered.contains(&chat) {
                record.offered.push(chat);
            }
            if before != (record.sent, record.chats.len(), record.offered.len()) {
                b.tx.put_attachment(*id, &record);
                if sent {
                    b.sync();
                }
            }
        }
        Ok(Outcome::Done)
    }

    /// The ids of `record`'s attachments this node holds.
    pub(super) fn held_here(&self, record: &MessageRecord) -> Vec<AttachmentId> {
        record
            .attachments
            .iter()
            .filter(|a| a.holder.as_ref() == Some(&self.config.node))
            .filter_map(|a| AttachmentId::parse(&a.id))
            .collect()
    }
}
