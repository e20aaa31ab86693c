//! Per-user rate limits and per-user quotas: their settings, and the token
//! buckets the core checks before a state-changing command reaches the writer.
//!
//! Owns: which command counts against which bucket ([`Class::of`]), the buckets
//! of the users seen recently, and evicting those of idle users.
//! Does not own: the per-connection send bucket (a cheap first line in the
//! gateway, `gateway::session`), or the quotas' checks (the writer makes them in
//! the transaction that would go over, so concurrent commands cannot both pass).
//!
//! The buckets live in the core, keyed by user name, and read the node's clock:
//! they hold across reconnects and across gateways (split mode has one core),
//! and tests move time with the adjustable clock instead of sleeping. A
//! federated command counts at its sender's node: a local user's command is
//! checked here before it is forwarded to a chat's home; a peer's action for a
//! chat homed here does not pass through [`super::Core::dispatch`].

use std::collections::HashMap;
use std::sync::Mutex;

use crate::ids::Username;
use crate::protocol::Command;

/// A token bucket's shape: `burst` commands at once, refilled at `per_second`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

impl Rate {
    pub const fn new(per_second: f64, burst: u32) -> Self {
        Self { per_second, burst }
    }

    pub fn is_valid(&self) -> bool {
        self.per_second.is_finite() && self.per_second > 0.0 && self.burst > 0
    }
}

/// The per-user rate of each command class (`limits.user_*` settings).
#[derive(Clone, Debug, PartialEq)]
pub struct UserRateConfig {
    /// `sendMessage`.
    pub send: Rate,
    /// `createChat`, `renameChat`, `modifyChatParticipants`.
    pub chat: Rate,
    /// `getAttachmentTarget`.
    pub upload: Rate,
    /// `markRead`.
    pub read: Rate,
    /// Users whose buckets are kept at once; past it, buckets that have refilled
    /// are dropped (and if that is not enough, all of them: the limiter forgets
    /// rather than refuse users it cannot track).
    pub tracked_users: usize,
}

impl Default for UserRateConfig {
    fn default() -> Self {
        Self {
            send: Rate::new(20.0, 100),
            chat: Rate::new(1.0, 30),
            upload: Rate::new(1.0, 30),
            read: Rate::new(20.0, 200),
            tracked_users: 100_000,
        }
    }
}

/// Per-user quotas (`limits.*_per_user`, `limits.pending_upload*` settings).
#[derive(Clone, Debug, PartialEq)]
pub struct Quotas {
    /// Chats of this node a local user may take part in; creating or being
    /// added to one more answers `quota_exceeded`.
    pub chats: usize,
    /// Devices (logins) per user; a login past it ends the user's least
    /// recently active device.
    pub devices: usize,
    /// Uploads not yet sent in a message (and not yet swept) per user.
    pub pending_uploads: usize,
    /// Their declared bytes, together.
    pub pending_upload_bytes: u64,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            chats: 10_000,
            devices: 32,
            pending_uploads: 32,
            pending_upload_bytes: 1 << 30,
        }
    }
}

/// The buckets a command may count against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Send,
    Chat,
    Upload,
    Read,
}

impl Class {
    const ALL: usize = 4;

    /// The bucket a command takes from; `None` for reads, acks and `sync`.
    pub fn of(command: &Command) -> Option<Self> {
        match command {
            Command::SendMessage { .. } => Some(Self::Send),
            Command::CreateChat { .. }
            | Command::RenameChat { .. }
            | Command::ModifyChatParticipants { .. } => Some(Self::Chat),
            Command::GetAttachmentTarget { .. } => Some(Self::Upload),
            Command::MarkRead { .. } => Some(Self::Read),
            Command::ListChats { .. }
            | Command::GetHistory { .. }
            | Command::GetAttachmentUrl { .. }
            | Command::Ack { .. }
            | Command::Sync => None,
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// What a refusal tells the client.
    pub fn refusal(self) -> &'static str {
        match self {
            Self::Send => "sending too fast; slow down",
            Self::Chat => "changing chats too fast; slow down",
            Self::Upload => "starting uploads too fast; slow down",
            Self::Read => "marking chats read too fast; slow down",
        }
    }
}

/// One token bucket: tokens left at `at_ms`. The one bucket of the node: the
/// per-user command rates here, the per-address login attempts
/// (`login_limits`) and each connection's sends (`gateway::session`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bucket {
    tokens: f64,
    at_ms: i64,
}

