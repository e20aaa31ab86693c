//! `natter key` and `natter peer`: this node's federation key, and its peers,
//! their outboxes and dead letters (`/admin/v1/key`, `/admin/v1/peers...`).
//!
//! `peer add --fetch-key` is the one command that talks to another node: it
//! reads the peer's public, unsigned well-known document (without the admin
//! token), and trusts its key only after the admin confirmed the fingerprint.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context, bail};
use clap::Subcommand;
use natter::core::federation::{
    DocumentKey, NodeDocument, NodeIdentity, PeerInfo, parse_public_key,
};
use natter::federation::keys::key_id;
use natter::gateway::peers::{AddPeer, DeadLetters, PeerList};
use natter::ids::NodeName;
use reqwest::Method;
use serde_json::Value;

use crate::{Admin, parse};

#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
    /// This node's name, public key, fingerprint and URL (what peers need).
    Show,
    /// A new key, signed with from now on; the old one keeps verifying for
    /// `federation.key_overlap` (7 days by default) and peers are told.
    Rotate,
}

/// A peer's name is `peer` in code: `node` is taken by the global `--node`.
#[derive(Debug, Subcommand)]
pub(crate) enum PeerCommand {
    /// Trust a node as a peer: its name, base URL and public key.
    Add {
        /// The peer's name, e.g. b.example.
        #[arg(value_name = "NODE", value_parser = node_name)]
        peer: NodeName,
        /// The peer's base URL, e.g. https://b.example.
        url: String,
        /// base64 of its ed25519 public key (`natter key show` on the peer).
        #[arg(required_unless_present = "fetch_key", conflicts_with = "fetch_key")]
        public_key: Option<String>,
        /// Fetch the key from URL's well-known document and confirm its
        /// fingerprint instead of giving PUBLIC_KEY.
        #[arg(long)]
        fetch_key: bool,
        /// Trust the fetched key without asking (for scripts).
        // Not `requires = "fetch_key"`: a flag's default `false` would satisfy it.
        #[arg(long, conflicts_with = "public_key")]
        yes: bool,
    },
    /// Peers with their outbox and state.
    List,
    /// Stop trusting a peer.
    Remove {
        /// The peer's name.
        #[arg(value_name = "NODE", value_parser = node_name)]
        peer: NodeName,
    },
    /// A peer's dead letters: events it refused or that waited too long.
    Outbox {
        /// The peer's name.
        #[arg(value_name = "NODE", value_parser = node_name)]
        peer: NodeName,
        /// Put them back in the outbox to be sent again.
        #[arg(long)]
        replay: bool,
    },
}

fn node_name(s: &str) -> Result<NodeName, String> {
    NodeName::parse(s).ok_or_else(|| "a node name is DNS-like: lowercase a-z, 0-9, - and .".into())
}

/// `natter key ...`: the node's answer and its text.
pub(crate) async fn key(admin: &Admin, command: &KeyCommand) -> anyhow::Result<(Value, String)> {
    match command {
        KeyCommand::Show => {
            let v = admin.call(Method::GET, "/key", None).await?;
            let id: NodeIdentity = parse(&v)?;
            let mut text = format!(
                "node:        {}\npublic key:  {}\nfingerprint: {}\nurl:         {}",
                id.node, id.public_key, id.fingerprint, id.url
            );
            for old in &id.previous_keys {
                text.push_str(&format!("\nprevious:    {}", until(old)));
            }
            Ok((v, text))
        }
        KeyCommand::Rotate => {
            let v = admin.call(Method::POST, "/key/rotate", None).await?;
            let id: NodeIdentity = parse(&v)?;
            let mut text = format!("new key {} ({})", id.fingerprint, id.public_key);
            if let Some(old) = id.previous_keys.first() {
                text.push_str(&format!("\nthe old key {}", until(old)));
            }
            text.push_str("\npeers are told the new key as they are reached (natter peer list)");
            Ok((v, text))
        }
    }
}

/// `<key id> verifies until <time>`.
fn until(key: &DocumentKey) -> String {
    let until = key.not_after.as_deref().unwrap_or("further notice");
    format!("{} verifies until {until}", key.key_id)
}

/// `natter peer ...`: the node's answer and its text.
pub(crate) async fn peer(admin: &Admin, command: &PeerCommand) -> anyhow::Result<(Value, String)> {
    match command {
        PeerCommand::Add {
            peer: node,
            url,
            public_key,
            fetch_key: _,
            yes,
        } => {
            let public_key = match public_key {
                Some(key) => key.clone(),
                None => {
                    let (key, fingerprint) = fetch_key(&admin.http, node, url).await?;
                    eprintln!("{node} at {url} presents the key {fingerprint}");
                    if !yes {
                        confirm()?;
                    }
                    key
                }
            };
            let body = AddPeer {
                node: node.to_string(),
                url: url.clone(),
                public_key,
            };
            let v = admin
                .call(Method::POST, "/peers", Some(serde_json::to_value(body)?))
                .await?;
            let info: PeerInfo = parse(&v)?;
            Ok((
                v,
                format!("added peer {} ({})", info.node, info.fingerprint),
            ))
        }
        PeerCommand::List => {
            let v = admin.call(Method::GET, "/peers", None).await?;
            let list: PeerList = parse(&v)?;
            Ok((v, peer_table(&list.peers)))
        }
        PeerCommand::Remove { peer: node } => {
            admin
                .call(Method::DELETE, &format!("/peers/{node}"), None)
                .await?;
            let v = serde_json::json!({"node": node.as_str(), "removed": true});
            Ok((v, format!("removed peer {node}")))
        }
        PeerCommand::Outbox { peer: node, replay } => {
            let v = if *replay {
                admin
                    .call(Method::POST, &format!("/peers/{node}/outbox/replay"), None)
                    .await?
            } else {
                admin
                    .call(Method::GET, &format!("/peers/{node}/outbox"), None)
                    .await?
            };
            let dead: DeadLetters = parse(&v)?;
            Ok((v, dead_letters_text(&dead)))
        }
    }
}

