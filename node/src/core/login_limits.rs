//! Limits on logins and registrations: what keeps password guessing slow and
//! password hashing available, without letting a stranger lock a user out.
//!
//! Owns: a token bucket per client address for login and registration
//! attempts, and failed-login records per (address, user name) and per address,
//! each with a progressive delay. All maps are bounded (least recently used
//! entries go first) and keyed by address and a hash of the name, so neither
//! many addresses nor long names grow memory without limit.
//! Does not own: which address a request comes from (the gateway works it
//! out, `gateway::client_ip`, believing forwarding headers only from
//! `trusted_proxies`), or the hashing slots (`accounts::password_work`).
//!
//! Why per (address, user) and per address, never per user alone: a per-user
//! lock lets anyone lock anyone out by guessing wrong on purpose; keyed by the
//! guesser's address, a throttled address never stops the user logging in from
//! elsewhere. The per-address record bounds one address guessing many names.
//!
//! A guess counts from when it takes a hashing slot ([`LoginLimits::begin`]):
//! guesses in flight count as failures until they are decided, so parallel
//! requests cannot spend the budget several times over.
//!
//! Times are the node's clock in ms (adjustable in tests).

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::{Mutex, MutexGuard};

use lru::LruCache;

use crate::core::limits::{Bucket, Rate};

/// The `[logins]` settings (docs/configuration.md).
#[derive(Clone, Debug, PartialEq)]
pub struct LoginLimitsConfig {
    /// Sustained login and registration attempts per second per address.
    pub attempt_rate: f64,
    /// Attempts an address may make at once above the rate.
    pub attempt_burst: u32,
    /// Failed logins for one user name from one address before each further
    /// attempt waits.
    pub free_failures: u32,
    /// Failed logins from one address (any names) before each further attempt
    /// from it waits.
    pub free_failures_per_address: u32,
    /// The first wait; it doubles with every further failure.
    pub delay_ms: i64,
    /// The longest wait.
    pub max_delay_ms: i64,
    /// Failures are forgotten this long after the last one.
    pub forget_after_ms: i64,
    /// Failure records kept, in each of the two maps.
    pub max_records: usize,
    /// Addresses whose attempt rate is tracked.
    pub max_addresses: usize,
    /// IPv6 clients are counted by their network of this prefix length.
    pub ipv6_prefix: u8,
}

impl Default for LoginLimitsConfig {
    fn default() -> Self {
        Self {
            attempt_rate: 1.0,
            attempt_burst: 30,
            free_failures: 5,
            free_failures_per_address: 50,
            delay_ms: 1000,
            max_delay_ms: 15 * 60 * 1000,
            forget_after_ms: 60 * 60 * 1000,
            max_records: 100_000,
            max_addresses: 100_000,
            ipv6_prefix: 64,
        }
    }
}

impl LoginLimitsConfig {
    /// What is wrong with these settings, if anything.
    pub fn problem(&self) -> Option<&'static str> {
        if !(self.attempt_rate.is_finite() && self.attempt_rate > 0.0) || self.attempt_burst == 0 {
            return Some("attempt_rate and attempt_burst must be positive");
        }
        if self.free_failures == 0 || self.free_failures_per_address == 0 {
            return Some("free_failures and free_failures_per_address must be at least 1");
        }
        if self.delay_ms <= 0 || self.max_delay_ms < self.delay_ms {
            return Some("delay must be positive and max_delay at least delay");
        }
        if self.forget_after_ms < self.max_delay_ms {
            return Some("forget_after must be at least max_delay");
        }
        if self.max_records == 0 || self.max_addresses == 0 {
            return Some("max_records and max_addresses must be at least 1");
        }
        if !(1..=128).contains(&self.ipv6_prefix) {
            return Some("ipv6_prefix must be 1-128");
        }
        None
    }
}

