//! `natter`: the admin command line of a natter node.
//!
//! It talks to the node's admin HTTP API with the admin token and never opens the
//! store: every command is one admin API call (docs/operations.md lists them).
//! The token comes from `--token`/`NATTER_ADMIN_TOKEN`, or is read from
//! `<data>/admin.token` (`--data`/`NATTER_DATA`, default `./natter-data`).
//! Answers are read as the node's own types (`natter::gateway::{admin, peers}`,
//! `natter::core`, `natter::protocol`); `--json` prints them as the node sent them.
//! `backup` ([`backup`]) is the exception: `create` streams an archive to a
//! file, and `verify` reads one with the node's own reader (`natter::backup`),
//! without a node.
//! `user`, `device` and `invite` are in [`users`]; `chat` and `stats` in
//! [`chats`]; `key` and `peer` (federation) in [`peers`].
//!
//! Exit codes: 0 ok, 1 the command failed, 2 bad usage, 3 the node is
//! unreachable, 4 unauthorized (no token, or the node refused it).

mod backup;
mod chats;
mod peers;
mod table;
mod users;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use natter::gateway::admin::NodeStatus;
use natter::protocol::{ErrorBody, ErrorCode};
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
    /// Print the node's JSON answers instead of text (errors too, on stdout).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Users of this node.
    #[command(subcommand)]
    User(users::UserCommand),
    /// A user's devices (logins).
    #[command(subcommand)]
    Device(users::DeviceCommand),
    /// Invites for registration in invite mode.
    #[command(subcommand)]
    Invite(users::InviteCommand),
    /// Chats on this node.
    #[command(subcommand)]
    Chat(chats::ChatCommand),
    /// Connected devices, users, chats, message rate, deepest inboxes, disk.
    Stats,
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
    /// Backups: take one from the running node, check one.
    #[command(subcommand)]
    Backup(backup::BackupCommand),
    /// Print a shell completion script (bash, zsh, fish, ...) to stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Why a command failed, with its exit code (docs/operations.md).
#[derive(Debug)]
pub(crate) struct Failure {
    /// 1 failed, 3 unreachable, 4 unauthorized.
    exit: u8,
    /// The node's error code, or `unreachable` / `failed`.
    code: String,
    message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for Failure {}

pub(crate) struct Admin {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Admin {
    pub(crate) async fn call(
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
        let response = request.send().await.map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            return Ok(value);
        }
        Err(refusal(status, value).into())
    }

    /// The node could not be reached (exit 3).
    pub(crate) fn unreachable(&self, e: &reqwest::Error) -> Failure {
        Failure {
            exit: 3,
            code: "unreachable".into(),
            message: format!(
                "cannot reach the node's admin API at {} ({}); is natterd running, and is --node its admin.listen?",
                self.base,
                root_cause(e)
            ),
        }
    }
}

/// The node answered `status` with the error body `value`: exit 4 when it
/// refused the token, else 1 with its code.
pub(crate) fn refusal(status: reqwest::StatusCode, value: Value) -> Failure {
    let (code, message) = match serde_json::from_value::<ErrorBody>(value.clone()) {
        Ok(error) => (error.code.as_str().to_owned(), error.message),
        Err(_) => ("failed".to_owned(), value.as_str().unwrap_or("").to_owned()),
    };
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return Failure {
            exit: 4,
            code: ErrorCode::Unauthorized.as_str().to_owned(),
            message: format!(
                "unauthorized: the node refused the admin token ({message}); pass --token, set NATTER_ADMIN_TOKEN, or point --data at the node's data folder"
            ),
        };
    }
    Failure {
        exit: 1,
        message: format!("{status}: {code}: {message}"),
        code,
    }
}

/// The innermost cause of an error (e.g. "Connection refused").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Reads an answer as the node's type for it.
pub(crate) fn parse<T: DeserializeOwned>(value: &Value) -> anyhow::Result<T> {
    serde_json::from_value(value.clone()).context("unexpected answer from the node")
}

/// The wire name of a unit enum such as `Registration` (`invite`).
fn wire_name(value: &impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => s,
        _ => String::new(),
    }
}

fn admin_token(cli: &Cli) -> Result<String, Failure> {
    if let Some(token) = &cli.token {
        return Ok(token.clone());
    }
    let path = cli.data.join("admin.token");
    match std::fs::read_to_string(&path) {
        Ok(token) => Ok(token.trim().to_owned()),
        Err(e) => Err(Failure {
            exit: 4,
            code: ErrorCode::Unauthorized.as_str().to_owned(),
            message: format!(
                "no admin token: pass --token, set NATTER_ADMIN_TOKEN, or point --data at the node's data folder ({} unreadable: {e})",
                path.display()
            ),
        }),
    }
}

/// Carries out one command: the node's answer (or what the CLI prints for
/// an answer without a body) and its text.
async fn run(cli: &Cli, admin: &Admin) -> anyhow::Result<(Value, String)> {
    use reqwest::Method;
    Ok(match &cli.command {
        Command::User(command) => users::user(admin, command).await?,
        Command::Device(command) => users::device(admin, command).await?,
        Command::Invite(command) => users::invite(admin, command).await?,
        Command::Chat(command) => chats::chat(admin, command).await?,
        Command::Stats => chats::stats(admin).await?,
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
        Command::Key(command) => peers::key(admin, command).await?,
        Command::Peer(command) => peers::peer(admin, command).await?,
        Command::Backup(command) => backup::backup(admin, command, cli.json).await?,
        Command::Completions { .. } => unreachable!("handled before a token is read"),
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    // Usage errors exit with 2 (clap's own code), --help and --version with 0.
    let cli = Cli::parse();
    if let Command::Completions { shell } = &cli.command {
        clap_complete::generate(
            *shell,
            &mut Cli::command(),
            "natter",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    let result = match (&cli.command, admin_token(&cli)) {
        // Checks a file: no node, no token.
        (Command::Backup(backup::BackupCommand::Verify { file }), _) => backup::verify(file),
        (_, Ok(token)) => {
            let builder = || reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
            // Without the system's CA certificates, no TLS roots (instead of
            // a panic): plain HTTP to the node's admin listener still works.
            let http = builder()
                .build()
                .or_else(|_| builder().tls_certs_only([]).build())
                .unwrap_or_default();
            let admin = Admin {
                http,
                base: cli.node.clone(),
                token,
            };
            run(&cli, &admin).await
        }
        (_, Err(failure)) => Err(failure.into()),
    };
    match result {
        Ok((value, text)) => {
            if cli.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).unwrap_or_default()
                );
            } else {
                println!("{text}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let (exit, code) = match e.downcast_ref::<Failure>() {
                Some(f) => (f.exit, f.code.clone()),
                None => (1, "failed".to_owned()),
            };
            let message = format!("{e:#}");
            if cli.json {
                let error = json!({"error": {"code": code, "message": message, "exitCode": exit}});
                println!(
                    "{}",
                    serde_json::to_string_pretty(&error).unwrap_or_default()
                );
            }
            eprintln!("natter: {message}");
            ExitCode::from(exit)
        }
    }
}
