//! `natter`: the admin command line of a natter node.
//!
//! It talks to the node's admin HTTP API with the admin token and never opens the
//! store. The token comes from `--token`/`NATTER_ADMIN_TOKEN`, or is read from
//! `<data>/admin.token` (`--data`/`NATTER_DATA`, default `./natter-data`).
//! Answers are read as the node's own types (`natter::gateway::{admin, peers}`,
//! `natter::core`, `natter::protocol`); `--json` prints them as the node sent them.
//! `key` and `peer` (federation) are in [`peers`].

mod peers;

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use natter::core::Invite;
use natter::gateway::admin::{AddedUser, NodeStatus, UserList};
use natter::protocol::ErrorBody;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(name = "natter", version, about = "Administer a natter node")]
struct Cli {
    /// The node's admin listener (natterd's --admin-listen).
    #[arg(
        long,
        env = "NATTER_NODE",
        default_value = "http://127.0.0.1:7071",
        global = true
    )]
    node: String,
    /// Admin token (otherwise read from <data>/admin.token).
    #[arg(
        long,
        env = "NATTER_ADMIN_TOKEN",
        global = true,
        hide_env_values = true
    )]
    token: Option<String>,
    /// The node's data folder, where admin.token is.
    #[arg(
        long,
        env = "NATTER_DATA",
        default_value = "natter-data",
        global = true
    )]
    data: PathBuf,
    /// Print the node's JSON answers instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Users of this node.
    #[command(subcommand)]
    User(UserCommand),
    /// Invites for registration in invite mode.
    #[command(subcommand)]
    Invite(InviteCommand),
    /// The node's name, version and online devices.
    Status,
    /// Run retention and device expiry now.
    Sweep,
    /// This node's federation key.
    #[command(subcommand)]
    Key(peers::KeyCommand),
    /// Peers: nodes this node federates with.
    #[command(subcommand)]
    Peer(peers::PeerCommand),
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Add a user; without --password one is generated and printed.
    Add {
        name: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// List users.
    List,
    /// Disable a user: no new logins or connections.
    Disable { name: String },
    /// Enable a disabled user.
    Enable { name: String },
}

#[derive(Debug, Subcommand)]
enum InviteCommand {
    /// Create an invite code.
    Create {
        /// How many registrations it allows.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// How long it is valid, e.g. 7d or 12h (default: the node's invite_ttl).
        #[arg(long)]
        ttl: Option<String>,
    },
}

struct Admin {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Admin {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}/admin/v1{path}", self.base.trim_end_matches('/'));
        let mut request = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the node at {}", self.base))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if !status.is_success() {
            let (code, message) = match serde_json::from_value::<ErrorBody>(value) {
                Ok(error) => (error.code.as_str(), error.message),
                Err(_) => ("error", String::new()),
            };
            bail!("{status}: {code}: {message}");
        }
        Ok(value)
    }
}

/// Reads an answer as the node's type for it.
fn parse<T: DeserializeOwned>(value: &Value) -> anyhow::Result<T> {
    serde_json::from_value(value.clone()).context("unexpected answer from the node")
}

/// The wire name of a unit enum such as `Registration` (`invite`).
fn wire_name(value: &impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => s,
        _ => String::new(),
    }
}

fn admin_token(cli: &Cli) -> anyhow::Result<String> {
    if let Some(token) = &cli.token {
        return Ok(token.clone());
    }
    let path = cli.data.join("admin.token");
    let token = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no admin token: pass --token, set NATTER_ADMIN_TOKEN, or point --data at the node's data folder ({} unreadable)",
            path.display()
        )
    })?;
    Ok(token.trim().to_owned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let admin = Admin {
        http: reqwest::Client::new(),
        base: cli.node.clone(),
        token: admin_token(&cli)?,
    };
    use reqwest::Method;
    let (value, text) = match &cli.command {
        Command::User(UserCommand::Add { name, password }) => {
            let v = admin
                .call(
                    Method::POST,
                    "/users",
                    Some(json!({"username": name, "password": password})),
                )
                .await?;
            let added: AddedUser = parse(&v)?;
            let mut text = format!("added {}", added.user_id);
            if let Some(p) = added.password {
                text.push_str(&format!("\npassword: {p}"));
            }
            (v, text)
        }
        Command::User(UserCommand::List) => {
            let v = admin.call(Method::GET, "/users", None).await?;
            let mut text = format!(
                "{:<40} {:<8} {:>7}  {}",
                "USER", "STATE", "DEVICES", "CREATED"
            );
            let list: UserList = parse(&v)?;
            for u in list.users {
                text.push_str(&format!(
                    "\n{:<40} {:<8} {:>7}  {}",
                    u.user_id,
                    if u.disabled { "disabled" } else { "active" },
                    u.devices,
                    u.created_at,
                ));
            }
            (v, text)
        }
        Command::User(UserCommand::Disable { name }) => {
            let v = admin
                .call(Method::POST, &format!("/users/{name}/disable"), None)
                .await?;
            (v, format!("disabled {name}"))
        }
        Command::User(UserCommand::Enable { name }) => {
            let v = admin
                .call(Method::POST, &format!("/users/{name}/enable"), None)
                .await?;
            (v, format!("enabled {name}"))
        }
        Command::Invite(InviteCommand::Create { uses, ttl }) => {
            let v = admin
                .call(
                    Method::POST,
                    "/invites",
                    Some(json!({"uses": uses, "ttl": ttl})),
                )
                .await?;
            let invite: Invite = parse(&v)?;
            let text = format!(
                "{}\n(valid for {} registration(s) until {})",
                invite.code, invite.uses, invite.expires_at
            );
            (v, text)
        }
        Command::Status => {
            let v = admin.call(Method::GET, "/status", None).await?;
            let status: NodeStatus = parse(&v)?;
            let text = format!(
                "node {} (natterd {})\nregistration: {}\nonline devices: {}",
                status.node,
                status.version,
                wire_name(&status.registration),
                status.online_devices
            );
            (v, text)
        }
        Command::Sweep => {
            let v = admin.call(Method::POST, "/sweep", None).await?;
            (v.clone(), format!("swept: {v}"))
        }
        Command::Key(command) => peers::key(&admin, command).await?,
        Command::Peer(command) => peers::peer(&admin, command).await?,
    };
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("{text}");
    }
    Ok(())
}
