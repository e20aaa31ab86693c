//! The node's notion of "now".
//!
//! Everything that ages (retention, device TTL, invites, timestamps on messages)
//! asks this clock instead of the system, so tests can move time forward on a real
//! `natterd` (through the admin API, only when `testing.adjustable_clock` is on)
//! instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

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

/// A duration in whole milliseconds, saturating (the unit timestamps here use).
pub fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// RFC 3339 in UTC with millisecond precision, e.g. `2026-01-01T00:00:00.000Z`.
pub fn rfc3339(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    let at = OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let mut s = at.format(&Rfc3339).unwrap_or_default();
    // `time` prints as many fractional digits as needed; clients get a fixed three.
    if let Some(dot) = s.find('.') {
        let end = s.len() - 1; // the trailing 'Z'
        let mut frac: String = s[dot + 1..end].chars().take(3).collect();
        while frac.len() < 3 {
            frac.push('0');
        }
        s = format!("{}.{}Z", &s[..dot], frac);
    } else {
        s = format!("{}.000Z", &s[..s.len() - 1]);
    }
    s
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
    fn only_adjustable_clocks_move() {
        let system = Clock::system();
        assert!(!system.advance(1000));
        let clock = Clock::adjustable();
        let before = clock.now_ms();
        assert!(clock.advance(86_400_000));
        assert!(clock.now_ms() >= before + 86_400_000);
    }
}