impl Bucket {
    pub(crate) fn full(rate: Rate, now_ms: i64) -> Self {
        Self {
            tokens: f64::from(rate.burst),
            at_ms: now_ms,
        }
    }

    /// Tokens at `now_ms` (a clock that went back refills nothing).
    fn level(&self, rate: Rate, now_ms: i64) -> f64 {
        let elapsed = now_ms.saturating_sub(self.at_ms).max(0) as f64 / 1000.0;
        (self.tokens + elapsed * rate.per_second).min(f64::from(rate.burst))
    }

    /// Takes a token, or says in how many milliseconds one will be there.
    /// A refusal takes nothing.
    pub(crate) fn take(&mut self, rate: Rate, now_ms: i64) -> Result<(), u64> {
        self.tokens = self.level(rate, now_ms);
        self.at_ms = self.at_ms.max(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / rate.per_second * 1000.0;
            // Less a hair, so float noise (1.0000000001 ms) does not round up.
            Err(((wait - 1e-6).ceil() as u64).max(1))
        }
    }
}

/// The buckets of the users seen recently. A user without buckets has full
/// ones, so dropping those that have refilled loses nothing.
pub(crate) struct UserRates {
    config: UserRateConfig,
    users: Mutex<HashMap<Username, [Bucket; Class::ALL]>>,
}

impl UserRates {
    pub(crate) fn new(config: UserRateConfig) -> Self {
        Self {
            config,
            users: Mutex::default(),
        }
    }

    fn rate(&self, class: Class) -> Rate {
        match class {
            Class::Send => self.config.send,
            Class::Chat => self.config.chat,
            Class::Upload => self.config.upload,
            Class::Read => self.config.read,
        }
    }

    fn rates(&self) -> [Rate; Class::ALL] {
        [Class::Send, Class::Chat, Class::Upload, Class::Read].map(|c| self.rate(c))
    }

    /// Takes a token of `class` for `user`, or says in how many milliseconds
    /// to retry.
    pub(crate) fn take(&self, user: &Username, class: Class, now_ms: i64) -> Result<(), u64> {
        let rates = self.rates();
        // A std mutex: held for a few hash-map operations, never across an await.
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if !users.contains_key(user) && users.len() >= self.config.tracked_users {
            users.retain(|_, buckets| !refilled(buckets, &rates, now_ms));
            // Mostly busy users: forget them all rather than scan on every
            // new user (each then starts from a full bucket again).
            if users.len() >= self.config.tracked_users / 4 * 3 {
                users.clear();
            }
        }
        let buckets = users
            .entry(user.clone())
            .or_insert_with(|| rates.map(|rate| Bucket::full(rate, now_ms)));
        buckets[class.index()].take(rates[class.index()], now_ms)
    }

    /// Drops the buckets of users idle long enough for them to be full again.
    pub(crate) fn prune(&self, now_ms: i64) {
        let rates = self.rates();
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        users.retain(|_, buckets| !refilled(buckets, &rates, now_ms));
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.users.lock().unwrap().len()
    }
}

