//! `natter user`, `natter device` and `natter invite`: accounts, their
//! devices and registration invites (`/admin/v1/users...`, `/admin/v1/invites...`).

use clap::Subcommand;
use natter::core::{DeletedUser, Invite, UserDetail};
use natter::gateway::admin::{AddedUser, DeviceList, InviteList, UserList};
use reqwest::Method;
use serde_json::{Value, json};

use crate::table::{fields, or_dash, table};
use crate::{Admin, parse};

#[derive(Debug, Subcommand)]
pub(crate) enum UserCommand {
    /// Add a user; without --password one is generated and printed.
    Add {
        name: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// List users.
    List,
    /// A user: state, devices (online), chats.
    Show { name: String },
    /// Disable a user: no new logins or connections.
    Disable { name: String },
    /// Enable a disabled user.
    Enable { name: String },
    /// Set a new password; without --password one is generated and printed.
    /// Devices stay logged in (`natter device revoke`).
    ResetPassword {
        name: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// Delete a user: its devices, inboxes and memberships go; its messages
    /// stay in their chats, and its name stays taken.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub(crate) enum DeviceCommand {
    /// A user's devices: created, last active, pending events, online where.
    List { user: String },
    /// Log a device out: its token stops working, its connection closes.
    Revoke { user: String, device: String },
}

#[derive(Debug, Subcommand)]
pub(crate) enum InviteCommand {
    /// Create an invite code.
    Create {
        /// How many registrations it allows.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        uses: u32,
        /// How long it is valid, e.g. 7d or 12h (default: the node's invite_ttl).
        #[arg(long, value_parser = ttl)]
        ttl: Option<String>,
    },
    /// Invites not used up, with what is left of them.
    List,
    /// Delete an invite code.
    Revoke { code: String },
}

/// `--ttl` is checked here, so a typo is a usage error (exit 2).
fn ttl(s: &str) -> Result<String, String> {
    humantime::parse_duration(s)
        .map(|_| s.to_owned())
        .map_err(|e| format!("{e} (e.g. 7d, 12h, 30m)"))
}

/// `natter user ...`: the node's answer and its text.
pub(crate) async fn user(admin: &Admin, command: &UserCommand) -> anyhow::Result<(Value, String)> {
    Ok(match command {
        UserCommand::Add { name, password } => {
            let body = json!({"username": name, "password": password});
            let v = admin.call(Method::POST, "/users", Some(body)).await?;
            let added: AddedUser = parse(&v)?;
            let mut text = format!("added {}", added.user_id);
            if let Some(p) = added.password {
                text.push_str(&format!("\npassword: {p}"));
            }
            (v, text)
        }
        UserCommand::List => {
            let v = admin.call(Method::GET, "/users", None).await?;
            let list: UserList = parse(&v)?;
            let rows: Vec<Vec<String>> = list
                .users
                .iter()
                .map(|u| {
                    let state = match (u.deleted, u.disabled) {
                        (true, _) => "deleted",
                        (false, true) => "disabled",
                        (false, false) => "active",
                    };
                    vec![
                        u.user_id.clone(),
                        state.to_owned(),
                        u.devices.to_string(),
                        u.created_at.clone(),
                    ]
                })
                .collect();
            (
                v,
                table(&["USER", "STATE", "DEVICES", "CREATED"], &rows, &[2]),
            )
        }
        UserCommand::Show { name } => {
            let v = admin.call(Method::GET, &user_path(name), None).await?;
            let u: UserDetail = parse(&v)?;
            let state = match (u.deleted, u.disabled) {
                (true, _) => "deleted",
                (false, true) => "disabled",
                (false, false) => "active",
            };
            let text = fields(&[
                ("user", u.user_id),
                ("state", state.to_owned()),
                ("created", u.created_at),
                (
                    "devices",
                    format!("{} ({} online)", u.devices, u.online_devices),
                ),
                ("chats", u.chats.to_string()),
            ]);
            (v, text)
        }
        UserCommand::Disable { name } => set_disabled(admin, name, true).await?,
        UserCommand::Enable { name } => set_disabled(admin, name, false).await?,
        UserCommand::ResetPassword { name, password } => {
            let path = format!("{}/password", user_path(name));
            let body = json!({ "password": password });
            let v = admin.call(Method::POST, &path, Some(body)).await?;
            let changed: AddedUser = parse(&v)?;
            let mut text = format!("new password set for {}", changed.user_id);
            if let Some(p) = changed.password {
                text.push_str(&format!("\npassword: {p}"));
            }
            (v, text)
        }
        UserCommand::Delete { name } => {
            let v = admin.call(Method::DELETE, &user_path(name), None).await?;
            let d: DeletedUser = parse(&v)?;
            let text = format!(
                "deleted {}: {} device(s) logged out, left {} chat(s); its messages stay",
                d.user_id, d.devices_removed, d.chats_left
            );
            (v, text)
        }
    })
}

/// `/users/NAME`, the name escaped should it hold anything odd (the node
/// refuses such names anyway).
fn user_path(name: &str) -> String {
    format!("/users/{}", segment(name))
}

/// One URL path segment: anything but unreserved characters percent-encoded.
pub(crate) fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn set_disabled(
    admin: &Admin,
    name: &str,
    disabled: bool,
) -> anyhow::Result<(Value, String)> {
    let verb = if disabled { "disable" } else { "enable" };
    let path = format!("{}/{verb}", user_path(name));
    admin.call(Method::POST, &path, None).await?;
    let v = json!({"user": name, "disabled": disabled});
    Ok((v, format!("{verb}d {name}")))
}

/// `natter device ...`.
pub(crate) async fn device(
    admin: &Admin,
    command: &DeviceCommand,
) -> anyhow::Result<(Value, String)> {
    Ok(match command {
        DeviceCommand::List { user } => {
            let path = format!("{}/devices", user_path(user));
            let v = admin.call(Method::GET, &path, None).await?;
            let list: DeviceList = parse(&v)?;
            let rows: Vec<Vec<String>> = list
                .devices
                .iter()
                .map(|d| {
                    vec![
                        d.device_id.clone(),
                        or_dash(d.name.as_ref()),
                        d.created_at.clone(),
                        d.last_active.clone(),
                        d.inbox_depth.to_string(),
                        d.oldest_pending_age_ms
                            .map_or_else(|| "-".to_owned(), crate::peers::age),
                        d.online
                            .as_ref()
                            .map_or_else(|| "offline".to_owned(), |g| format!("at {g}")),
                    ]
                })
                .collect();
            let header = [
                "DEVICE",
                "NAME",
                "CREATED",
                "LAST ACTIVE",
                "INBOX",
                "OLDEST",
                "ONLINE",
            ];
            (v, table(&header, &rows, &[4, 5]))
        }
        DeviceCommand::Revoke { user, device } => {
            let path = format!("{}/devices/{}", user_path(user), segment(device));
            admin.call(Method::DELETE, &path, None).await?;
            let v = json!({"user": user, "deviceId": device, "revoked": true});
            (v, format!("revoked device {device} of {user}"))
        }
    })
}

/// `natter invite ...`.
pub(crate) async fn invite(
    admin: &Admin,
    command: &InviteCommand,
) -> anyhow::Result<(Value, String)> {
    Ok(match command {
        InviteCommand::Create { uses, ttl } => {
            let body = json!({"uses": uses, "ttl": ttl});
            let v = admin.call(Method::POST, "/invites", Some(body)).await?;
            let invite: Invite = parse(&v)?;
            let text = format!(
                "{}\n(valid for {} registration(s) until {})",
                invite.code, invite.uses, invite.expires_at
            );
            (v, text)
        }
        InviteCommand::List => {
            let v = admin.call(Method::GET, "/invites", None).await?;
            let list: InviteList = parse(&v)?;
            let rows: Vec<Vec<String>> = list
                .invites
                .iter()
                .map(|i| {
                    vec![
                        i.code.clone(),
                        i.uses_left.to_string(),
                        i.created_at.clone(),
                        i.expires_at.clone(),
                        if i.expired { "expired" } else { "valid" }.to_owned(),
                    ]
                })
                .collect();
            let header = ["CODE", "USES LEFT", "CREATED", "EXPIRES", "STATE"];
            (v, table(&header, &rows, &[1]))
        }
        InviteCommand::Revoke { code } => {
            let path = format!("/invites/{}", segment(code));
            admin.call(Method::DELETE, &path, None).await?;
            let v = json!({"code": code, "revoked": true});
            (v, format!("revoked invite {code}"))
        }
    })
}
