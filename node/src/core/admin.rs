//! The admin's operations on the core (`/admin/v1/...`, the `natter` CLI):
//! users (show, new password, delete), devices (list, revoke), invites (list,
//! revoke), chats (list, show, delete) and the node's numbers (`stats`).
//!
//! Reads run on the blocking pool against a snapshot; every change goes
//! through the writer like a client's command, so the single-writer rules hold.
//!
//! **Boundary**: the answer types here are public because the CLI parses them
//! (docs/operations.md shows their JSON); extend them, never break them.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::writer::{Op, Outcome};
use super::{Core, CoreError, unexpected};
use crate::clock::rfc3339;
use crate::federation::events::{Action, ActionRequest};
use crate::ids::{ChatId, DeviceId, NodeName, UserRef, Username};
use crate::protocol::{ErrorCode, Operation};
use crate::store::Snapshot;

/// How many of the deepest inboxes `stats` names.
const DEEPEST: usize = 10;

/// What one admin read may scan (`[admin]` in the config file).
#[derive(Clone, Debug)]
pub struct AdminLimits {
    /// A device's pending events are counted up to this many (`device list`).
    pub inbox_count_cap: usize,
    /// `stats` reads at most this many inbox entries for the deepest inboxes.
    pub stats_inbox_scan: usize,
    /// Chats per page of `GET /admin/v1/chats`, at most.
    pub max_chat_page: usize,
}

impl Default for AdminLimits {
    fn default() -> Self {
        Self {
            inbox_count_cap: 1_000_000,
            stats_inbox_scan: 5_000_000,
            max_chat_page: 10_000,
        }
    }
}

/// Messages stored per second, in a ring of the last 60 seconds (node clock).
pub(crate) struct MessageRate {
    seconds: Mutex<[(i64, u64); 60]>,
}

impl Default for MessageRate {
    fn default() -> Self {
        Self {
            seconds: Mutex::new([(i64::MIN, 0); 60]),
        }
    }
}

impl MessageRate {
    /// One message stored at `now_ms`.
    pub(crate) fn note(&self, now_ms: i64) {
        let second = now_ms.div_euclid(1000);
        // Held for a few instructions, never across an await.
        let mut ring = self.seconds.lock().unwrap_or_else(|e| e.into_inner());
        let slot = &mut ring[second.rem_euclid(60) as usize];
        if slot.0 != second {
            *slot = (second, 0);
        }
        slot.1 += 1;
    }

    /// Messages stored in the minute up to `now_ms` (this second and the 59
    /// before it).
    fn last_minute(&self, now_ms: i64) -> u64 {
        let now = now_ms.div_euclid(1000);
        let ring = self.seconds.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter()
            .filter(|(second, _)| *second > now - 60 && *second <= now)
            .map(|(_, count)| count)
            .sum()
    }
}

/// `GET /admin/v1/users/{name}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserDetail {
    pub user_id: String,
    pub created_at: String,
    pub disabled: bool,
    /// Deleted users stay as tombstones: the name remains taken.
    pub deleted: bool,
    pub devices: usize,
    pub online_devices: usize,
    pub chats: usize,
}

/// One device in `GET /admin/v1/users/{name}/devices`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceInfo {
    pub device_id: String,
    pub name: Option<String>,
    pub created_at: String,
    pub last_active: String,
    /// Events waiting for the device's ack (counted up to
    /// `admin.inbox_count_cap`, 1,000,000 by default).
    pub inbox_depth: u64,
    /// When the oldest of them was queued, and how long ago.
    pub oldest_pending_at: Option<String>,
    pub oldest_pending_age_ms: Option<i64>,
    /// The gateway holding its connection; `None` when offline.
    pub online: Option<String>,
}

/// One invite in `GET /admin/v1/invites`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InviteInfo {
    pub code: String,
    pub uses_left: u32,
    pub created_at: String,
    pub expires_at: String,
    pub expired: bool,
}

/// One chat in `GET /admin/v1/chats`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatInfo {
    pub chat_id: String,
    pub name: Option<String>,
    /// The chat's home node when it is not this one (a mirror).
    pub home: Option<String>,
    pub participants: usize,
    pub last_seq: u64,
    pub last_message_at: Option<String>,
    pub created_at: String,
}

/// `GET /admin/v1/chats/{chat}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatDetail {
    pub chat_id: String,
    pub name: Option<String>,
    pub home: Option<String>,
    pub creator: String,
    pub created_at: String,
    pub participants: Vec<String>,
    pub last_seq: u64,
    pub last_message_at: Option<String>,
    /// Messages stored on this node (a mirror holds those since it joined).
    pub message_count: u64,
}