fn refilled(buckets: &[Bucket; Class::ALL], rates: &[Rate; Class::ALL], now_ms: i64) -> bool {
    buckets
        .iter()
        .zip(rates)
        .all(|(bucket, rate)| bucket.level(*rate, now_ms) >= f64::from(rate.burst))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> Username {
        Username::parse(name).unwrap()
    }

    fn config(send: Rate, tracked_users: usize) -> UserRateConfig {
        UserRateConfig {
            send,
            tracked_users,
            ..UserRateConfig::default()
        }
    }

    #[test]
    fn a_user_gets_the_burst_then_a_retry_time_that_refills_one_token() {
        let rates = UserRates::new(config(Rate::new(4.0, 3), 10));
        let alice = user("alice");
        for _ in 0..3 {
            assert_eq!(rates.take(&alice, Class::Send, 1000), Ok(()));
        }
        assert_eq!(rates.take(&alice, Class::Send, 1000), Err(250));
        assert_eq!(
            rates.take(&alice, Class::Send, 1100),
            Err(150),
            "a refusal costs nothing"
        );
        assert_eq!(rates.take(&alice, Class::Send, 1250), Ok(()));
        assert_eq!(rates.take(&alice, Class::Send, 1250), Err(250));
    }

    #[test]
    fn classes_and_users_have_their_own_buckets() {
        let rates = UserRates::new(config(Rate::new(1.0, 1), 10));
        let (alice, bob) = (user("alice"), user("bob"));
        assert_eq!(rates.take(&alice, Class::Send, 0), Ok(()));
        assert!(rates.take(&alice, Class::Send, 0).is_err());
        assert_eq!(rates.take(&alice, Class::Chat, 0), Ok(()));
        assert_eq!(rates.take(&bob, Class::Send, 0), Ok(()));
    }

    #[test]
    fn a_clock_that_goes_back_refills_nothing() {
        let rates = UserRates::new(config(Rate::new(1.0, 1), 10));
        let alice = user("alice");
        assert_eq!(rates.take(&alice, Class::Send, 10_000), Ok(()));
        assert_eq!(rates.take(&alice, Class::Send, 5_000), Err(1000));
        assert_eq!(rates.take(&alice, Class::Send, 10_999), Err(1));
        assert_eq!(rates.take(&alice, Class::Send, 11_000), Ok(()));
    }

    #[test]
    fn idle_users_are_dropped_and_memory_stays_bounded() {
        let rates = UserRates::new(config(Rate::new(1.0, 2), 8));
        for i in 0..8 {
            assert_eq!(rates.take(&user(&format!("u{i}")), Class::Send, 0), Ok(()));
        }
        assert_eq!(rates.tracked(), 8);
        // One second later every bucket is full again: a new user makes room.
        assert_eq!(rates.take(&user("late"), Class::Send, 1000), Ok(()));
        assert_eq!(rates.tracked(), 1);
        // Busy users past the cap: forgotten rather than growing.
        for i in 0..20 {
            let _ = rates.take(&user(&format!("b{i}")), Class::Send, 1000);
            assert!(rates.tracked() <= 8);
        }
        rates.prune(10_000);
        assert_eq!(rates.tracked(), 0);
    }

    #[test]
    fn a_busy_user_is_not_dropped_while_idle_ones_are() {
        let rates = UserRates::new(config(Rate::new(1.0, 5), 4));
        let busy = user("busy");
        for _ in 0..5 {
            assert_eq!(rates.take(&busy, Class::Send, 0), Ok(()));
        }
        for i in 0..3 {
            assert_eq!(rates.take(&user(&format!("i{i}")), Class::Read, 0), Ok(()));
        }
        // At 100 ms the readers have refilled, the sender has not.
        assert_eq!(rates.take(&user("new"), Class::Send, 100), Ok(()));
        assert_eq!(rates.tracked(), 2);
        assert!(rates.take(&busy, Class::Send, 100).is_err());
    }

    #[test]
    fn every_state_changing_command_has_a_class_and_reads_have_none() {
        let chat = crate::ids::ChatId::generate();
        let send = Command::SendMessage {
            chat_id: chat,
            message: "x".into(),
            attachments: Vec::new(),
            client_msg_id: None,
        };
        assert_eq!(Class::of(&send), Some(Class::Send));
        let read = Command::MarkRead {
            chat_id: chat,
            seq: 1,
        };
        assert_eq!(Class::of(&read), Some(Class::Read));
        assert_eq!(Class::of(&Command::Sync), None);
    }
}
