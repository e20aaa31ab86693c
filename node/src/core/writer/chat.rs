//! The writer's chat commands: `createChat`, `modifyChatParticipants` (add and
//! remove) and `renameChat`. Each validates before it writes.

use std::sync::Arc;

use super::{Batch, ChatState, Member, Writer};
use crate::core::{CoreError, DeviceCtx};
use crate::ids::{ChatId, UserRef};
use crate::protocol::{self, CommandResult, ErrorCode};
use crate::store::{ChatRecord, MemberRecord, UpdateReason, UpdateRecord, UserChatRecord};

pub(super) fn unknown_chat() -> CoreError {
    CoreError::reject(ErrorCode::UnknownChat, "no such chat")
}

pub(super) fn not_participant() -> CoreError {
    CoreError::reject(
        ErrorCode::NotParticipant,
        "you are not a participant of this chat",
    )
}

fn too_many(message: String) -> CoreError {
    CoreError::reject(ErrorCode::TooManyParticipants, message)
}

impl Writer {
    /// A chat changed: its update is stored and sent to `recipients` (and their
    /// peers), and the commit is made durable before anyone is answered.
    fn changed(
        &mut self,
        b: &mut Batch<'_, '_>,
        record: &ChatRecord,
        chat: ChatId,
        participants: Vec<String>,
        reason: UpdateReason,
        recipients: &[Member],
    ) -> Result<(), CoreError> {
        let update = UpdateRecord {
            chat,
            name: record.name.clone(),
            participants,
            reason,
            at: b.now,
        };
        self.update(b, &update, recipients, record)?;
        b.sync();
        Ok(())
    }

    /// The cached state of a chat whose home is this node, if `user_id` is one
    /// of its participants. (Commands of local users on a mirrored chat go to
    /// its home; the core forwards them before they could reach the writer. A
    /// peer's action for a chat whose home is not this node is refused.)
    pub(super) fn chat_of(
        &mut self,
        b: &Batch<'_, '_>,
        user_id: &str,
        chat_id: ChatId,
    ) -> Result<&mut ChatState, CoreError> {
        let chat = self.chat(b.tx, chat_id)?.ok_or_else(unknown_chat)?;
        if !chat.has(user_id) {
            return Err(not_participant());
        }
        // A peer's action for a chat homed elsewhere, or a local command whose
        // home stopped being a peer: refused, never a fault (a fault would
        // abort the whole commit group).
        if let Some(home) = &chat.record.home {
            return Err(CoreError::reject(
                ErrorCode::Forbidden,
                format!("this node is not the home of this chat ({home} is)"),
            ));
        }
        Ok(chat)
    }

    /// Whether `user` can be a participant: a user of this node, or of a peer.
    fn can_join(&self, b: &Batch<'_, '_>, user: &UserRef) -> Result<(), CoreError> {
        if user.node == self.config.node {
            if b.tx.view().user(&user.name)?.is_none_or(|u| u.deleted) {
                return Err(CoreError::reject(
                    ErrorCode::UnknownUser,
                    format!("no such user {user}"),
                ));
            }
        } else if b.tx.view().peer(&user.node)?.is_none() {
            return Err(CoreError::reject(
                ErrorCode::UnknownUser,
                format!("{user}: federation with {} is not set up", user.node),
            ));
        }
        Ok(())
    }

    /// Whether a local user may take part in one more chat (the chats quota).
    fn below_chat_quota(&self, b: &Batch<'_, '_>, user: &UserRef) -> Result<(), CoreError> {
        let quota = self.config.quotas.chats;
        if user.node == self.config.node && b.tx.view().user_chat_count(&user.name, quota)? >= quota
        {
            return Err(CoreError::reject(
                ErrorCode::QuotaExceeded,
                format!("{user} already takes part in {quota} chats, the most allowed"),
            ));
        }
        Ok(())
    }

    /// The creator and the participants, deduplicated and sorted; every one a
    /// user of this node.
    fn new_chat_members(
        &self,
        b: &Batch<'_, '_>,
        ctx: &DeviceCtx,
        participants: Vec<UserRef>,
    ) -> Result<Vec<String>, CoreError> {
        let creator = UserRef {
            name: ctx.user.clone(),
            node: self.config.node.clone(),
        };
        self.below_chat_quota(b, &creator)?;
        let mut ids = vec![ctx.user_id.clone()];
        for p in participants {
            let id = p.to_string();
            if ids.contains(&id) {
                continue;
            }
            self.can_join(b, &p)?;
            self.below_chat_quota(b, &p)?;
            ids.push(id);
        }
        if ids.len() > protocol::MAX_PARTICIPANTS {
            return Err(too_many(format!(
                "a chat has at most {} participants, the creator included",
                protocol::MAX_PARTICIPANTS
            )));
        }
        ids.sort();
        Ok(ids)
    }

