//! Two peered nodes on this machine, for `fanout --topology federated` and
//! `catchup`.
//!
//! Each is one `natterd serve` with its own data folder and a name: alpha.bench
//! (the home of the benchmark's chat: its creator is there) and beta.bench.
//! They are peered both ways through the admin API (`POST /admin/v1/peers`)
//! with the key each one's `/.well-known/natter/node` names, as `natter peer
//! add NODE URL --fetch-key --yes` does.
//!
//! Both run with `[federation] max_backoff = "1s"` (default 60 s): a home's
//! outbox sender retries an unreachable peer at most a second apart, so a catch-up
//! after an outage includes at most one such wait (natterd waits a random time
//! between half and all of it).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::node::Node;
use crate::spawn::{NodeSetup, Topology};

/// The nodes' names, the home first.
pub(crate) const NODE_NAMES: [&str; 2] = ["alpha.bench", "beta.bench"];
/// `federation.max_backoff` of both nodes.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The config both nodes get on top of the load generator's usual one.
fn federation_config() -> String {
    format!(
        "\n[federation]\nmax_backoff = \"{}\"\n",
        humantime::format_duration(MAX_BACKOFF)
    )
}

/// Spawns alpha and beta (one `natterd serve` each) and peers them both ways.
pub(crate) async fn start_pair(natterd: &Path, user_prefix: &str) -> Result<Vec<Node>> {
    start_pair_on(natterd, user_prefix, None).await
}

/// [`start_pair`], with `nats_server`: each node `natterd serve --nats` on a
/// nats-server of its own (its federation outbox then goes through JetStream).
pub(crate) async fn start_pair_on(
    natterd: &Path,
    user_prefix: &str,
    nats_server: Option<&Path>,
) -> Result<Vec<Node>> {
    let mut nodes = Vec::with_capacity(NODE_NAMES.len());
    for name in NODE_NAMES {
        let setup = NodeSetup {
            name: Some(name.to_owned()),
            extra_config: federation_config(),
        };
        eprintln!("starting natterd {name}");
        // Without NATS each node is one `natterd serve` on the embedded hop.
        let (nats, topology) = match nats_server {
            Some(path) => (path.to_owned(), Topology::Nats),
            None => (PathBuf::new(), Topology::Federated),
        };
        let node = Node::spawn(
            natterd.to_owned(),
            nats,
            topology,
            setup,
            user_prefix.to_owned(),
        )
        .await?;
        nodes.push(node);
    }
    for (i, node) in nodes.iter().enumerate() {
        for (j, other) in nodes.iter().enumerate() {
            if i != j {
                add_peer(node, other).await?;
            }
        }
    }
    Ok(nodes)
}

/// Makes `other` a peer of `node`, with the key `other`'s well-known document
/// names.
async fn add_peer(node: &Node, other: &Node) -> Result<()> {
    let url = format!("{}/.well-known/natter/node", other.base_url());
    let known: Value = node
        .http()
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?
        .error_for_status()
        .with_context(|| format!("GET {url}"))?
        .json()
        .await
        .with_context(|| format!("the well-known document at {url}"))?;
    let body = json!({
        "node": known["node"],
        "url": other.base_url(),
        "publicKey": known["keys"][0]["publicKey"],
    });
    node.admin_post("/admin/v1/peers", body)
        .await
        .with_context(|| format!("peer {:?} with {:?}", node.name(), other.name()))?;
    Ok(())
}

/// A peer, as `GET /admin/v1/peers` lists it (the fields used here).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Peer {
    pub node: String,
    pub outbox_depth: usize,
    pub state: String,
}

#[derive(Debug, Deserialize)]
struct PeerList {
    peers: Vec<Peer>,
}

/// How `node` sees its peer `peer` (outbox depth, back-off state).
pub(crate) async fn peer_state(node: &Node, peer: &str) -> Result<Peer> {
    let text = node.admin_get("/admin/v1/peers").await?;
    let list: PeerList =
        serde_json::from_str(&text).with_context(|| format!("GET /admin/v1/peers: {text}"))?;
    list.peers
        .into_iter()
        .find(|p| p.node == peer)
        .with_context(|| format!("{peer} is not among the peers: {text}"))
}
