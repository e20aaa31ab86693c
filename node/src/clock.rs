//! The node's notion of "now".
//!
//! Everything that ages (retention, device TTL, invites, timestamps on messages)
//! asks this clock instead of the system, so tests can move time forward on a real
//! `natterd` (through the admin API, only when `testing.adjustable_clock` is on)
//! instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;

#[derive(Clone, Debug, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
    adjustable: bool,
}

impl Clock {
    pub fn system() -> Self {
        Self::default()
    }

    /// A clock that [`Clock::advance`] can move forward.
    pub fn adjustable() -> Self {
        Self {
            offset_ms: Arc::default(),
            adjustable: true,
        }
    }

    pub fn is_adjustable(&self) -> bool {
        self.adjustable
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        let system = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        system as i64 + self.offset_ms.load(Ordering::Relaxed)
    }

    /// Moves the clock forward; refused on a system clock.
    pub fn advance(&self, ms: i64) -> bool {
        if self.adjustable && ms >= 0 {
            self.offset_ms.fetch_add(ms, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

/// RFC 3339 in UTC with exactly three fractional digits: clients get a fixed width.
const RFC3339_MILLIS: &[BorrowedFormatItem<'_>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// RFC 3339 in UTC with millisecond precision, e.g. `2026-01-01T00:00:00.000Z`.
pub fn rfc3339(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    let at = OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    at.format(RFC3339_MILLIS).unwrap_or_default()
}

/// A duration in whole milliseconds, as the clock counts them (saturating).
pub fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_fixed_milliseconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_767_225_600_123), "2026-01-01T00:00:00.123Z");
        assert_eq!(rfc3339(1_767_225_600_100), "2026-01-01T00:00:00.100Z");
    }

    #[test]
    fn millis_saturates() {
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
        assert_eq!(millis(Duration::MAX), i64::MAX);
    }

    #[test]
    fn only_adjustable_clocks_move() {
        let system = Clock::system();
        assert!(!system.advance(1000));
        let clock = Clock::adjustable();
        let before = clock.now_ms();
        assert!(clock.advance(86_400_000));
        assert!(clock.now_ms() >= before + 86_400_000);
    }
}
