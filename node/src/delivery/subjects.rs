//! Every NATS subject and JetStream name natter uses, built in one place.
//!
//! Node names are DNS-like (`chat.example.org`) and NATS uses `.` between
//! tokens, so a node name becomes one token with `.` replaced by `_` (node names
//! cannot contain `_`, so this is unambiguous). Gateway ids and device ids are
//! single tokens already (`[a-z0-9-]` and ULIDs).
//!
//! | subject | what |
//! | --- | --- |
//! | `natter.<node>.dlv.<gateway>.batch` | deliveries for devices held by one gateway (JetStream) |
//! | `natter.<node>.rpc` | gateway → core requests (request/reply) |
//! | `natter.<node>.presence` | gateway → core: connects, disconnects, heartbeats |
//! | `natter.<node>.gw.<gateway>` | core → one gateway: displace, resync |
//! | `natter.<node>.core.started` | core → all gateways: "I (re)started" |
//! | `natter.<node>.fed.<peer>` | the federation outbox of one peer (JetStream, work queue) |
//! | `_INBOX.natter.<node>.<gateway>.>` | answers to one gateway (RPC replies, JetStream) |
//! | `_INBOX.natter_core.<node>.>` | answers to the core (JetStream) |
//!
//! examples/cluster/nats-accounts.conf grants each role exactly these (and the
//! JetStream API subjects of the delivery stream); keep the two in step.

use super::nats::NatsRole;
use crate::ids::{GatewayId, NodeName};

fn node_token(node: &NodeName) -> String {
    node.as_str().replace('.', "_")
}

/// The JetStream stream that carries deliveries.
pub(crate) fn stream_name(node: &NodeName) -> String {
    format!(
        "NATTER_{}_DLV",
        node_token(node).to_ascii_uppercase().replace('-', "_")
    )
}

/// Everything the delivery stream captures.
pub(crate) fn deliveries_all(node: &NodeName) -> String {
    format!("natter.{}.dlv.>", node_token(node))
}

/// What one gateway's consumer reads.
pub(crate) fn deliveries_for_gateway(node: &NodeName, gateway: &GatewayId) -> String {
    format!("natter.{}.dlv.{gateway}.>", node_token(node))
}

/// Where the core publishes a gateway's deliveries (batches of devices).
pub(crate) fn deliveries(node: &NodeName, gateway: &GatewayId) -> String {
    format!("natter.{}.dlv.{gateway}.batch", node_token(node))
}

/// The durable consumer of one gateway.
pub(crate) fn consumer_name(gateway: &GatewayId) -> String {
    format!("gw_{}", gateway.as_str().replace('-', "_"))
}

/// The JetStream stream that holds the federation outboxes (one subject and
/// one durable consumer per peer).
pub(crate) fn outbox_stream_name(node: &NodeName) -> String {
    format!(
        "NATTER_{}_FED",
        node_token(node).to_ascii_uppercase().replace('-', "_")
    )
}

/// Everything the outbox stream captures.
pub(crate) fn outbox_all(node: &NodeName) -> String {
    format!("natter.{}.fed.>", node_token(node))
}

/// The outbox of one peer: where the core publishes its events and what the
/// peer's consumer reads.
pub(crate) fn outbox(node: &NodeName, peer: &NodeName) -> String {
    format!("natter.{}.fed.{}", node_token(node), node_token(peer))
}

/// The durable consumer of one peer's outbox (`-` is allowed in consumer
/// names, `.` is not; node names have no `_`, so this is unambiguous).
pub(crate) fn outbox_consumer(peer: &NodeName) -> String {
    format!("fed_{}", node_token(peer))
}

pub(crate) fn rpc(node: &NodeName) -> String {
    format!("natter.{}.rpc", node_token(node))
}

pub(crate) fn presence(node: &NodeName) -> String {
    format!("natter.{}.presence", node_token(node))
}

pub(crate) fn gateway_control(node: &NodeName, gateway: &GatewayId) -> String {
    format!("natter.{}.gw.{gateway}", node_token(node))
}

pub(crate) fn core_started(node: &NodeName) -> String {
    format!("natter.{}.core.started", node_token(node))
}

/// Where replies to one gateway's requests arrive; `*` is the request number.
/// It lies under the gateway's [`inbox_prefix`].
pub(crate) fn reply_inbox(node: &NodeName, gateway: &GatewayId, nonce: &str) -> String {
    format!("_INBOX.natter.{}.{gateway}.{nonce}", node_token(node))
}

/// The prefix of every inbox a process's NATS client makes (JetStream API
/// answers, pull consumer deliveries, publish acks): a gateway's is
/// `_INBOX.natter.<node>.<gateway>`, the core's `_INBOX.natter_core.<node>`, so
/// each NATS user can be allowed to subscribe to its own answers only.
pub(crate) fn inbox_prefix(node: &NodeName, role: &NatsRole) -> String {
    match role {
        NatsRole::Core => format!("_INBOX.natter_core.{}", node_token(node)),
        NatsRole::Gateway(gateway) => format!("_INBOX.natter.{}.{gateway}", node_token(node)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_become_one_token() {
        let node = NodeName::parse("chat.example-1.org").unwrap();
        let gw = GatewayId::parse("gw-1").unwrap();
        let subject = deliveries(&node, &gw);
        assert_eq!(subject, "natter.chat_example-1_org.dlv.gw-1.batch");
        assert_eq!(subject.split('.').count(), 5);
        assert_eq!(stream_name(&node), "NATTER_CHAT_EXAMPLE_1_ORG_DLV");
        assert!(!stream_name(&node).contains('.'));
        assert_eq!(consumer_name(&gw), "gw_gw_1");
        assert!(subject.starts_with(deliveries_for_gateway(&node, &gw).trim_end_matches('>')));
        let peer = NodeName::parse("beta.example-2.org").unwrap();
        let subject = outbox(&node, &peer);
        assert_eq!(subject, "natter.chat_example-1_org.fed.beta_example-2_org");
        assert!(subject.starts_with(outbox_all(&node).trim_end_matches('>')));
        assert_eq!(outbox_consumer(&peer), "fed_beta_example-2_org");
        assert_eq!(outbox_stream_name(&node), "NATTER_CHAT_EXAMPLE_1_ORG_FED");
    }
}
