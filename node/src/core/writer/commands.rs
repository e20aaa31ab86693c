//! The writer's client commands: chats, messages, participants, read positions,
//! acks. Each validates before it writes (see the module invariant).

use std::sync::Arc;

use super::{ChatState, Delivery, Member, Writer};
use crate::clock::rfc3339;
use crate::core::render;
use crate::core::{CoreError, DeviceCtx};
use crate::ids::{AttachmentId, ChatId, DeviceId, MessageId};
use crate::protocol::{self, Command, CommandResult, ErrorCode, Event, Operation, UpdateReason};
use crate::store::{
    AttachmentRef, ChatRecord, Durability, IdemRecord, InboxKind, MemberRecord, MessageRecord, Tx,
    UpdateRecord, UserChatRecord,
};

impl Writer {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn command(
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
}
