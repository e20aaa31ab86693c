//! The live hop: getting a committed delivery to the connection that holds its
//! device, right now.
//!
//! Owns: [`Hub`], the map from online device to its connection's queue, and the
//! [`Delivery`] that travels on it.
//! Does not own: durability. The fjall inbox is the truth; a delivery that this hop
//! drops (device offline, queue full) is still in the inbox and reaches the device
//! through replay. So every operation here is non-blocking and may drop.
//!
//! Invariant: deliveries are published in commit order, and delivery ids grow in
//! commit order, so a connection sees ids ascending on this hop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::ids::{DeliveryId, DeviceId};

/// One event for one device: the id is per device, the encoded event is shared by
/// every recipient of the same event (serialized once).
#[derive(Clone, Debug)]
pub struct Delivery {
    pub id: DeliveryId,
    pub encoded: Arc<str>,
}

/// How many live deliveries may wait for a connection's task before the hop
/// declares it lagged (it then catches up from the inbox).
const LIVE_QUEUE: usize = 256;

struct Slot {
    generation: u64,
    tx: mpsc::Sender<Delivery>,
    lagged: Arc<AtomicBool>,
}

/// Online devices of this process. Cheap to clone.
#[derive(Clone, Default)]
pub struct Hub {
    slots: Arc<Mutex<HashMap<DeviceId, Slot>>>,
    generation: Arc<AtomicU64>,
}

/// A connection's end of the hop. Dropping it takes the device offline, unless a
/// newer connection of the same device has displaced it already.
pub struct Attachment {
    pub rx: mpsc::Receiver<Delivery>,
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
            if let Some(slot) = slots.get(&device)
                && let Err(mpsc::error::TrySendError::Full(_)) = slot.tx.try_send(delivery)
            {
                slot.lagged.store(true, Ordering::Release);
            }
        }
    }

    pub fn is_online(&self, device: DeviceId) -> bool {
        self.lock().contains_key(&device)
    }

    pub fn online(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(id: u64) -> Delivery {
        Delivery {
            id: DeliveryId(id),
            encoded: Arc::from("{\"type\":\"x\"}"),
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
        assert_eq!(second.rx.recv().await.unwrap().id, DeliveryId(1));
        // Dropping the displaced attachment must not take the device offline.
        drop(first);
        assert!(hub.is_online(device));
        drop(second);
        assert!(!hub.is_online(device));
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