/// `DELETE /admin/v1/users/{name}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeletedUser {
    pub user_id: String,
    pub devices_removed: usize,
    pub chats_left: usize,
}

/// `DELETE /admin/v1/chats/{chat}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeletedChat {
    pub chat_id: String,
    pub participants: usize,
    pub messages_removed: u64,
}

/// `GET /admin/v1/stats`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    pub online_devices: usize,
    /// Users, deleted ones not counted.
    pub users: usize,
    /// Chats, mirrors of other nodes' chats included.
    pub chats: usize,
    /// Messages stored in the last minute (sent here, or mirrored), and per second.
    pub messages_last_minute: u64,
    pub messages_per_second: f64,
    /// The devices with the most events waiting, deepest first (at most 10).
    pub deepest_inboxes: Vec<InboxDepth>,
    /// False when the inbox was too large to read whole
    /// (`admin.stats_inbox_scan` entries, 5,000,000 by default).
    pub inbox_scan_complete: bool,
    /// The store's size on disk, bytes.
    pub disk_bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InboxDepth {
    pub user_id: String,
    pub device_id: String,
    pub depth: u64,
}

fn unknown_user() -> CoreError {
    CoreError::reject(ErrorCode::UnknownUser, "no such user")
}

fn parse_user(username: &str) -> Result<Username, CoreError> {
    Username::parse(username).ok_or_else(unknown_user)
}

fn parse_chat(chat: &str) -> Result<ChatId, CoreError> {
    ChatId::parse(chat).ok_or_else(|| CoreError::reject(ErrorCode::UnknownChat, "no such chat"))
}

impl Core {
    fn user_ref(&self, name: &Username) -> UserRef {
        UserRef {
            name: name.clone(),
            node: self.node().clone(),
        }
    }

    pub async fn user_detail(&self, username: &str) -> Result<UserDetail, CoreError> {
        let name = parse_user(username)?;
        let user_id = self.user_ref(&name).to_string();
        let (record, devices, chats) = self
            .read(move |view| {
                let record = view.user(&name)?.ok_or_else(unknown_user)?;
                let devices = view.user_devices(&name)?;
                Ok((record, devices, view.user_chats(&name)?.len()))
            })
            .await?;
        let presence = &self.inner.presence;
        Ok(UserDetail {
            user_id,
            created_at: rfc3339(record.created_at),
            disabled: record.disabled,
            deleted: record.deleted,
            online_devices: devices.iter().filter(|d| presence.is_online(**d)).count(),
            devices: devices.len(),
            chats,
        })
    }

    /// A new password; the user's devices stay logged in (`device revoke`).
    pub async fn reset_password(&self, username: &str, password: &str) -> Result<(), CoreError> {
        let name = parse_user(username)?;
        super::accounts::check_password(password)?;
        let password_hash = super::accounts::hash_password(password.to_owned()).await?;
        self.write(Op::ResetPassword {
            name,
            password_hash,
        })
        .await?;
        Ok(())
    }

    /// Deletes a user (see `writer/admin.rs`). The homes of its chats on
    /// other nodes are asked to remove it first; if one cannot be reached,
    /// nothing is deleted (`unavailable`: retry).
    pub async fn delete_user(&self, username: &str) -> Result<DeletedUser, CoreError> {
        let name = parse_user(username)?;
        let me = self.user_ref(&name);
        let n = name.clone();
        let (chats, remote) = self
            .read(move |view| {
                let mut remote = Vec::new();
                let chats = view.user_chats(&n)?;
                for (chat, _) in &chats {
                    if let Some(home) = view.chat(*chat)?.and_then(|c| c.home) {
                        remote.push((*chat, home));
                    }
                }
                Ok((chats.len(), remote))
            })
            .await?;
        for (chat, home) in remote {
            self.leave_remote_chat(&me, chat, home).await?;
        }
        match self.write(Op::DeleteUser { name }).await? {
            Outcome::Devices(devices) => {
                for device in &devices {
                    self.inner.presence.revoke(*device).await;
                }
                Ok(DeletedUser {
                    user_id: me.to_string(),
                    devices_removed: devices.len(),
                    chats_left: chats,
                })
            }
            other => Err(unexpected(other)),
        }
    }

