//! `natter chat` and `natter stats`: the chats on this node
//! (`/admin/v1/chats...`) and the node's numbers (`/admin/v1/stats`).

use clap::Subcommand;
use natter::core::{ChatDetail, DeletedChat, NodeStats};
use natter::gateway::admin::ChatList;
use reqwest::Method;
use serde_json::Value;

use crate::table::{fields, or_dash, table};
use crate::users::segment;
use crate::{Admin, parse};

#[derive(Debug, Subcommand)]
pub(crate) enum ChatCommand {
    /// Chats (all, or one user's), with participants and last activity.
    List {
        /// Only the chats this user takes part in.
        #[arg(long)]
        user: Option<String>,
        /// The page after this chat id (the `nextAfter` of the previous page).
        #[arg(long)]
        after: Option<String>,
        /// Chats per page (at most 10000).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10000))]
        limit: u32,
    },
    /// A chat: name, home, participants, last seq, message count.
    Show { chat: String },
    /// Delete a chat whose home is this node: participants get `chatUpdate`
    /// `deleted`, other nodes delete their copies, its messages are removed.
    Delete { chat: String },
}

/// `natter chat ...`: the node's answer and its text.
pub(crate) async fn chat(admin: &Admin, command: &ChatCommand) -> anyhow::Result<(Value, String)> {
    Ok(match command {
        ChatCommand::List { user, after, limit } => {
            let mut query = format!("/chats?limit={limit}");
            if let Some(user) = user {
                query.push_str(&format!("&user={}", segment(user)));
            }
            if let Some(after) = after {
                query.push_str(&format!("&after={}", segment(after)));
            }
            let v = admin.call(Method::GET, &query, None).await?;
            let list: ChatList = parse(&v)?;
            let rows: Vec<Vec<String>> = list
                .chats
                .iter()
                .map(|c| {
                    vec![
                        c.chat_id.clone(),
                        or_dash(c.name.as_ref()),
                        c.home.clone().unwrap_or_else(|| "here".to_owned()),
                        c.participants.to_string(),
                        c.last_seq.to_string(),
                        or_dash(c.last_message_at.as_ref()),
                    ]
                })
                .collect();
            let header = [
                "CHAT",
                "NAME",
                "HOME",
                "PARTICIPANTS",
                "LAST SEQ",
                "LAST MESSAGE",
            ];
            let mut text = table(&header, &rows, &[3, 4]);
            if let Some(next) = &list.next_after {
                text.push_str(&format!("\n(more: --after {next})"));
            }
            (v, text)
        }
        ChatCommand::Show { chat } => {
            let v = admin
                .call(Method::GET, &format!("/chats/{}", segment(chat)), None)
                .await?;
            let c: ChatDetail = parse(&v)?;
            let mut text = fields(&[
                ("chat", c.chat_id),
                ("name", or_dash(c.name)),
                ("home", c.home.unwrap_or_else(|| "this node".to_owned())),
                ("creator", c.creator),
                ("created", c.created_at),
                ("last seq", c.last_seq.to_string()),
                ("last message", or_dash(c.last_message_at)),
                ("messages", c.message_count.to_string()),
                ("participants", c.participants.len().to_string()),
            ]);
            for p in &c.participants {
                text.push_str(&format!("\n  {p}"));
            }
            (v, text)
        }
        ChatCommand::Delete { chat } => {
            let v = admin
                .call(Method::DELETE, &format!("/chats/{}", segment(chat)), None)
                .await?;
            let d: DeletedChat = parse(&v)?;
            let text = format!(
                "deleted chat {}: {} participant(s) told, {} message(s) removed",
                d.chat_id, d.participants, d.messages_removed
            );
            (v, text)
        }
    })
}

/// `natter stats`.
pub(crate) async fn stats(admin: &Admin) -> anyhow::Result<(Value, String)> {
    let v = admin.call(Method::GET, "/stats", None).await?;
    let s: NodeStats = parse(&v)?;
    let mut text = fields(&[
        ("online devices", s.online_devices.to_string()),
        ("users", s.users.to_string()),
        ("chats", s.chats.to_string()),
        (
            "messages/s",
            format!(
                "{:.2} ({} in the last minute)",
                s.messages_per_second, s.messages_last_minute
            ),
        ),
        ("store on disk", bytes(s.disk_bytes)),
    ]);
    if !s.deepest_inboxes.is_empty() {
        let rows: Vec<Vec<String>> = s
            .deepest_inboxes
            .iter()
            .map(|d| vec![d.user_id.clone(), d.device_id.clone(), d.depth.to_string()])
            .collect();
        text.push_str("\n\ndeepest inboxes");
        if !s.inbox_scan_complete {
            text.push_str(" (of the first 5,000,000 pending events)");
        }
        text.push('\n');
        text.push_str(&table(&["USER", "DEVICE", "PENDING"], &rows, &[2]));
    }
    Ok((v, text))
}

/// Bytes in the largest binary unit that keeps a whole number in front.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
