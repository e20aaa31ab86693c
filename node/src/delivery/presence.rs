//! The core's table of which gateway holds which device, fed by the gateways
//! (session starts, session ends, heartbeats). Pure logic; the NATS side is in
//! [`super::nats`].
//!
//! Rules: a session start is the newest truth for its device (and tells the caller
//! which other gateway to displace); a heartbeat confirms the gateway is alive and
//! re-adds devices nobody else claims (after a core restart the table is rebuilt
//! this way) and drops the gateway's devices it no longer lists; a gateway silent
//! for longer than the expiry loses all its devices.
//!
//! Rounds: a gateway numbers its heartbeats, and each session start carries the
//! round that was current when the device attached. A heartbeat of round R drops
//! only devices that attached in an earlier round: a device that attached while
//! round R's list was being taken may be missing from it, and must stay.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::ids::{DeviceId, GatewayId};

#[derive(Default)]
struct Inner {
    device_gateway: HashMap<DeviceId, GatewayId>,
    /// gateway → (last heard, its devices with the round they were seen in)
    gateways: HashMap<GatewayId, (Instant, HashMap<DeviceId, u64>)>,
    /// Heartbeats arriving in parts: gateway → (round, parts seen, devices so far).
    assembling: HashMap<GatewayId, (u64, u32, Vec<DeviceId>)>,
}

pub struct PresenceTable {
    inner: Mutex<Inner>,
    expiry: Duration,
}

