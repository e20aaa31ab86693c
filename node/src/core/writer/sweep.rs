//! The writer's share of retention: expiring inbox entries (and telling each
//! device with one `expired` event), deactivating unused devices, and dropping
//! old updates, idempotency keys and invites. Done in bounded steps, one commit
//! each, so writes keep flowing: [`SWEEP_DEVICES`] devices, and at most
//! `retention.sweep_step_rows` inbox entries, updates or idempotency keys, per
//! step. [`SweepCursor`] says where the next step starts. A device with more
//! old entries than one step takes gets one `expired` notice all the same.

use serde::{Deserialize, Serialize};

use super::{Batch, Delivery, Writer};
use crate::core::CoreError;
use crate::core::render;
use crate::ids::{DeliveryId, DeviceId};
use crate::store::{InboxEntry, InboxKind};

/// Devices examined per sweep step (one step is one commit).
pub(super) const SWEEP_DEVICES: usize = 256;

/// Where a sweep step starts: devices in id order, then chat updates (oldest
/// first), then idempotency keys in key order, then invites.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum SweepCursor {
    /// Devices after this one (all of them from the start).
    #[default]
    Start,
    DevicesAfter(DeviceId),
    Updates,
    /// Idempotency rows after this key (from the first one when `None`).
    Idempotency(Option<Vec<u8>>),
    Invites,
}

impl Writer {
    /// One bounded sweep step starting at `at`. Returns what it did and where
    /// the next step starts (`None`: the sweep is complete).
    pub(super) fn sweep(
        &mut self,
        b: &mut Batch<'_, '_>,
        at: SweepCursor,
    ) -> Result<(SweepReport, Option<SweepCursor>), CoreError> {
        let mut report = SweepReport::default();
        let cutoff = b.now.saturating_sub(self.config.retention_ms);
        let next = match at {
            SweepCursor::Start => self.sweep_devices(b, None, cutoff, &mut report)?,
            SweepCursor::DevicesAfter(d) => self.sweep_devices(b, Some(d), cutoff, &mut report)?,
            SweepCursor::Updates => self.sweep_updates(b, cutoff, &mut report)?,
            SweepCursor::Idempotency(after) => {
                self.sweep_idempotency(b, after, cutoff, &mut report)?
            }
            SweepCursor::Invites => {
                Self::sweep_invites(b, &mut report)?;
                None
            }
        };
        Ok((report, next))
    }

    /// The next [`SWEEP_DEVICES`] devices after `after`: deactivates those past
    /// their TTL and expires the others' old inbox entries, at most
    /// `sweep_step_rows` of them; a device with more is taken up again by the
    /// next step.
    fn sweep_devices(
        &mut self,
        b: &mut Batch<'_, '_>,
        after: Option<DeviceId>,
        cutoff: i64,
        report: &mut SweepReport,
    ) -> Result<Option<SweepCursor>, CoreError> {
        let dead_before = b.now.saturating_sub(self.config.device_ttl_ms);
        let devices = b.tx.view().devices_after(after, SWEEP_DEVICES)?;
        let resume_after =
            |d: Option<DeviceId>| d.map_or(SweepCursor::Start, SweepCursor::DevicesAfter);
        let mut budget = self.config.sweep_step_rows;
        // The last device this step finished with.
        let mut finished = after;
        for (device, record) in &devices {
            if record.last_active < dead_before && !self.presence.is_online(*device) {
                report.entries_expired += b.tx.delete_device(*device, record)?;
                if let Some(list) = self.devices.get_mut(&record.user) {
                    list.retain(|d| d != device);
                }
                report.devices_deactivated += 1;
                tracing::info!(%device, user = %record.user, "device deactivated after its TTL");
            } else {
                let (examined, more) = self.expire_entries(b, *device, cutoff, budget, report)?;
                budget -= examined;
                if more || budget == 0 {
                    let at = if more { finished } else { Some(*device) };
                    return Ok(Some(resume_after(at)));
                }
            }
            finished = Some(*device);
        }
        Ok(Some(match devices.last() {
            Some((last, _)) if devices.len() == SWEEP_DEVICES => SweepCursor::DevicesAfter(*last),
            _ => SweepCursor::Updates,
        }))
    }

