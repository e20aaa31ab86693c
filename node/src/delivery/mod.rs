//! The live hop: getting a committed delivery to the connection that holds its
//! device, right now — in this process, or through NATS JetStream to the gateway
//! process that holds it.
//!
//! Owns: [`Hub`], the map from online device to its connection's queue, and the
//! [`Delivery`] that travels on it; [`Publisher`], how the core hands deliveries
//! off after a commit; [`Presence`], which process holds which device; and
//! ([`nats`], [`rpc`]) everything that talks to NATS — the only modules that
//! import async-nats, with every subject built in [`subjects`].
//! Does not own: durability. The fjall inbox is the truth; a delivery that this hop
//! drops (device offline, queue full, NATS down) is still in the inbox and reaches
//! the device through replay. So every operation here is non-blocking and may drop;
//! whatever drops must leave the connection knowing it has to re-read the inbox
//! (`lagged`, [`Push::Resync`]).
//!
//! Invariant: deliveries are published in commit order, and delivery ids grow in
//! commit order, so a connection sees ids ascending on this hop.

pub(crate) mod nats;
pub(crate) mod outbox;
pub(crate) mod presence;
pub(crate) mod rpc;
pub(crate) mod subjects;
pub(crate) mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::ids::{DeliveryId, DeviceId, GatewayId};
use wire::GatewayControl;

/// One event for one device: the id is per device, the encoded event is shared by
/// every recipient of the same event (serialized once).
#[derive(Clone, Debug)]
pub struct Delivery {
    pub id: DeliveryId,
    pub encoded: Arc<str>,
    /// Wall-clock ms when the event was made (for the delivery latency metric).
    pub created_ms: i64,
}

/// What the hop hands a connection.
#[derive(Clone, Debug)]
pub enum Push {
    Deliver(Delivery),
    /// Something may have been missed (NATS reconnected, the core restarted, a
    /// publish failed): read the inbox again.
    Resync,
    /// The device logged out: its token no longer works; close.
    Revoked,
}

/// How many live deliveries may wait for a connection's task before the hop
/// declares it lagged (it then catches up from the inbox).
const LIVE_QUEUE: usize = 256;

struct Slot {
    generation: u64,
    tx: mpsc::Sender<Push>,
    lagged: Arc<AtomicBool>,
}

/// Online devices of this process. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    slots: Arc<Mutex<HashMap<DeviceId, Slot>>>,
    generation: Arc<AtomicU64>,
    /// The presence round (see [`presence`]): starts at the wall-clock
    /// millisecond so that it keeps growing across restarts of a gateway.
    round: Arc<AtomicU64>,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            slots: Arc::default(),
            generation: Arc::default(),
            round: Arc::new(AtomicU64::new(crate::metrics::wall_ms().max(0) as u64)),
        }
    }
}

/// A connection's end of the hop. Dropping it takes the device offline, unless a
/// newer connection of the same device has displaced it already.
pub struct Attachment {
    pub rx: mpsc::Receiver<Push>,
    /// Set when a delivery was dropped because `rx` was full: the holder must
    /// ignore live deliveries until it has caught up from the inbox.
    pub lagged: Arc<AtomicBool>,
    device: DeviceId,
    generation: u64,
    hub: Hub,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let mut slots = self.hub.lock();
        if slots
            .get(&self.device)
            .is_some_and(|s| s.generation == self.generation)
        {
            slots.remove(&self.device);
        }
    }
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceId, Slot>> {
        // A panic while holding this lock leaves the map consistent (single inserts
        // and removes), so poisoning is ignored.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes `device` online on this connection. A previous connection of the same
    /// device is displaced: its receiver closes.
    pub fn attach(&self, device: DeviceId) -> Attachment {
        let (tx, rx) = mpsc::channel(LIVE_QUEUE);
        let lagged = Arc::new(AtomicBool::new(false));
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let slot = Slot {
            generation,
            tx,
            lagged: lagged.clone(),
        };
        // The old slot's sender drops here, which closes the old receiver.
        drop(self.lock().insert(device, slot));
        Attachment {
            rx,
            lagged,
            device,
            generation,
            hub: self.clone(),
        }
    }

    /// Hands deliveries to the connections of online devices; never blocks.
    pub fn publish(&self, batch: impl IntoIterator<Item = (DeviceId, Delivery)>) {
        let slots = self.lock();
        for (device, delivery) in batch {
            if let Some(slot) = slots.get(&device) {
                push(slot, Push::Deliver(delivery));
            }
        }
    }

    /// Tells one connection to read its inbox again.
    pub fn resync(&self, device: DeviceId) {
        if let Some(slot) = self.lock().get(&device) {
            push(slot, Push::Resync);
        }
    }

    /// Tells every connection to read its inbox again.
    pub fn resync_all(&self) {
        for slot in self.lock().values() {
            push(slot, Push::Resync);
        }
    }

    /// Closes the device's connection here (it connected elsewhere).
    pub fn displace(&self, device: DeviceId) {
        self.lock().remove(&device);
    }

    /// Closes the device's connection here because its token was revoked.
    pub fn revoke(&self, device: DeviceId) {
        if let Some(slot) = self.lock().remove(&device) {
            // If the queue is full the channel still closes, as a displacement.
            let _ = slot.tx.try_send(Push::Revoked);
        }
    }

    pub fn is_online(&self, device: DeviceId) -> bool {
        self.lock().contains_key(&device)
    }

    pub fn online(&self) -> usize {
        self.lock().len()
    }

    /// The devices connected here.
    pub fn devices(&self) -> Vec<DeviceId> {
        self.lock().keys().copied().collect()
    }

    /// The current presence round, for a session start.
    pub fn presence_round(&self) -> u64 {
        self.round.load(Ordering::Acquire)
    }

    /// Starts a new presence round and lists the devices connected now (the
    /// round advances first, so a device attaching meanwhile reports this round
    /// or a later one).
    pub fn next_presence_round(&self) -> (u64, Vec<DeviceId>) {
        let round = self.round.fetch_add(1, Ordering::AcqRel) + 1;
        (round, self.devices())
    }
}