impl PresenceTable {
    pub fn new(expiry: Duration) -> Self {
        Self {
            inner: Mutex::default(),
            expiry,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A device connected at `gateway`. Returns the gateway it was on before, if
    /// another: that connection must be displaced.
    pub fn connect(
        &self,
        device: DeviceId,
        gateway: &GatewayId,
        round: u64,
        now: Instant,
    ) -> Option<GatewayId> {
        let mut inner = self.lock();
        let previous = inner.device_gateway.insert(device, gateway.clone());
        if let Some(old) = &previous
            && old != gateway
            && let Some((_, set)) = inner.gateways.get_mut(old)
        {
            set.remove(&device);
        }
        let entry = inner
            .gateways
            .entry(gateway.clone())
            .or_insert_with(|| (now, HashMap::new()));
        entry.0 = now;
        entry.1.insert(device, round);
        previous.filter(|old| old != gateway)
    }

    pub fn disconnect(&self, device: DeviceId, gateway: &GatewayId) {
        let mut inner = self.lock();
        if inner
            .device_gateway
            .get(&device)
            .is_some_and(|g| g == gateway)
        {
            inner.device_gateway.remove(&device);
        }
        if let Some((_, set)) = inner.gateways.get_mut(gateway) {
            set.remove(&device);
        }
    }

    /// One part of a heartbeat. The gateway counts as alive at once; its device
    /// list is replaced when every part of a round has arrived (a round with a
    /// lost part is simply superseded by the next).
    pub fn heartbeat_part(
        &self,
        gateway: &GatewayId,
        round: u64,
        parts: u32,
        devices: Vec<DeviceId>,
        now: Instant,
    ) {
        let complete = {
            let mut inner = self.lock();
            if let Some(entry) = inner.gateways.get_mut(gateway) {
                entry.0 = now;
            }
            let slot = inner
                .assembling
                .entry(gateway.clone())
                .or_insert_with(|| (round, 0, Vec::new()));
            if slot.0 != round {
                *slot = (round, 0, Vec::new());
            }
            slot.1 += 1;
            slot.2.extend(devices);
            (slot.1 >= parts).then(|| std::mem::take(&mut slot.2))
        };
        if let Some(all) = complete {
            self.lock().assembling.remove(gateway);
            self.heartbeat(gateway, round, &all, now);
        }
    }

    /// A gateway's full list of connected devices, as of `round`.
    pub fn heartbeat(&self, gateway: &GatewayId, round: u64, devices: &[DeviceId], now: Instant) {
        let mut inner = self.lock();
        let listed: HashSet<DeviceId> = devices.iter().copied().collect();
        let previous = inner
            .gateways
            .insert(gateway.clone(), (now, HashMap::new()))
            .map(|(_, set)| set)
            .unwrap_or_default();
        let mut kept: HashMap<DeviceId, u64> = HashMap::new();
        for (device, seen) in previous {
            if listed.contains(&device) {
                continue;
            }
            if seen >= round {
                // Attached while this list was taken: not gone.
                kept.insert(device, seen);
            } else if inner
                .device_gateway
                .get(&device)
                .is_some_and(|g| g == gateway)
            {
                inner.device_gateway.remove(&device);
            }
        }
        for device in listed {
            let owner = inner
                .device_gateway
                .entry(device)
                .or_insert_with(|| gateway.clone());
            if owner == gateway {
                kept.insert(device, round);
            }
        }
        if let Some(entry) = inner.gateways.get_mut(gateway) {
            entry.1 = kept;
        }
    }

    /// Forgets gateways not heard from within the expiry. Returns their ids.
    pub fn expire(&self, now: Instant) -> Vec<GatewayId> {
        let mut inner = self.lock();
        let dead: Vec<GatewayId> = inner
            .gateways
            .iter()
            .filter(|(_, (seen, _))| now.duration_since(*seen) > self.expiry)
            .map(|(g, _)| g.clone())
            .collect();
        for gateway in &dead {
            inner.assembling.remove(gateway);
            if let Some((_, devices)) = inner.gateways.remove(gateway) {
                for device in devices.into_keys() {
                    if inner.device_gateway.get(&device) == Some(gateway) {
                        inner.device_gateway.remove(&device);
                    }
                }
            }
        }
        dead
    }

    pub fn gateway_of(&self, device: DeviceId) -> Option<GatewayId> {
        self.lock().device_gateway.get(&device).cloned()
    }

    pub fn online(&self) -> usize {
        self.lock().device_gateway.len()
    }

    pub fn gateways(&self) -> usize {
        self.lock().gateways.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gateways' heartbeat period; the core expires a gateway after three
    /// (as `server.rs` sets it up).
    const HEARTBEAT: Duration = Duration::from_secs(5);

    /// Every gateway id in these tests is built here.
    fn gw(id: &str) -> GatewayId {
        GatewayId::parse(id).unwrap()
    }

    #[test]
    fn a_device_moves_and_the_old_gateway_is_told() {
        let table = PresenceTable::new(Duration::from_secs(15));
        let now = Instant::now();
        let d = DeviceId::generate();
        assert_eq!(table.connect(d, &gw("gw1"), 1, now), None);
        assert_eq!(table.connect(d, &gw("gw2"), 1, now), Some(gw("gw1")));
        assert_eq!(table.gateway_of(d).as_ref(), Some(&gw("gw2")));
        // A late heartbeat from gw1 still listing the device does not steal it back.
        table.heartbeat(&gw("gw1"), 2, &[d], now);
        assert_eq!(table.gateway_of(d).as_ref(), Some(&gw("gw2")));
        // gw1's late disconnect does not take it offline either.
        table.disconnect(d, &gw("gw1"));
        assert_eq!(table.gateway_of(d).as_ref(), Some(&gw("gw2")));
        table.disconnect(d, &gw("gw2"));
        assert_eq!(table.gateway_of(d), None);
    }

    #[test]
    fn a_heartbeat_taken_while_a_device_attached_does_not_drop_it() {
        let table = PresenceTable::new(Duration::from_secs(15));
        let now = Instant::now();
        let (old, new) = (DeviceId::generate(), DeviceId::generate());
        table.connect(old, &gw("gw1"), 4, now);
        // Round 5's list was taken before `new` attached in round 5.
        table.connect(new, &gw("gw1"), 5, now);
        table.heartbeat(&gw("gw1"), 5, &[], now);
        assert_eq!(
            table.gateway_of(old),
            None,
            "attached before round 5, not listed: gone"
        );
        assert_eq!(table.gateway_of(new).as_ref(), Some(&gw("gw1")));
        // Round 6 no longer lists it either: now it is gone.
        table.heartbeat(&gw("gw1"), 6, &[], now);
        assert_eq!(table.gateway_of(new), None);
    }

    #[test]
    fn heartbeats_in_parts_apply_when_complete() {
        let table = PresenceTable::new(Duration::from_secs(15));
        let now = Instant::now();
        let (a, b, c) = (
            DeviceId::generate(),
            DeviceId::generate(),
            DeviceId::generate(),
        );
        table.heartbeat_part(&gw("gw1"), 1, 2, vec![a], now);
        assert_eq!(table.gateway_of(a), None, "not before the last part");
        table.heartbeat_part(&gw("gw1"), 1, 2, vec![b], now);
        assert_eq!(table.online(), 2);
        // A round with a lost part is replaced by the next one.
        table.heartbeat_part(&gw("gw1"), 2, 2, vec![c], now);
        table.heartbeat_part(&gw("gw1"), 3, 1, vec![c], now);
        assert_eq!(table.gateway_of(c).as_ref(), Some(&gw("gw1")));
        assert_eq!(table.gateway_of(a), None);
    }

    #[test]
    fn heartbeats_rebuild_and_silence_expires() {
        let table = PresenceTable::new(Duration::from_secs(15));
        let t0 = Instant::now();
        let (a, b) = (DeviceId::generate(), DeviceId::generate());
        // After a core restart the table is empty; heartbeats refill it.
        table.heartbeat(&gw("gw1"), 1, &[a, b], t0);
        assert_eq!(table.online(), 2);
        table.heartbeat(&gw("gw1"), 2, &[a], t0);
        assert_eq!(table.gateway_of(b), None);
        table.heartbeat(&gw("gw2"), 1, &[], t0 + Duration::from_secs(10));
        let dead = table.expire(t0 + Duration::from_secs(20));
        assert_eq!(dead, vec![gw("gw1")]);
        assert_eq!(table.gateway_of(a), None);
        assert_eq!(table.gateways(), 1);
    }

    #[test]
    fn a_session_start_elsewhere_displaces_and_outlives_the_old_gateway() {
        let table = PresenceTable::new(HEARTBEAT * 3);
        let t0 = Instant::now();
        let (d, other) = (DeviceId::generate(), DeviceId::generate());
        assert_eq!(table.connect(d, &gw("gw1"), 1, t0), None);
        table.connect(other, &gw("gw1"), 1, t0);
        // A new connection on the same gateway is that gateway's own business.
        assert_eq!(table.connect(d, &gw("gw1"), 2, t0), None);
        assert_eq!(table.connect(d, &gw("gw2"), 1, t0), Some(gw("gw1")));
        assert_eq!(table.gateway_of(d), Some(gw("gw2")));
        assert_eq!(table.online(), 2);
        // gw1's next round no longer lists it: gw2 keeps it.
        table.heartbeat(&gw("gw1"), 3, &[other], t0 + HEARTBEAT);
        assert_eq!(table.gateway_of(d), Some(gw("gw2")));
        assert_eq!(table.gateway_of(other), Some(gw("gw1")));
        // gw1 falls silent: expiring it takes only the devices still on it.
        table.heartbeat(&gw("gw2"), 2, &[d], t0 + HEARTBEAT * 4);
        assert_eq!(table.expire(t0 + HEARTBEAT * 5), vec![gw("gw1")]);
        assert_eq!(table.gateway_of(d), Some(gw("gw2")));
        assert_eq!(table.gateway_of(other), None);
    }

    #[test]
    fn heartbeats_in_parts_rebuild_the_table_after_a_core_restart() {
        // A restarted core starts with an empty table.
        let table = PresenceTable::new(HEARTBEAT * 3);
        let t0 = Instant::now();
        let [a, b, c, d, e, moved] = std::array::from_fn(|_| DeviceId::generate());
        // Two gateways report at once, their parts interleaved.
        table.heartbeat_part(&gw("gw1"), 100, 3, vec![a, b], t0);
        table.heartbeat_part(&gw("gw2"), 700, 2, vec![d], t0);
        table.heartbeat_part(&gw("gw1"), 100, 3, vec![c], t0);
        assert_eq!(table.online(), 0, "no round is complete yet");
        table.heartbeat_part(&gw("gw2"), 700, 2, vec![e], t0);
        assert_eq!(table.gateway_of(d), Some(gw("gw2")));
        assert_eq!(table.gateway_of(e), Some(gw("gw2")));
        assert_eq!(
            table.gateway_of(a),
            None,
            "gw1's round is still missing a part"
        );
        // `moved` started a session at gw2 since: gw1's list does not take it back.
        assert_eq!(table.connect(moved, &gw("gw2"), 700, t0), None);
        table.heartbeat_part(&gw("gw1"), 100, 3, vec![moved], t0);
        for device in [a, b, c] {
            assert_eq!(table.gateway_of(device), Some(gw("gw1")));
        }
        assert_eq!(table.gateway_of(moved), Some(gw("gw2")));
        assert_eq!(table.online(), 6);
        assert_eq!(table.gateways(), 2);
        // A device learned from a heartbeat is displaced like any other.
        assert_eq!(table.connect(a, &gw("gw2"), 701, t0), Some(gw("gw1")));
    }

    #[test]
    fn a_device_attaching_while_a_round_in_parts_is_reported_is_kept() {
        let table = PresenceTable::new(HEARTBEAT * 3);
        let t0 = Instant::now();
        let (old, gone, new) = (
            DeviceId::generate(),
            DeviceId::generate(),
            DeviceId::generate(),
        );
        table.connect(old, &gw("gw1"), 6, t0);
        table.connect(gone, &gw("gw1"), 6, t0);
        // Round 7's list was taken (only `old` on it; `gone` had left), then `new`
        // attached, and its session start reached the core between the parts.
        table.heartbeat_part(&gw("gw1"), 7, 2, vec![old], t0);
        table.connect(new, &gw("gw1"), 7, t0);
        table.heartbeat_part(&gw("gw1"), 7, 2, vec![], t0);
        assert_eq!(table.gateway_of(old), Some(gw("gw1")));
        assert_eq!(
            table.gateway_of(gone),
            None,
            "attached in round 6 and not listed in round 7"
        );
        assert_eq!(table.gateway_of(new), Some(gw("gw1")));
        // Round 8 does not list it either: now it has left.
        table.heartbeat_part(&gw("gw1"), 8, 1, vec![old], t0 + HEARTBEAT);
        assert_eq!(table.gateway_of(new), None);
        assert_eq!(table.online(), 1);
    }

    #[test]
    fn a_gateway_silent_for_three_heartbeats_expires() {
        let table = PresenceTable::new(HEARTBEAT * 3);
        let t0 = Instant::now();
        let (a, b) = (DeviceId::generate(), DeviceId::generate());
        table.heartbeat(&gw("quiet"), 1, &[a], t0);
        table.heartbeat(&gw("alive"), 1, &[b], t0);
        // `alive` keeps beating, though only the first of two parts arrives each
        // round: that is still a sign of life, and its list stands.
        for n in 1..=3 {
            table.heartbeat_part(
                &gw("alive"),
                1 + u64::from(n),
                2,
                vec![],
                t0 + HEARTBEAT * n,
            );
        }
        assert!(
            table.expire(t0 + HEARTBEAT * 3).is_empty(),
            "three heartbeats is the limit, not past it"
        );
        assert_eq!(
            table.expire(t0 + HEARTBEAT * 3 + Duration::from_millis(1)),
            vec![gw("quiet")]
        );
        assert_eq!(table.gateway_of(a), None);
        assert_eq!(table.gateway_of(b), Some(gw("alive")));
        assert_eq!((table.gateways(), table.online()), (1, 1));
        // Back again later, its next heartbeat brings its devices back.
        table.heartbeat(&gw("quiet"), 2, &[a], t0 + HEARTBEAT * 4);
        assert_eq!(table.gateway_of(a), Some(gw("quiet")));
    }
}
