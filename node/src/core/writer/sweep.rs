//! The writer's share of retention: expiring inbox entries (and telling each
//! device with one `expired` event), deactivating unused devices, and dropping
//! old updates, idempotency keys and invites. Done in steps of
//! [`SWEEP_DEVICES`] devices, one commit each, so writes keep flowing.

use serde::{Deserialize, Serialize};

use super::{Batch, Delivery, Writer};
use crate::core::CoreError;
use crate::core::render;
use crate::ids::{DeliveryId, DeviceId};
use crate::store::{InboxEntry, InboxKind};

/// Devices examined per sweep step (one step is one commit).
pub(super) const SWEEP_DEVICES: usize = 256;
/// Old inbox entries of one device handled in one sweep step.
const SWEEP_ENTRIES: usize = 100_000;
/// Idempotency rows and updates examined per sweep.
const SWEEP_ROWS: usize = 100_000;

impl Writer {
    /// One sweep step: the next [`SWEEP_DEVICES`] devices after `after`, and
    /// (in the first step) the node-wide rows. Returns where the next step starts.
    pub(super) fn sweep(
        &mut self,
        b: &mut Batch<'_, '_>,
        after: Option<DeviceId>,
    ) -> Result<(SweepReport, Option<DeviceId>), CoreError> {
        let mut report = SweepReport::default();
        let cutoff = b.now.saturating_sub(self.config.retention_ms);
        let dead_before = b.now.saturating_sub(self.config.device_ttl_ms);
        let devices = b.tx.view().devices_after(after, SWEEP_DEVICES)?;
        for (device, record) in &devices {
            if record.last_active < dead_before && !self.presence.is_online(*device) {
                report.entries_expired += b.tx.delete_device(*device, record)?;
                if let Some(list) = self.devices.get_mut(&record.user) {
                    list.retain(|d| d != device);
                }
                report.devices_deactivated += 1;
                tracing::info!(%device, user = %record.user, "device deactivated after its TTL");
                continue;
            }
            self.expire_entries(b, *device, cutoff, &mut report)?;
        }
        if after.is_none() {
            Self::sweep_rows(b, cutoff, &mut report)?;
        }
        let next = (devices.len() == SWEEP_DEVICES)
            .then(|| devices.last().map(|(d, _)| *d))
            .flatten();
        Ok((report, next))
    }

    /// Replaces a device's entries queued before `cutoff` with one `expired`
    /// event (merged with an earlier one), which the device acks like any other.
    fn expire_entries(
        &mut self,
        b: &mut Batch<'_, '_>,
        device: DeviceId,
        cutoff: i64,
        report: &mut SweepReport,
    ) -> Result<(), CoreError> {
        let entries = b.tx.view().inbox_after(device, 0, SWEEP_ENTRIES)?;
        let old: Vec<_> = entries
            .iter()
            .take_while(|(_, e)| e.queued_at < cutoff)
            .collect();
        if old.is_empty() {
            return Ok(());
        }
        let (mut count, mut oldest, mut newest) = (0u64, i64::MAX, i64::MIN);
        for (id, entry) in &old {
            let (n, from, to) = match entry.kind {
                InboxKind::Expired {
                    count,
                    oldest,
                    newest,
                } => (count, oldest, newest),
                _ => {
                    report.entries_expired += 1;
                    (1, entry.queued_at, entry.queued_at)
                }
            };
            count += n;
            oldest = oldest.min(from);
            newest = newest.max(to);
            b.tx.delete_inbox(device, *id);
        }
        let id = self.next_delivery();
        let kind = InboxKind::Expired {
            count,
            oldest,
            newest,
        };
        let entry = InboxEntry {
            queued_at: b.now,
            kind,
        };
        b.tx.put_inbox(device, id, &entry);
        let event = render::expired_event(count, oldest, newest);
        b.pushes.push((
            device,
            Delivery {
                id: DeliveryId(id),
                encoded: event.encode(),
                created_ms: crate::metrics::wall_ms(),
            },
        ));
        report.devices_notified += 1;
        Ok(())
    }

    /// Node-wide rows past their time: chat updates and idempotency keys older
    /// than `cutoff`, expired invites.
    fn sweep_rows(
        b: &mut Batch<'_, '_>,
        cutoff: i64,
        report: &mut SweepReport,
    ) -> Result<(), CoreError> {
        for (id, at) in b.tx.updates_oldest(SWEEP_ROWS)? {
            if at >= cutoff {
                break;
            }
            b.tx.delete_update(id);
            report.updates_removed += 1;
        }
        for (key, _, at) in b.tx.idem_rows_after(None, SWEEP_ROWS)? {
            if at < cutoff {
                b.tx.delete_raw_user_key(&key);
                report.idempotency_keys_removed += 1;
            }
        }
        for (code, invite) in b.tx.view().invites()? {
            if invite.expires_at <= b.now {
                b.tx.delete_invite(&code);
                report.invites_removed += 1;
            }
        }
        Ok(())
    }
}

/// What one retention/expiry sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SweepReport {
    pub devices_deactivated: u64,
    pub entries_expired: u64,
    pub devices_notified: u64,
    pub updates_removed: u64,
    pub idempotency_keys_removed: u64,
    pub invites_removed: u64,
    pub orphan_uploads_removed: u64,
    pub attachments_expired: u64,
}

impl SweepReport {
    pub fn add(&mut self, other: &SweepReport) {
        self.devices_deactivated += other.devices_deactivated;
        self.entries_expired += other.entries_expired;
        self.devices_notified += other.devices_notified;
        self.updates_removed += other.updates_removed;
        self.idempotency_keys_removed += other.idempotency_keys_removed;
        self.invites_removed += other.invites_removed;
        self.orphan_uploads_removed += other.orphan_uploads_removed;
        self.attachments_expired += other.attachments_expired;
    }
}