    pub(super) fn create_chat(
        &mut self,
        b: &mut Batch<'_, '_>,
        ctx: &DeviceCtx,
        participants: Vec<UserRef>,
        name: Option<String>,
    ) -> Result<CommandResult, CoreError> {
        let ids = self.new_chat_members(b, ctx, participants)?;
        let chat_id = ChatId::generate();
        let record = ChatRecord {
            name: name.clone(),
            creator: ctx.user_id.clone(),
            created_at: b.now,
            last_seq: 0,
            last_message_at: None,
            home: None,
        };
        b.tx.put_chat(chat_id, &record);
        let members: Vec<Member> = ids.iter().map(|id| self.member(id.clone())).collect();
        for m in &members {
            b.tx.put_member(chat_id, &m.id, &MemberRecord { joined_at: b.now });
            if let Some(local) = &m.local {
                let joined = UserChatRecord {
                    joined_at: b.now,
                    read_seq: 0,
                };
                b.tx.put_user_chat(local, chat_id, &joined);
            }
        }
        self.chats.insert(
            chat_id,
            ChatState {
                record: record.clone(),
                members: Arc::new(members.clone()),
            },
        );
        self.changed(b, &record, chat_id, ids, UpdateReason::Created, &members)?;
        Ok(CommandResult::ChatCreated {
            chat_id: chat_id.to_string(),
        })
    }

    pub(super) fn add_participant(
        &mut self,
        b: &mut Batch<'_, '_>,
        actor: &str,
        chat_id: ChatId,
        user: UserRef,
    ) -> Result<CommandResult, CoreError> {
        let target = user.to_string();
        let now = b.now;
        let new_member = self.member(target.clone());
        let chat = self.chat_of(b, actor, chat_id)?;
        if chat.has(&target) {
            return Ok(CommandResult::Participants {
                participants: chat.member_ids(),
            });
        }
        self.can_join(b, &user)?;
        self.below_chat_quota(b, &user)?;
        let chat = self.chat_of(b, actor, chat_id)?;
        if chat.members.len() >= protocol::MAX_PARTICIPANTS {
            return Err(too_many(format!(
                "a chat has at most {} participants",
                protocol::MAX_PARTICIPANTS
            )));
        }
        let last_seq = chat.record.last_seq;
        let members = Arc::make_mut(&mut chat.members);
        let at = members.partition_point(|m| m.id < target);
        members.insert(at, new_member.clone());
        let members = chat.members.clone();
        let ids = chat.member_ids();
        let record = chat.record.clone();
        b.tx.put_member(chat_id, &target, &MemberRecord { joined_at: now });
        // History is readable, but not unread, for someone added later.
        if let Some(local) = &new_member.local {
            let joined = UserChatRecord {
                joined_at: now,
                read_seq: last_seq,
            };
            b.tx.put_user_chat(local, chat_id, &joined);
        }
        self.changed(
            b,
            &record,
            chat_id,
            ids.clone(),
            UpdateReason::Added,
            &members,
        )?;
        Ok(CommandResult::Participants { participants: ids })
    }

    pub(super) fn remove_participant(
        &mut self,
        b: &mut Batch<'_, '_>,
        actor: &str,
        chat_id: ChatId,
        user: UserRef,
    ) -> Result<CommandResult, CoreError> {
        let local = user.node == self.config.node;
        let target = user.to_string();
        let chat = self.chat_of(b, actor, chat_id)?;
        if !chat.has(&target) {
            return Err(CoreError::reject(
                ErrorCode::NotParticipant,
                format!("{target} is not a participant of this chat"),
            ));
        }
        if target != actor && chat.record.creator != actor {
            return Err(CoreError::reject(
                ErrorCode::Forbidden,
                "only the chat's creator may remove others",
            ));
        }
        let removed = chat.members.iter().find(|m| m.id == target).cloned();
        Arc::make_mut(&mut chat.members).retain(|m| m.id != target);
        let ids = chat.member_ids();
        // The removed user gets this last update, then nothing more.
        let mut recipients = (*chat.members).clone();
        recipients.extend(removed);
        let record = chat.record.clone();
        b.tx.delete_member(chat_id, &target);
        if local {
            b.tx.delete_user_chat(&user.name, chat_id);
        }
        self.changed(
            b,
            &record,
            chat_id,
            ids.clone(),
            UpdateReason::Removed,
            &recipients,
        )?;
        Ok(CommandResult::Participants { participants: ids })
    }

    pub(super) fn rename_chat(
        &mut self,
        b: &mut Batch<'_, '_>,
        actor: &str,
        chat_id: ChatId,
        name: Option<String>,
    ) -> Result<CommandResult, CoreError> {
        let chat = self.chat_of(b, actor, chat_id)?;
        if chat.record.name == name {
            return Ok(CommandResult::Empty {});
        }
        chat.record.name = name.clone();
        let record = chat.record.clone();
        let members = chat.members.clone();
        let ids = chat.member_ids();
        b.tx.put_chat(chat_id, &record);
        self.changed(b, &record, chat_id, ids, UpdateReason::Renamed, &members)?;
        Ok(CommandResult::Empty {})
    }
}