/// A refusal: how long to wait and why.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Wait {
    pub retry_after_ms: u64,
    pub reason: &'static str,
    /// Which limit refused, for the metric `natter_logins_throttled_total`:
    /// `attempts` (the address's attempt rate, logins and registrations),
    /// `user_failures` (failed logins for one name from the address) or
    /// `address_failures` (failed logins from the address).
    pub limit: &'static str,
}

/// The address as the limits count it: an IPv4 address, or an IPv6 network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Net(IpAddr);

impl Net {
    fn of(ip: IpAddr, ipv6_prefix: u8) -> Self {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let mask = u128::MAX << (128 - u32::from(ipv6_prefix.clamp(1, 128)));
                Self(IpAddr::V6((u128::from(v6) & mask).into()))
            }
            v4 => Self(v4),
        }
    }
}

/// Failed logins of one key.
#[derive(Clone, Copy, Debug, Default)]
struct Record {
    failures: u32,
    /// When the last of them happened.
    last_ms: i64,
    /// Guesses being checked now; they count as failures until decided.
    in_flight: u32,
}

struct Maps {
    buckets: LruCache<Net, Bucket>,
    pairs: LruCache<(Net, u64), Record>,
    addresses: LruCache<Net, Record>,
}

pub(crate) struct LoginLimits {
    config: LoginLimitsConfig,
    maps: Mutex<Maps>,
    /// Hashes names with a key chosen at start, so nobody can pick names that
    /// collide on purpose.
    names: std::collections::hash_map::RandomState,
}

/// Records to look at for one attempt: the pair's and the address's.
#[derive(Clone, Copy)]
struct Keys {
    pair: (Net, u64),
    address: Net,
}

/// A guess that holds its place in the budget until it is decided. Dropped
/// undecided (a fault while hashing), it gives the place back.
pub(crate) struct Guess<'a> {
    limits: &'a LoginLimits,
    keys: Keys,
    done: bool,
}

impl Guess<'_> {
    /// The password was wrong (or the user unknown).
    pub(crate) fn failed(mut self, now_ms: i64) {
        self.done = true;
        self.limits.settle(self.keys, Some(now_ms));
    }

    /// The password was right: the pair's failures are forgotten. The
    /// address's are not, or a guesser with an account of its own could clear
    /// them by logging into it.
    pub(crate) fn succeeded(mut self) {
        self.done = true;
        self.limits.settle(self.keys, None);
    }
}

impl Drop for Guess<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.limits.release(self.keys);
        }
    }
}