    /// Replaces a device's entries queued before `cutoff` (at most `limit` of
    /// them) with one `expired` event (merged with an earlier old one), which the
    /// device acks like any other. Returns how many entries it removed and
    /// whether more old ones may follow.
    fn expire_entries(
        &mut self,
        b: &mut Batch<'_, '_>,
        device: DeviceId,
        cutoff: i64,
        limit: usize,
        report: &mut SweepReport,
    ) -> Result<(usize, bool), CoreError> {
        let entries = b.tx.view().inbox_after(device, 0, limit)?;
        let mut old: Vec<_> = entries
            .into_iter()
            .take_while(|(_, e)| e.queued_at < cutoff)
            .collect();
        let more = old.len() == limit;
        let removed = (old.len(), more);
        // The notice the previous step left for this device is folded in.
        if let Some((d, id)) = self.paged_notice.take()
            && d == device
            && let Some(notice) = b.tx.view().inbox_after(device, id - 1, 1)?.pop()
            && notice.0 == id
            && matches!(notice.1.kind, InboxKind::Expired { .. })
        {
            old.push(notice);
        }
        if old.is_empty() {
            return Ok((0, false));
        }
        let (mut count, mut oldest, mut newest) = (0u64, i64::MAX, i64::MIN);
        for (id, entry) in old {
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
            b.tx.delete_inbox(device, id);
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
        if more {
            // Not pushed: the next step folds it into its own notice.
            self.paged_notice = Some((device, id));
            return Ok(removed);
        }
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
        Ok(removed)
    }

    /// Up to `sweep_step_rows` chat updates older than `cutoff` (updates are kept
    /// oldest first, so the step ends at the first young one).
    fn sweep_updates(
        &self,
        b: &mut Batch<'_, '_>,
        cutoff: i64,
        report: &mut SweepReport,
    ) -> Result<Option<SweepCursor>, CoreError> {
        let rows = b.tx.updates_oldest(self.config.sweep_step_rows)?;
        let mut removed = 0;
        for (id, at) in &rows {
            if *at >= cutoff {
                break;
            }
            b.tx.delete_update(*id);
            removed += 1;
        }
        report.updates_removed += removed as u64;
        Ok(Some(if removed == self.config.sweep_step_rows {
            SweepCursor::Updates
        } else {
            SweepCursor::Idempotency(None)
        }))
    }

    /// The next `sweep_step_rows` idempotency keys after `after` (they are kept in
    /// key order, not by age, so every key is looked at): drops those older
    /// than `cutoff`.
    fn sweep_idempotency(
        &self,
        b: &mut Batch<'_, '_>,
        after: Option<Vec<u8>>,
        cutoff: i64,
        report: &mut SweepReport,
    ) -> Result<Option<SweepCursor>, CoreError> {
        let rows =
            b.tx.idem_rows_after(after.as_deref(), self.config.sweep_step_rows)?;
        for (key, _, at) in &rows {
            if *at < cutoff {
                b.tx.delete_raw_user_key(key);
                report.idempotency_keys_removed += 1;
            }
        }
        let full = rows.len() == self.config.sweep_step_rows;
        Ok(Some(match rows.into_iter().last() {
            Some((last, _, _)) if full => SweepCursor::Idempotency(Some(last)),
            _ => SweepCursor::Invites,
        }))
    }

    /// Invites past their expiry.
    fn sweep_invites(b: &mut Batch<'_, '_>, report: &mut SweepReport) -> Result<(), CoreError> {
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
    /// Messages of deleted chats removed.
    #[serde(default)]
    pub deleted_chat_messages_removed: u64,
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
        self.deleted_chat_messages_removed += other.deleted_chat_messages_removed;
    }
}