fn push(slot: &Slot, item: Push) {
    if let Err(mpsc::error::TrySendError::Full(_)) = slot.tx.try_send(item) {
        // The connection will see the flag with the next item it takes.
        slot.lagged.store(true, Ordering::Release);
    }
}

/// How the core hands a commit's deliveries to the live hop.
#[derive(Clone)]
pub enum Publisher {
    /// Straight to this process's connections.
    Local(Hub),
    /// Through JetStream, to whichever gateway holds each device.
    Nats(Box<nats::JsPublisher>),
}

impl Publisher {
    /// Never blocks: the writer thread calls this after each commit.
    pub fn publish(&self, batch: Vec<(DeviceId, Delivery)>) {
        match self {
            Self::Local(hub) => hub.publish(batch),
            Self::Nats(publisher) => publisher.publish(batch),
        }
    }
}

/// Which process holds which device, and how to reach its connection.
#[derive(Clone)]
pub enum Presence {
    /// One process: the hub knows; `gateway` names this process on NATS.
    Local { hub: Hub, gateway: GatewayId },
    /// A core with separate gateways: what they reported, and NATS to send them
    /// orders.
    Table {
        table: Arc<presence::PresenceTable>,
        nats: Box<nats::Nats>,
    },
}

impl Presence {
    pub fn gateway_of(&self, device: DeviceId) -> Option<GatewayId> {
        match self {
            Self::Local { hub, gateway } => hub.is_online(device).then(|| gateway.clone()),
            Self::Table { table, .. } => table.gateway_of(device),
        }
    }

    pub fn is_online(&self, device: DeviceId) -> bool {
        match self {
            Self::Local { hub, .. } => hub.is_online(device),
            Self::Table { table, .. } => table.gateway_of(device).is_some(),
        }
    }

    /// Devices online now, at any gateway.
    pub fn online(&self) -> usize {
        match self {
            Self::Local { hub, .. } => hub.online(),
            Self::Table { table, .. } => table.online(),
        }
    }

    /// A session of `device` started at `gateway` (in presence round `round`):
    /// its deliveries go there from now on, and a connection of the same device
    /// at another gateway is displaced. (In one process the hub did both when
    /// the session attached.)
    pub async fn session_started(&self, device: DeviceId, gateway: &GatewayId, round: u64) {
        if let Self::Table { table, nats } = self
            && let Some(previous) = table.connect(device, gateway, round, std::time::Instant::now())
        {
            nats::control(nats, &previous, GatewayControl::Displace { device }).await;
        }
    }

    /// Closes the device's connection wherever it is: its token no longer works.
    pub async fn revoke(&self, device: DeviceId) {
        match self {
            Self::Local { hub, .. } => hub.revoke(device),
            Self::Table { table, nats } => {
                if let Some(gateway) = table.gateway_of(device) {
                    table.disconnect(device, &gateway);
                    nats::control(nats, &gateway, GatewayControl::Revoke { device }).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(id: u64) -> Delivery {
        Delivery {
            id: DeliveryId(id),
            encoded: Arc::from("{\"type\":\"x\"}"),
            created_ms: 0,
        }
    }

    #[tokio::test]
    async fn second_attach_displaces_the_first() {
        let hub = Hub::default();
        let device = DeviceId::generate();
        let mut first = hub.attach(device);
        let mut second = hub.attach(device);
        assert!(first.rx.recv().await.is_none(), "the first receiver closes");
        hub.publish([(device, delivery(1))]);
        match second.rx.recv().await.unwrap() {
            Push::Deliver(d) => assert_eq!(d.id, DeliveryId(1)),
            other => panic!("expected a delivery, got {other:?}"),
        }
        hub.resync_all();
        assert!(matches!(second.rx.recv().await, Some(Push::Resync)));
        hub.displace(device);
        assert!(second.rx.recv().await.is_none(), "displaced");
        drop(first);
        drop(second);
        assert!(!hub.is_online(device));
        // Dropping a displaced attachment must not take a newer one offline.
        let older = hub.attach(device);
        let newer = hub.attach(device);
        drop(older);
        assert!(hub.is_online(device));
        drop(newer);
    }

    #[tokio::test]
    async fn a_full_queue_marks_the_connection_lagged() {
        let hub = Hub::default();
        let device = DeviceId::generate();
        let attachment = hub.attach(device);
        hub.publish((0..LIVE_QUEUE as u64 + 1).map(|i| (device, delivery(i))));
        assert!(attachment.lagged.load(Ordering::Acquire));
        // Offline devices are simply skipped.
        hub.publish([(DeviceId::generate(), delivery(1))]);
    }
}
