//! What the node's processes use, read from /proc: resident memory and CPU time,
//! per process. natterd's processes are summed; nats-server (when spawned) is
//! kept apart, since it is the broker rather than the node.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Map, Value};

/// The unit of the CPU times in /proc/<pid>/stat. The kernel reports them in
/// USER_HZ, which is 100 on every Linux architecture natter runs on (it is what
/// `getconf CLK_TCK` prints); reading it with sysconf would need `unsafe`.
const TICKS_PER_SEC: u64 = 100;
/// Below this much natterd CPU time in a window (20 ticks), per-unit costs are
/// not reported: a reading is up to a tick off at each end, which would make
/// the result 10% or more wrong.
const MIN_CPU_TO_REPORT: Duration = Duration::from_millis(20 * 1000 / TICKS_PER_SEC);

/// One process, by the name the reports use (`serve`, `core`, `gw1`, …).
#[derive(Debug, Clone)]
pub(crate) struct Watched {
    pub name: String,
    pub pid: u32,
}

/// The processes of the node under test.
#[derive(Debug, Clone, Default)]
pub(crate) struct Processes {
    /// The one with the store first, then any gateways.
    pub natterd: Vec<Watched>,
    pub nats: Option<Watched>,
}

/// One number per process: natterd's by name, in process order, and
/// nats-server's.
#[derive(Debug, Clone)]
pub(crate) struct Reading<T> {
    pub natterd: Vec<(String, T)>,
    pub nats: Option<T>,
}

/// CPU time spent between two readings.
#[derive(Debug, Clone)]
pub(crate) struct CpuUse {
    pub used: Reading<Duration>,
    /// Wall-clock time between the readings.
    pub elapsed: Duration,
}

impl Processes {
    /// Resident memory in KiB; `None` when no natterd process is known (a
    /// running node given without `--pid`).
    pub(crate) fn rss_kib(&self) -> Result<Option<Reading<u64>>> {
        self.known().then(|| self.read(rss_kib)).transpose()
    }

    /// CPU time (user + system) so far; `None` as for [`Self::rss_kib`].
    pub(crate) fn cpu_time(&self) -> Result<Option<Reading<Duration>>> {
        self.known().then(|| self.read(cpu_time)).transpose()
    }

    fn known(&self) -> bool {
        !self.natterd.is_empty()
    }

    fn read<T>(&self, what: impl Fn(u32) -> Result<T>) -> Result<Reading<T>> {
        let natterd = self
            .natterd
            .iter()
            .map(|p| {
                let value = what(p.pid).with_context(|| format!("natterd {}", p.name))?;
                Ok((p.name.clone(), value))
            })
            .collect::<Result<_>>()?;
        let nats = self
            .nats
            .as_ref()
            .map(|p| what(p.pid).context("nats-server"))
            .transpose()?;
        Ok(Reading { natterd, nats })
    }
}

impl<T: Copy + std::iter::Sum<T>> Reading<T> {
    /// The sum over natterd's processes.
    pub(crate) fn natterd_total(&self) -> T {
        self.natterd.iter().map(|(_, v)| *v).sum()
    }

    /// More than one natterd process: worth listing each.
    pub(crate) fn is_split(&self) -> bool {
        self.natterd.len() > 1
    }

    /// `f` of each natterd process's number, keyed by process name.
    pub(crate) fn by_process_json(&self, f: impl Fn(T) -> Value) -> Value {
        let map: Map<String, Value> = self
            .natterd
            .iter()
            .map(|(name, v)| (name.clone(), f(*v)))
            .collect();
        Value::Object(map)
    }
}

impl Reading<u64> {
    /// Growth since `earlier` per process (never negative).
    pub(crate) fn growth_since(&self, earlier: &Self) -> Self {
        self.zip_with(earlier, u64::saturating_sub)
    }
}

impl Reading<Duration> {
    /// CPU time spent since `earlier`, per process.
    pub(crate) fn since(&self, earlier: &Self) -> Self {
        self.zip_with(earlier, Duration::saturating_sub)
    }
}

impl<T: Copy> Reading<T> {
    /// Combines two readings of the same processes, process by process.
    fn zip_with(&self, other: &Self, f: impl Fn(T, T) -> T) -> Self {
        let natterd = self
            .natterd
            .iter()
            .zip(&other.natterd)
            .map(|((name, a), (_, b))| (name.clone(), f(*a, *b)))
            .collect();
        let nats = self.nats.zip(other.nats).map(|(a, b)| f(a, b));
        Self { natterd, nats }
    }
}

impl CpuUse {
    pub(crate) fn between(
        start: &Reading<Duration>,
        end: &Reading<Duration>,
        elapsed: Duration,
    ) -> Self {
        Self {
            used: end.since(start),
            elapsed,
        }
    }

    /// Whether enough CPU time was spent for a per-unit cost to mean much.
    pub(crate) fn resolves(&self) -> bool {
        self.used.natterd_total() >= MIN_CPU_TO_REPORT
    }
}

/// VmRSS of a process, in KiB.
pub(crate) fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        // A process that exited but was not reaped yet has no memory left.
        .with_context(|| format!("no VmRSS in {path}: has the process exited?"))?;
    // The line reads `VmRSS:     12345 kB`.
    let kib = line.trim().trim_end_matches("kB").trim();
    kib.parse()
        .with_context(|| format!("VmRSS {line:?} in {path}"))
}

/// utime + stime of a process (all its threads), from /proc/<pid>/stat.
pub(crate) fn cpu_time(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    let ticks =
        stat_cpu_ticks(&stat).with_context(|| format!("no utime/stime in {path}: {stat}"))?;
    Ok(Duration::from_millis(ticks * 1000 / TICKS_PER_SEC))
}

/// utime + stime in clock ticks from the text of /proc/<pid>/stat. The second
/// field is the command name in parentheses, which may itself hold spaces and
/// parentheses, so fields are counted from the last `)`: the state is field 3,
/// utime 14 and stime 15.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_and_stime_past_an_awkward_name() {
        let stat =
            "4242 (nat) ter d) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 31 0 0 20 0 9 0 100 1 2";
        assert_eq!(stat_cpu_ticks(stat), Some(281));
        assert_eq!(stat_cpu_ticks("4242 (short) S 1"), None);
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        cpu_time(me).unwrap();
    }

    #[test]
    fn differences_are_per_process_and_never_negative() {
        let at = |core, gw, nats| Reading {
            natterd: vec![("core".to_owned(), core), ("gw1".to_owned(), gw)],
            nats: Some(nats),
        };
        let growth = at(10_u64, 5, 7).growth_since(&at(4, 6, 2));
        assert_eq!(growth.natterd, at(6_u64, 0, 5).natterd);
        assert_eq!(growth.nats, Some(5));
        assert_eq!(growth.natterd_total(), 6);
        assert_eq!(
            growth.by_process_json(Value::from),
            serde_json::json!({"core": 6, "gw1": 0})
        );
    }
}