    /// Asks `home` to remove `me` from its `chat`, as the user leaving would.
    async fn leave_remote_chat(
        &self,
        me: &UserRef,
        chat: ChatId,
        home: NodeName,
    ) -> Result<(), CoreError> {
        let request = ActionRequest {
            actor: me.clone(),
            action: Action::ModifyChatParticipants {
                chat_id: chat,
                user_id: me.clone(),
                operation: Operation::Remove,
            },
        };
        let answer = self
            .forward(home.clone(), format!("{}/admin", me.name), request)
            .await?;
        match answer.await.map_err(|_| CoreError::Stopped)? {
            Ok(_) => Ok(()),
            // Already out of it there.
            Err(e) if matches!(e.code(), ErrorCode::NotParticipant | ErrorCode::UnknownChat) => {
                Ok(())
            }
            Err(e) => Err(CoreError::reject(
                ErrorCode::Unavailable,
                format!(
                    "{me} could not leave chat {chat} at its home {home} ({}); nothing was deleted, retry later",
                    e.public_message()
                ),
            )),
        }
    }

    pub async fn devices(&self, username: &str) -> Result<Vec<DeviceInfo>, CoreError> {
        let name = parse_user(username)?;
        let now = self.inner.clock.now_ms();
        let cap = self.inner.config.admin.inbox_count_cap;
        let mut devices = self
            .read(move |view| {
                view.user(&name)?.ok_or_else(unknown_user)?;
                let mut out = Vec::new();
                for device in view.user_devices(&name)? {
                    if let Some(info) = device_info(view, device, now, cap)? {
                        out.push(info);
                    }
                }
                Ok(out)
            })
            .await?;
        for info in &mut devices {
            if let Some(device) = DeviceId::parse(&info.device_id) {
                info.online = self
                    .inner
                    .presence
                    .gateway_of(device)
                    .map(|g| g.to_string());
            }
        }
        Ok(devices)
    }

    /// Logs a device of `username` out: its token stops working, its inbox
    /// goes, and its connection closes (4401) wherever it is.
    pub async fn revoke_device(&self, username: &str, device: &str) -> Result<(), CoreError> {
        let name = parse_user(username)?;
        let unknown = || CoreError::reject(ErrorCode::NotFound, "no such device of that user");
        let device = DeviceId::parse(device).ok_or_else(unknown)?;
        let owner = self
            .read(move |view| Ok(view.device(device)?.map(|d| d.user)))
            .await?;
        if owner.as_ref() != Some(&name) {
            return Err(unknown());
        }
        self.write(Op::DeleteDevice { device }).await?;
        self.inner.presence.revoke(device).await;
        Ok(())
    }

    pub async fn invites(&self) -> Result<Vec<InviteInfo>, CoreError> {
        let now = self.inner.clock.now_ms();
        self.read(move |view| {
            Ok(view
                .invites()?
                .into_iter()
                .map(|(code, r)| InviteInfo {
                    code,
                    uses_left: r.uses_left,
                    created_at: rfc3339(r.created_at),
                    expires_at: rfc3339(r.expires_at),
                    expired: r.expires_at <= now,
                })
                .collect())
        })
        .await
    }

    pub async fn revoke_invite(&self, code: &str) -> Result<(), CoreError> {
        if code.is_empty() || code.len() > 128 {
            return Err(CoreError::reject(ErrorCode::NotFound, "no such invite"));
        }
        self.write(Op::DeleteInvite {
            code: code.to_owned(),
        })
        .await?;
        Ok(())
    }