/// Reads `url`'s well-known document and returns the key it presents, with its
/// fingerprint. Refuses a document of another node, or one whose key id does
/// not belong to its key.
async fn fetch_key(
    http: &reqwest::Client,
    node: &NodeName,
    url: &str,
) -> anyhow::Result<(String, String)> {
    let address = format!("{}/.well-known/natter/node", url.trim_end_matches('/'));
    // No admin token here: the document is public and the peer is not ours.
    let document: NodeDocument = http
        .get(&address)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("cannot fetch {address}"))?
        .json()
        .await
        .with_context(|| format!("{address} is not a natter node document"))?;
    if document.node != node.as_str() {
        bail!(
            "{url} is the node {:?}, not {node}: not adding it (check the name and the URL)",
            document.node
        );
    }
    // The open-ended key is the current one (an ending one may be listed
    // during a rotation).
    let key = document
        .keys
        .iter()
        .find(|k| k.not_after.is_none())
        .or(document.keys.first())
        .with_context(|| format!("{address} lists no key"))?;
    let parsed = parse_public_key(&key.public_key)
        .with_context(|| format!("{address} has a key that is not an ed25519 public key"))?;
    let fingerprint = key_id(&parsed);
    if fingerprint != key.key_id {
        bail!(
            "{address} names its key {} but the key's fingerprint is {fingerprint}: not adding it",
            key.key_id
        );
    }
    Ok((key.public_key.clone(), fingerprint))
}

/// Asks the admin on the terminal to trust the fetched key.
fn confirm() -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!(
            "not adding the peer: a fetched key must be confirmed, and stdin is not a terminal \
             (compare the fingerprint with `natter key show` on the peer, then pass --yes)"
        );
    }
    eprint!("Trust this key? [y/N] ");
    std::io::stderr().flush()?;
    // Blocking read on the runtime's thread: nothing else runs while we wait.
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        bail!("not trusted: peer not added");
    }
    Ok(())
}

/// The aligned table of `peer list`, then the peers' last errors.
fn peer_table(peers: &[PeerInfo]) -> String {
    let header = [
        "NODE",
        "URL",
        "FINGERPRINT",
        "LAST CONTACT",
        "OUTBOX",
        "OLDEST",
        "DEAD",
        "STATE",
    ];
    let rows: Vec<[String; 8]> = peers
        .iter()
        .map(|p| {
            [
                p.node.clone(),
                p.url.clone(),
                p.fingerprint.clone(),
                p.last_contact.clone().unwrap_or_else(|| "never".into()),
                p.outbox_depth.to_string(),
                p.oldest_queued_age_ms.map_or_else(|| "-".into(), age),
                p.dead_letters.to_string(),
                if p.failures == 0 {
                    p.state.clone()
                } else {
                    format!("{} ({} failures)", p.state, p.failures)
                },
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    // Numbers right-aligned, the rest left; no padding after the last column.
    let line = |cells: [&str; 8]| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            match i {
                4..=6 => out.push_str(&format!("{cell:>w$}  ")),
                7 => out.push_str(cell),
                _ => out.push_str(&format!("{cell:<w$}  ")),
            }
        }
        out
    };
    let mut text = line(header);
    for row in &rows {
        text.push('\n');
        text.push_str(&line(row.each_ref().map(String::as_str)));
    }
    for p in peers {
        if let Some(error) = &p.last_error {
            text.push_str(&format!("\n{}: last error: {error}", p.node));
        }
    }
    text
}

/// A queue age, in its largest whole unit (`45s`, `12m`, `3h`, `2d`).
pub(crate) fn age(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn dead_letters_text(dead: &DeadLetters) -> String {
    let mut text = format!(
        "{}: {} dead letter(s){}",
        dead.node,
        dead.dead_letters.len(),
        if dead.replayed && !dead.dead_letters.is_empty() {
            ", put back in the outbox"
        } else {
            ""
        }
    );
    for entry in &dead.dead_letters {
        let field = |name: &str| {
            entry
                .get(name)
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .unwrap_or_default()
        };
        let event = &entry["event"];
        text.push_str(&format!(
            "\n{:>8}  {}  {} {}",
            field("seq"),
            field("queuedAt"),
            event["type"].as_str().unwrap_or("?"),
            event["chatId"].as_str().unwrap_or(""),
        ));
    }
    text
}
