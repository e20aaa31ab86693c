//! The writer's admin operations: deleting users and chats, new passwords,
//! revoking invites, and removing a deleted chat's messages in bounded steps.
//!
//! Each validates (and plans from reads) before it writes: a refusal leaves
//! nothing in the group's transaction.

use super::chat::unknown_chat;
use super::{Batch, Member, Outcome, Writer};
use crate::core::CoreError;
use crate::ids::{ChatId, UserRef, Username};
use crate::protocol::ErrorCode;
use crate::store::{ChatRecord, UpdateReason, UpdateRecord};

fn unknown_user() -> CoreError {
    CoreError::reject(ErrorCode::UnknownUser, "no such user")
}

impl Writer {
    pub(super) fn reset_password(
        &mut self,
        b: &mut Batch<'_, '_>,
        name: &Username,
        password_hash: String,
    ) -> Result<Outcome, CoreError> {
        let Some(mut record) = b.tx.view().user(name)?.filter(|u| !u.deleted) else {
            return Err(unknown_user());
        };
        record.password_hash = password_hash;
        b.tx.put_user(&record);
        b.sync();
        Ok(Outcome::Done)
    }

    /// Deletes a user: its devices (and their inboxes) go, it leaves every
    /// chat whose home is this node (the others' homes were asked by the core
    /// first; their rows here go), and its record stays as a tombstone that
    /// keeps the name taken. Answers the removed devices, whose connections the
    /// core closes.
    pub(super) fn delete_user(
        &mut self,
        b: &mut Batch<'_, '_>,
        name: &Username,
    ) -> Result<Outcome, CoreError> {
        let view = b.tx.view();
        let Some(mut record) = view.user(name)?.filter(|u| !u.deleted) else {
            return Err(unknown_user());
        };
        let user_id = self.user_id(name);
        let devices = view.user_devices(name)?;
        let mut device_records = Vec::with_capacity(devices.len());
        for device in &devices {
            if let Some(r) = view.device(*device)? {
                device_records.push((*device, r));
            }
        }
        let chats: Vec<ChatId> = view.user_chats(name)?.into_iter().map(|c| c.0).collect();
        drop(view);
        // Plan before writing: chats homed here that list the user.
        let mut leave = Vec::new();
        for chat in &chats {
            let here = self
                .chat(b.tx, *chat)?
                .is_some_and(|c| c.record.home.is_none() && c.has(&user_id));
            if here {
                leave.push(*chat);
            }
        }
        for (device, r) in &device_records {
            b.tx.delete_device(*device, r)?;
        }
        self.devices.insert(name.clone(), Vec::new());
        let me = UserRef {
            name: name.clone(),
            node: self.config.node.clone(),
        };
        for chat in chats {
            if leave.contains(&chat) {
                // As if the user left: the others (and their nodes) are told.
                self.remove_participant(b, &user_id, chat, me.clone())?;
            } else {
                b.tx.delete_user_chat(name, chat);
            }
        }
        record.deleted = true;
        record.disabled = true;
        record.password_hash = String::new();
        b.tx.put_user(&record);
        self.disabled.insert(name.clone(), true);
        b.sync();
        Ok(Outcome::Devices(devices))
    }

    pub(super) fn delete_invite(
        &mut self,
        b: &mut Batch<'_, '_>,
        code: &str,
    ) -> Result<Outcome, CoreError> {
        if b.tx.view().invite(code)?.is_none() {
            return Err(CoreError::reject(ErrorCode::NotFound, "no such invite"));
        }
        b.tx.delete_invite(code);
        b.sync();
        Ok(Outcome::Done)
    }

    /// Deletes a chat whose home is this node: its participants' devices get
    /// `chatUpdate` `deleted`, the nodes of remote participants the same
    /// event, and its messages are removed in later steps (`purge_chat`).
    pub(super) fn delete_chat(
        &mut self,
        b: &mut Batch<'_, '_>,
        chat_id: ChatId,
    ) -> Result<Outcome, CoreError> {
        let chat = self.chat(b.tx, chat_id)?.ok_or_else(unknown_chat)?;
        if let Some(home) = &chat.record.home {
            return Err(CoreError::reject(
                ErrorCode::Forbidden,
                format!("this chat's home is {home}: only its home can delete it (ask its admin)"),
            ));
        }
        let record = chat.record.clone();
        let members = chat.members.clone();
        let at = b.now;
        self.remove_chat(b, chat_id, &record, &members, at)?;
        Ok(Outcome::Done)
    }

    /// Removes a chat (at its home, or a mirror on its home's word) and tells
    /// `members`.
    pub(super) fn remove_chat(
        &mut self,
        b: &mut Batch<'_, '_>,
        chat_id: ChatId,
        record: &ChatRecord,
        members: &[Member],
        at: i64,
    ) -> Result<(), CoreError> {
        for m in members {
            b.tx.delete_member(chat_id, &m.id);
            if let Some(local) = &m.local {
                b.tx.delete_user_chat(local, chat_id);
            }
        }
        b.tx.delete_chat(chat_id);
        self.chats.remove(&chat_id);
        let update = UpdateRecord {
            chat: chat_id,
            name: record.name.clone(),
            participants: Vec::new(),
            reason: UpdateReason::Deleted,
            at,
        };
        self.update(b, &update, members, record)?;
        b.sync();
        Ok(())
    }

    /// Removes up to `limit` messages of a deleted chat; the chat's deletion
    /// mark goes with the last of them. Answers how many it removed.
    pub(super) fn purge_chat(
        &mut self,
        b: &mut Batch<'_, '_>,
        chat: ChatId,
        limit: usize,
    ) -> Result<Outcome, CoreError> {
        let view = b.tx.view();
        if view.chat(chat)?.is_some() {
            return Ok(Outcome::Count(0));
        }
        let seqs = view.message_seqs(chat, limit)?;
        drop(view);
        for seq in &seqs {
            b.tx.delete_message(chat, *seq);
        }
        if seqs.len() < limit {
            b.tx.chat_purged(chat);
        }
        Ok(Outcome::Count(seqs.len() as u64))
    }
}