    /// Chats in id order after `after` (at most `limit`), or those of one
    /// user; and the id to pass as `after` for the next page, if any.
    pub async fn chats(
        &self,
        user: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<ChatInfo>, Option<String>), CoreError> {
        let user = user.map(parse_user).transpose()?;
        let after = after.map(parse_chat).transpose()?;
        let limit = limit.clamp(1, self.inner.config.admin.max_chat_page);
        self.read(move |view| {
            let (ids, more) = match &user {
                Some(name) => {
                    view.user(name)?.ok_or_else(unknown_user)?;
                    let ids: Vec<ChatId> =
                        view.user_chats(name)?.into_iter().map(|c| c.0).collect();
                    (ids, false)
                }
                None => {
                    let page = view.chats_after(after, limit + 1)?;
                    let more = page.len() > limit;
                    (page.into_iter().take(limit).map(|c| c.0).collect(), more)
                }
            };
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let Some(chat) = view.chat(id)? else { continue };
                out.push(ChatInfo {
                    chat_id: id.to_string(),
                    name: chat.name,
                    home: chat.home.map(|h| h.to_string()),
                    participants: view.members(id)?.len(),
                    last_seq: chat.last_seq,
                    last_message_at: chat.last_message_at.map(rfc3339),
                    created_at: rfc3339(chat.created_at),
                });
            }
            let next = more
                .then(|| out.last().map(|c| c.chat_id.clone()))
                .flatten();
            Ok((out, next))
        })
        .await
    }

    pub async fn chat_detail(&self, chat: &str) -> Result<ChatDetail, CoreError> {
        let id = parse_chat(chat)?;
        self.read(move |view| {
            let chat = view
                .chat(id)?
                .ok_or_else(|| CoreError::reject(ErrorCode::UnknownChat, "no such chat"))?;
            Ok(ChatDetail {
                chat_id: id.to_string(),
                name: chat.name,
                home: chat.home.map(|h| h.to_string()),
                creator: chat.creator,
                created_at: rfc3339(chat.created_at),
                participants: view.members(id)?,
                last_seq: chat.last_seq,
                last_message_at: chat.last_message_at.map(rfc3339),
                message_count: view.message_count(id)?,
            })
        })
        .await
    }

    /// Deletes a chat whose home is this node; one homed on another node is
    /// refused (`forbidden`, naming the home). Its messages are removed in
    /// bounded steps before this answers.
    pub async fn delete_chat(&self, chat: &str) -> Result<DeletedChat, CoreError> {
        let detail = self.chat_detail(chat).await?;
        let id = parse_chat(chat)?;
        self.write(Op::DeleteChat { chat: id }).await?;
        let messages_removed = self.purge_deleted_chats().await?;
        Ok(DeletedChat {
            chat_id: detail.chat_id,
            participants: detail.participants.len(),
            messages_removed,
        })
    }

    /// Removes the messages of every deleted chat, `retention.sweep_step_rows`
    /// per commit. Called after a deletion and by each sweep (which finishes
    /// what a restart interrupted, and mirrors deleted by their home).
    pub(super) async fn purge_deleted_chats(&self) -> Result<u64, CoreError> {
        let chats = self.read(|view| Ok(view.deleted_chats()?)).await?;
        let limit = self.inner.config.sweep_step_rows.max(1);
        let mut removed = 0;
        for chat in chats {
            loop {
                match self.write(Op::PurgeChat { chat, limit }).await? {
                    Outcome::Count(n) => {
                        removed += n;
                        if n < limit as u64 {
                            break;
                        }
                    }
                    other => return Err(unexpected(other)),
                }
            }
        }
        Ok(removed)
    }

    pub async fn stats(&self) -> Result<NodeStats, CoreError> {
        let now = self.inner.clock.now_ms();
        let messages_last_minute = self.inner.message_rate.last_minute(now);
        let node = self.node().clone();
        let scan = self.inner.config.admin.stats_inbox_scan;
        let (users, chats, deepest_inboxes, inbox_scan_complete) = self
            .read(move |view| {
                let users = view.users()?.iter().filter(|u| !u.deleted).count();
                let mut chats = 0;
                let mut after = None;
                loop {
                    let page = view.chats_after(after, 1024)?;
                    chats += page.len();
                    match page.last() {
                        Some((id, _)) if page.len() == 1024 => after = Some(*id),
                        _ => break,
                    }
                }
                let (mut depths, complete) = view.inbox_depths(scan)?;
                depths.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                let mut deepest = Vec::new();
                for (device, depth) in depths.into_iter().take(DEEPEST) {
                    let user_id = match view.device(device)? {
                        Some(d) => UserRef {
                            name: d.user,
                            node: node.clone(),
                        }
                        .to_string(),
                        None => String::new(),
                    };
                    deepest.push(InboxDepth {
                        user_id,
                        device_id: device.to_string(),
                        depth,
                    });
                }
                Ok((users, chats, deepest, complete))
            })
            .await?;
        Ok(NodeStats {
            online_devices: self.online(),
            users,
            chats,
            messages_last_minute,
            messages_per_second: messages_last_minute as f64 / 60.0,
            deepest_inboxes,
            inbox_scan_complete,
            disk_bytes: self.inner.store.stats().disk_bytes,
        })
    }
}

fn device_info(
    view: &Snapshot,
    device: DeviceId,
    now: i64,
    cap: usize,
) -> Result<Option<DeviceInfo>, CoreError> {
    let Some(record) = view.device(device)? else {
        return Ok(None);
    };
    let (depth, oldest) = view.inbox_depth(device, cap)?;
    Ok(Some(DeviceInfo {
        device_id: device.to_string(),
        name: record.name,
        created_at: rfc3339(record.created_at),
        last_active: rfc3339(record.last_active),
        inbox_depth: depth,
        oldest_pending_at: oldest.map(rfc3339),
        oldest_pending_age_ms: oldest.map(|at| now.saturating_sub(at).max(0)),
        online: None,
    }))
}
