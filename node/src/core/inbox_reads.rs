//! A bound on inbox reads running at once (`limits.inbox_reads_in_flight`).
//!
//! A device's backlog and resend reads run on tokio's blocking pool, which every
//! other read of the node shares (logins' token checks, history, chat lists). A
//! reconnect storm (a gateway restarting, a network blip) starts one read per
//! device at the same moment; without a bound they would take every blocking
//! thread. Here each read first takes one of a fixed number of slots; the rest
//! wait their turn in arrival order (tokio's semaphore is fair), without a
//! thread.
//!
//! The metrics `natter_inbox_reads_waiting`, `natter_inbox_reads_in_flight` and
//! `natter_inbox_reads_in_flight_max` (the high-water mark since start) show it.
//!
//! For tests, a gate (`testing.inbox_read_gate`) can hold every read that has
//! its slot, as a slow disk would, until it is opened again.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::METRICS;

/// The default of `limits.inbox_reads_in_flight`.
pub const DEFAULT_IN_FLIGHT: usize = 8;

/// A held gate lets a read go after this long anyway, so a forgotten gate
/// cannot wedge a node's blocking threads for good.
const GATE_LIMIT: Duration = Duration::from_secs(60);

pub(crate) struct InboxReads {
    slots: Arc<Semaphore>,
    /// `Some` when `testing.inbox_read_gate` is on.
    gate: Option<Arc<Gate>>,
}

/// Reads in flight now, for the high-water mark.
static IN_FLIGHT: AtomicI64 = AtomicI64::new(0);
/// The most reads in flight at once since the process started.
static MAX_IN_FLIGHT: AtomicI64 = AtomicI64::new(0);

impl InboxReads {
    pub(crate) fn new(in_flight: usize, gate: bool) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(in_flight.max(1))),
            gate: gate.then(Arc::default),
        }
    }

    /// Waits for a slot. The slot is given back when the returned guard drops
    /// (the read moves it to its blocking thread, so a read given up by its
    /// caller keeps its slot until it has really finished).
    pub(crate) async fn slot(&self) -> Slot {
        let waiting = Waiting::start();
        // The semaphore is never closed.
        let permit = self.slots.clone().acquire_owned().await.ok();
        drop(waiting);
        let now = IN_FLIGHT.fetch_add(1, Ordering::AcqRel) + 1;
        METRICS.inbox_reads_in_flight.set(now);
        let max = MAX_IN_FLIGHT.fetch_max(now, Ordering::AcqRel).max(now);
        METRICS.inbox_reads_in_flight_max.set(max);
        Slot { _permit: permit }
    }

    /// Waits while the test gate is closed (on the read's blocking thread).
    pub(crate) fn gate(&self) -> Option<Arc<Gate>> {
        self.gate.clone()
    }

    /// Closes or opens the test gate; false when it is off.
    pub(crate) fn set_gate(&self, closed: bool) -> bool {
        match &self.gate {
            Some(gate) => {
                gate.set(closed);
                true
            }
            None => false,
        }
    }
}

/// One read's slot.
pub(crate) struct Slot {
    _permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let now = IN_FLIGHT.fetch_sub(1, Ordering::AcqRel) - 1;
        METRICS.inbox_reads_in_flight.set(now);
    }
}

/// Counts a read waiting for a slot, until dropped (also when the read is
/// given up while it waits).
struct Waiting;

impl Waiting {
    fn start() -> Self {
        METRICS.inbox_reads_waiting.inc();
        Self
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        METRICS.inbox_reads_waiting.dec();
    }
}

/// The test gate: closed, it holds reads that have their slot.
#[derive(Default)]
pub(crate) struct Gate {
    closed: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn set(&self, closed: bool) {
        *self.closed.lock().unwrap_or_else(|e| e.into_inner()) = closed;
        if !closed {
            self.opened.notify_all();
        }
    }

    /// Blocks this (blocking-pool) thread while the gate is closed.
    pub(crate) fn pass(&self) {
        let closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
        let _unused = self
            .opened
            .wait_timeout_while(closed, GATE_LIMIT, |closed| *closed);
    }
}