impl LoginLimits {
    pub(crate) fn new(config: LoginLimitsConfig) -> Self {
        let cap = |n: usize| NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN);
        Self {
            maps: Mutex::new(Maps {
                buckets: LruCache::new(cap(config.max_addresses)),
                pairs: LruCache::new(cap(config.max_records)),
                addresses: LruCache::new(cap(config.max_records)),
            }),
            config,
            names: std::collections::hash_map::RandomState::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Maps> {
        // The maps stay consistent even if a holder panicked: every change is
        // one assignment.
        self.maps.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn keys(&self, client: IpAddr, name: &str) -> Keys {
        let address = Net::of(client, self.config.ipv6_prefix);
        Keys {
            pair: (address, self.names.hash_one(name)),
            address,
        }
    }

    /// Takes one attempt from the address's bucket (logins and
    /// registrations). Checked first, before any other work.
    pub(crate) fn attempt(&self, client: IpAddr, now_ms: i64) -> Result<(), Wait> {
        let rate = Rate::new(self.config.attempt_rate, self.config.attempt_burst);
        let net = Net::of(client, self.config.ipv6_prefix);
        let mut maps = self.lock();
        let bucket = maps
            .buckets
            .get_or_insert_mut(net, || Bucket::full(rate, now_ms));
        bucket.take(rate, now_ms).map_err(|retry_after_ms| Wait {
            retry_after_ms,
            reason: "too many login or registration attempts from this address; try again later",
            limit: "attempts",
        })
    }

    /// Whether a login for `name` from `client` would have to wait now. Reserves
    /// nothing: a cheap early refusal before the store is read.
    pub(crate) fn check(&self, client: IpAddr, name: &str, now_ms: i64) -> Result<(), Wait> {
        let keys = self.keys(client, name);
        let mut maps = self.lock();
        self.wait(&mut maps, keys, now_ms)
    }

    /// Checks again and takes a place in the budget for one guess. Called once
    /// a hashing slot is held, right before the password is checked.
    pub(crate) fn begin(&self, client: IpAddr, name: &str, now_ms: i64) -> Result<Guess<'_>, Wait> {
        let keys = self.keys(client, name);
        let mut maps = self.lock();
        self.wait(&mut maps, keys, now_ms)?;
        maps.pairs
            .get_or_insert_mut(keys.pair, Record::default)
            .in_flight += 1;
        maps.addresses
            .get_or_insert_mut(keys.address, Record::default)
            .in_flight += 1;
        Ok(Guess {
            limits: self,
            keys,
            done: false,
        })
    }

    fn wait(&self, maps: &mut Maps, keys: Keys, now_ms: i64) -> Result<(), Wait> {
        let c = &self.config;
        let pair = self.fresh(maps.pairs.peek_mut(&keys.pair), now_ms);
        let address = self.fresh(maps.addresses.peek_mut(&keys.address), now_ms);
        let pair_wait = self.delay(pair, c.free_failures, now_ms);
        let address_wait = self.delay(address, c.free_failures_per_address, now_ms);
        match (pair_wait, address_wait) {
            (None, None) => Ok(()),
            (Some(p), a) if a.is_none_or(|a| p >= a) => Err(Wait {
                retry_after_ms: p,
                reason: "too many failed logins for this user from this address; try again later",
                limit: "user_failures",
            }),
            (_, a) => Err(Wait {
                retry_after_ms: a.unwrap_or(1),
                reason: "too many failed logins from this address; try again later",
                limit: "address_failures",
            }),
        }
    }

    /// The record as it counts now: failures older than `forget_after` are
    /// forgotten.
    fn fresh(&self, record: Option<&mut Record>, now_ms: i64) -> Record {
        let Some(record) = record else {
            return Record::default();
        };
        if record.failures > 0
            && now_ms.saturating_sub(record.last_ms) >= self.config.forget_after_ms
        {
            record.failures = 0;
        }
        *record
    }

    /// How long a record with `free` failures allowed makes the next attempt
    /// wait, if at all.
    fn delay(&self, record: Record, free: u32, now_ms: i64) -> Option<u64> {
        let c = &self.config;
        if record.failures.saturating_add(record.in_flight) < free {
            return None;
        }
        if record.in_flight > 0 {
            // Over budget with guesses undecided: they decide the next wait.
            return Some(c.delay_ms as u64);
        }
        let doublings = (record.failures - free).min(40);
        let delay = c
            .delay_ms
            .saturating_mul(1 << doublings)
            .min(c.max_delay_ms);
        let until = record.last_ms.saturating_add(delay);
        (now_ms < until).then(|| (until - now_ms) as u64)
    }

    /// A guess was decided: `failed_at` is when it failed, `None` if it
    /// succeeded (then the pair's record is dropped once nothing is in flight).
    fn settle(&self, keys: Keys, failed_at: Option<i64>) {
        let decide = |record: &mut Record| {
            record.in_flight = record.in_flight.saturating_sub(1);
            if let Some(now_ms) = failed_at {
                record.failures = record.failures.saturating_add(1);
                record.last_ms = now_ms;
            }
        };
        let mut maps = self.lock();
        let pair = maps.pairs.get_or_insert_mut(keys.pair, Record::default);
        decide(pair);
        if failed_at.is_none() {
            pair.failures = 0;
        }
        if pair.failures == 0 && pair.in_flight == 0 {
            maps.pairs.pop(&keys.pair);
        }
        decide(
            maps.addresses
                .get_or_insert_mut(keys.address, Record::default),
        );
    }

    /// A guess ended undecided: it gives its place back.
    fn release(&self, keys: Keys) {
        let mut maps = self.lock();
        if let Some(r) = maps.pairs.peek_mut(&keys.pair) {
            r.in_flight = r.in_flight.saturating_sub(1);
        }
        if let Some(r) = maps.addresses.peek_mut(&keys.address) {
            r.in_flight = r.in_flight.saturating_sub(1);
        }
    }

    /// Entries in each map (tests, metrics).
    #[cfg(test)]
    fn sizes(&self) -> (usize, usize, usize) {
        let maps = self.lock();
        (maps.buckets.len(), maps.pairs.len(), maps.addresses.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LoginLimitsConfig {
        LoginLimitsConfig {
            attempt_rate: 2.0,
            attempt_burst: 3,
            free_failures: 2,
            free_failures_per_address: 5,
            delay_ms: 1000,
            max_delay_ms: 4000,
            forget_after_ms: 60_000,
            max_records: 100,
            max_addresses: 100,
            ipv6_prefix: 64,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// One login that fails at `now`.
    fn fail(limits: &LoginLimits, client: &str, name: &str, now: i64) -> Result<(), Wait> {
        limits.begin(ip(client), name, now)?.failed(now);
        Ok(())
    }

    fn waits(result: Result<(), Wait>) -> u64 {
        result.expect_err("should wait").retry_after_ms
    }

    #[test]
    fn the_bucket_allows_a_burst_then_refills_at_the_rate() {
        let limits = LoginLimits::new(config());
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            limits.attempt(a, 0).unwrap();
        }
        assert_eq!(waits(limits.attempt(a, 0)), 500, "2 per second");
        assert_eq!(waits(limits.attempt(a, 400)), 100);
        limits.attempt(a, 500).unwrap();
        // Another address has its own bucket.
        limits.attempt(ip("192.0.2.2"), 500).unwrap();
        // A clock that went back refills nothing.
        assert!(limits.attempt(a, 0).is_err());
    }

    #[test]
    fn failures_past_the_free_ones_wait_longer_and_longer_up_to_the_cap() {
        let limits = LoginLimits::new(config());
        let (a, name) = ("192.0.2.1", "alice");
        fail(&limits, a, name, 0).unwrap();
        fail(&limits, a, name, 10).unwrap();
        // Two free failures used: 1 s after the last one, then 2 s, 4 s, 4 s.
        assert_eq!(waits(limits.check(ip(a), name, 10)), 1000);
        assert_eq!(waits(fail(&limits, a, name, 500)), 510);
        fail(&limits, a, name, 1010).unwrap();
        assert_eq!(waits(limits.check(ip(a), name, 1010)), 2000);
        fail(&limits, a, name, 3010).unwrap();
        assert_eq!(waits(limits.check(ip(a), name, 3010)), 4000);
        fail(&limits, a, name, 7010).unwrap();
        assert_eq!(waits(limits.check(ip(a), name, 7010)), 4000, "capped");
        // Forgotten a while after the last failure.
        limits.check(ip(a), name, 7010 + 60_000).unwrap();
        fail(&limits, a, name, 70_000).unwrap();
        limits.check(ip(a), name, 70_000).unwrap();
    }

    #[test]
    fn a_throttled_address_does_not_lock_the_user_out_elsewhere() {
        let limits = LoginLimits::new(config());
        for t in 0..2 {
            fail(&limits, "192.0.2.1", "alice", t).unwrap();
        }
        assert!(limits.check(ip("192.0.2.1"), "alice", 5).is_err());
        limits.check(ip("198.51.100.7"), "alice", 5).unwrap();
        limits.check(ip("192.0.2.1"), "bob", 5).unwrap();
    }

    #[test]
    fn one_address_guessing_many_names_is_throttled_as_a_whole() {
        let limits = LoginLimits::new(config());
        for (t, name) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
            fail(&limits, "192.0.2.1", name, t as i64).unwrap();
        }
        let wait = limits.check(ip("192.0.2.1"), "f", 10).unwrap_err();
        assert_eq!(wait.retry_after_ms, 994);
        assert!(wait.reason.contains("from this address"), "{wait:?}");
        limits.check(ip("192.0.2.2"), "f", 10).unwrap();
    }

    #[test]
    fn guesses_in_flight_count_against_the_budget() {
        let limits = LoginLimits::new(config());
        let (a, name) = (ip("192.0.2.1"), "alice");
        let first = limits.begin(a, name, 0).unwrap();
        let second = limits.begin(a, name, 0).unwrap();
        // Both free failures are taken by guesses still being checked.
        assert_eq!(limits.begin(a, name, 0).err().unwrap().retry_after_ms, 1000);
        // One is decided right: the pair starts over.
        first.succeeded();
        second.failed(0);
        limits.begin(a, name, 0).unwrap().failed(0);
        assert!(limits.begin(a, name, 0).is_err());
        // An undecided guess (a fault) gives its place back.
        let limits = LoginLimits::new(config());
        drop(limits.begin(a, name, 0).unwrap());
        fail(&limits, "192.0.2.1", name, 0).unwrap();
        fail(&limits, "192.0.2.1", name, 0).unwrap();
    }

    #[test]
    fn a_success_clears_the_pair_but_not_the_address() {
        let limits = LoginLimits::new(config());
        for (t, name) in ["a", "b", "c", "d"].into_iter().enumerate() {
            fail(&limits, "192.0.2.1", name, t as i64).unwrap();
        }
        limits
            .begin(ip("192.0.2.1"), "mine", 10)
            .unwrap()
            .succeeded();
        fail(&limits, "192.0.2.1", "e", 10).unwrap();
        assert!(limits.check(ip("192.0.2.1"), "mine", 10).is_err());
    }

    #[test]
    fn ipv6_clients_count_by_network_and_mapped_ipv4_as_ipv4() {
        let limits = LoginLimits::new(config());
        for t in 0..2 {
            fail(&limits, "2001:db8:1:2::1", "alice", t).unwrap();
        }
        assert!(
            limits
                .check(ip("2001:db8:1:2:ffff::9"), "alice", 5)
                .is_err()
        );
        limits.check(ip("2001:db8:1:3::1"), "alice", 5).unwrap();
        for t in 0..2 {
            fail(&limits, "::ffff:192.0.2.9", "bob", t).unwrap();
        }
        assert!(limits.check(ip("192.0.2.9"), "bob", 5).is_err());
    }

    #[test]
    fn the_maps_are_bounded_and_drop_the_least_recently_used() {
        let limits = LoginLimits::new(LoginLimitsConfig {
            max_records: 2,
            max_addresses: 2,
            ..config()
        });
        for t in 0..2 {
            fail(&limits, "192.0.2.1", "alice", t).unwrap();
        }
        assert!(limits.check(ip("192.0.2.1"), "alice", 5).is_err());
        for (i, client) in ["192.0.2.2", "192.0.2.3", "192.0.2.4"].iter().enumerate() {
            limits.attempt(ip(client), 5).unwrap();
            fail(&limits, client, "bob", 5 + i as i64).unwrap();
        }
        assert_eq!(limits.sizes(), (2, 2, 2));
        // The oldest record went: that address starts over.
        limits.check(ip("192.0.2.1"), "alice", 10).unwrap();
    }

    #[test]
    fn the_defaults_are_valid_and_bad_settings_are_named() {
        assert_eq!(LoginLimitsConfig::default().problem(), None);
        let bad = LoginLimitsConfig {
            forget_after_ms: 1000,
            ..LoginLimitsConfig::default()
        };
        assert!(bad.problem().unwrap().contains("forget_after"));
        let bad = LoginLimitsConfig {
            attempt_rate: f64::NAN,
            ..LoginLimitsConfig::default()
        };
        assert!(bad.problem().is_some());
    }
}
