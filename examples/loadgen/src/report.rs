//! Shared pieces of the results: rates, latency percentiles, error counts and
//! the final JSON line.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::usage::{CpuUse, Reading};

/// Error answers (and lost connections) by code.
pub(crate) type Errors = BTreeMap<String, u64>;

/// Adds `more` into `into`.
pub(crate) fn merge_errors(into: &mut Errors, more: Errors) {
    for (code, n) in more {
        *into.entry(code).or_default() += n;
    }
}

/// Events per second over `elapsed`.
pub(crate) fn per_sec(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

/// Latencies above this are recorded as this (`saturating_record`).
pub(crate) const MAX_LATENCY_US: u64 = 60_000_000;

/// A latency histogram in microseconds, 1 µs to 60 s, 3 significant digits.
/// Fixed bounds: an auto-resizing histogram clamps `saturating_record` at its
/// current (tiny) range instead of growing.
pub(crate) fn latency_histogram() -> Histogram<u64> {
    // Only fails for bounds or sigfig out of range; these are constants.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// p50/p90/p99/max of a microsecond histogram, in milliseconds.
pub(crate) struct Latency {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    pub(crate) fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: histogram.len(),
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            max: ms(histogram.max()),
        }
    }

    pub(crate) fn line(&self) -> String {
        format!(
            "p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} samples)",
            self.p50, self.p90, self.p99, self.max, self.count
        )
    }

    /// "p50 4.5 / p99 40.8 ms".
    pub(crate) fn short(&self) -> String {
        format!("p50 {:.1} / p99 {:.1} ms", self.p50, self.p99)
    }

    pub(crate) fn json(&self) -> Value {
        json!({
            "samples": self.count,
            "p50": round3(self.p50),
            "p90": round3(self.p90),
            "p99": round3(self.p99),
            "max": round3(self.max),
        })
    }
}

/// "none" or "rate_limited=3, closed=1".
pub(crate) fn errors_line(errors: &Errors) -> String {
    if errors.is_empty() {
        return "none".to_owned();
    }
    let parts: Vec<String> = errors.iter().map(|(k, n)| format!("{k}={n}")).collect();
    parts.join(", ")
}

/// Where a reading is missing: a running node given without `--pid`.
const UNKNOWN_PROCESS: &str = "unknown (not spawned; give --pid)";

/// "123456 KiB (120.6 MiB)", natterd's processes summed, then each of them when
/// there are several, then nats-server's when it was spawned.
pub(crate) fn rss_line(rss: Option<&Reading<u64>>) -> String {
    let Some(rss) = rss else {
        return UNKNOWN_PROCESS.to_owned();
    };
    let mut line = kib_text(rss.natterd_total());
    if rss.is_split() {
        let each = each_process(rss, |kib| format!("{:.1} MiB", mib(kib)));
        line.push_str(&format!(": {each}"));
    }
    if let Some(kib) = rss.nats {
        line.push_str(&format!("; nats-server {}", kib_text(kib)));
    }
    line
}

/// RSS numbers for the JSON line, `null` where unknown.
pub(crate) struct RssJson {
    /// natterd's processes summed.
    pub total: Value,
    pub by_process: Value,
    pub nats: Value,
}

impl RssJson {
    pub(crate) fn of(rss: Option<&Reading<u64>>) -> Self {
        Self {
            total: json!(rss.map(Reading::natterd_total)),
            by_process: rss.map_or(Value::Null, |r| r.by_process_json(Value::from)),
            nats: json!(rss.and_then(|r| r.nats)),
        }
    }
}

/// "natterd 2.000 s (core 1.000 s, gw1 0.500 s, gw2 0.500 s) in 2.00 s = 1.00
/// cores; nats-server 0.250 s = 0.12 cores": CPU time, and how many cores that
/// kept busy (when enough was spent to tell).
pub(crate) fn cpu_line(cpu: Option<&CpuUse>) -> String {
    let Some(cpu) = cpu else {
        return UNKNOWN_PROCESS.to_owned();
    };
    let cores = |d: Duration| d.as_secs_f64() / cpu.elapsed.as_secs_f64().max(f64::EPSILON);
    let total = cpu.used.natterd_total();
    let mut line = format!("natterd {:.3} s", total.as_secs_f64());
    if cpu.used.is_split() {
        let each = each_process(&cpu.used, |d| format!("{:.3} s", d.as_secs_f64()));
        line.push_str(&format!(" ({each})"));
    }
    if !cpu.resolves() {
        // A core count from a tick or two over milliseconds is noise.
        line.push_str(&format!(
            " in {:.3} s (too little for /proc's 10 ms ticks to tell)",
            cpu.elapsed.as_secs_f64()
        ));
        return line;
    }
    line.push_str(&format!(
        " in {:.2} s = {:.2} cores",
        cpu.elapsed.as_secs_f64(),
        cores(total)
    ));
    if let Some(nats) = cpu.used.nats {
        line.push_str(&format!(
            "; nats-server {:.3} s = {:.2} cores",
            nats.as_secs_f64(),
            cores(nats)
        ));
    }
    line
}

/// "natterd 12.30 µs (core 5.00, gw1 3.60, gw2 3.70), nats-server 2.10 µs": CPU time per
/// unit of work (a delivery, an event, a connection), in microseconds.
pub(crate) fn per_unit_line(cpu: Option<&CpuUse>, units: u64) -> String {
    let Some(cpu) = cpu else {
        return UNKNOWN_PROCESS.to_owned();
    };
    if units == 0 {
        return "n/a (nothing done in the window)".to_owned();
    }
    if !cpu.resolves() {
        return "n/a (too little CPU time for /proc's 10 ms ticks to tell)".to_owned();
    }
    let us = |d: Duration| per_unit_us(d, units);
    let mut line = format!("natterd {:.2} µs", us(cpu.used.natterd_total()));
    if cpu.used.is_split() {
        let each = each_process(&cpu.used, |d| format!("{:.2}", us(d)));
        line.push_str(&format!(" ({each})"));
    }
    if let Some(nats) = cpu.used.nats {
        line.push_str(&format!(", nats-server {:.2} µs", us(nats)));
    }
    line
}

/// CPU times for the JSON line (`null` when unknown), in seconds.
pub(crate) fn cpu_json(cpu: Option<&CpuUse>) -> Value {
    let Some(cpu) = cpu else {
        return Value::Null;
    };
    let secs = |d: Duration| json!(round3(d.as_secs_f64()));
    json!({
        "windowS": round3(cpu.elapsed.as_secs_f64()),
        "natterdS": secs(cpu.used.natterd_total()),
        "natterdByProcessS": cpu.used.by_process_json(secs),
        "natsServerS": cpu.used.nats.map(secs),
    })
}

/// CPU time per unit of work for the JSON line, in microseconds (`null` when
/// unknown, nothing was done, or too little CPU time was spent to tell).
pub(crate) fn per_unit_json(cpu: Option<&CpuUse>, units: u64) -> Value {
    let Some(cpu) = cpu.filter(|c| units > 0 && c.resolves()) else {
        return Value::Null;
    };
    let us = |d: Duration| json!(round3(per_unit_us(d, units)));
    json!({
        "natterd": us(cpu.used.natterd_total()),
        "natterdByProcess": cpu.used.by_process_json(us),
        "natsServer": cpu.used.nats.map(us),
    })
}

fn per_unit_us(cpu: Duration, units: u64) -> f64 {
    cpu.as_secs_f64() / units as f64 * 1e6
}

/// "core 1.0, gw1 2.0": each natterd process's number, formatted by `f`.
fn each_process<T: Copy>(reading: &Reading<T>, f: impl Fn(T) -> String) -> String {
    let parts: Vec<String> = reading
        .natterd
        .iter()
        .map(|(name, v)| format!("{name} {}", f(*v)))
        .collect();
    parts.join(", ")
}

fn kib_text(kib: u64) -> String {
    format!("{kib} KiB ({:.1} MiB)", mib(kib))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Two decimals are plenty for rates; keeps the JSON line readable.
pub(crate) fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The last line of every run: all its numbers, one JSON object.
pub(crate) fn print_json(value: &Value) {
    println!("{value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_in_milliseconds() {
        let mut h = latency_histogram();
        for us in 1..=1000 {
            h.record(us).unwrap();
        }
        let l = Latency::of(&h);
        assert_eq!(l.count, 1000);
        assert!((l.p50 - 0.5).abs() < 0.01, "{}", l.p50);
        assert!((l.max - 1.0).abs() < 0.01, "{}", l.max);
    }

    #[test]
    fn large_latencies_are_kept_up_to_the_bound() {
        let mut h = latency_histogram();
        h.saturating_record(1_500_000);
        h.saturating_record(MAX_LATENCY_US * 10);
        assert!(h.max() >= 1_500_000);
        assert!(h.max() >= MAX_LATENCY_US - MAX_LATENCY_US / 1000);
    }

    fn split_cpu() -> CpuUse {
        let secs = Duration::from_secs_f64;
        CpuUse {
            used: Reading {
                natterd: vec![
                    ("core".to_owned(), secs(1.0)),
                    ("gw1".to_owned(), secs(0.5)),
                    ("gw2".to_owned(), secs(0.5)),
                ],
                nats: Some(secs(0.25)),
            },
            elapsed: secs(2.0),
        }
    }

    #[test]
    fn cpu_is_summed_over_natterd_and_shown_per_process() {
        let cpu = split_cpu();
        assert_eq!(
            cpu_line(Some(&cpu)),
            "natterd 2.000 s (core 1.000 s, gw1 0.500 s, gw2 0.500 s) in 2.00 s = 1.00 cores; nats-server 0.250 s = 0.12 cores"
        );
        assert_eq!(
            per_unit_line(Some(&cpu), 100_000),
            "natterd 20.00 µs (core 10.00, gw1 5.00, gw2 5.00), nats-server 2.50 µs"
        );
        assert_eq!(
            per_unit_json(Some(&cpu), 100_000),
            json!({
                "natterd": 20.0,
                "natterdByProcess": {"core": 10.0, "gw1": 5.0, "gw2": 5.0},
                "natsServer": 2.5,
            })
        );
        assert_eq!(per_unit_json(Some(&cpu), 0), Value::Null);
        assert_eq!(per_unit_line(None, 1), UNKNOWN_PROCESS);
        let too_short = CpuUse {
            used: Reading {
                natterd: vec![("serve".to_owned(), Duration::from_millis(30))],
                nats: None,
            },
            elapsed: Duration::from_millis(50),
        };
        assert_eq!(per_unit_json(Some(&too_short), 1000), Value::Null);
        assert_eq!(
            cpu_line(Some(&too_short)),
            "natterd 0.030 s in 0.050 s (too little for /proc's 10 ms ticks to tell)"
        );
    }

    #[test]
    fn rss_lists_processes_only_when_there_are_several() {
        let one = Reading {
            natterd: vec![("serve".to_owned(), 2048)],
            nats: None,
        };
        assert_eq!(rss_line(Some(&one)), "2048 KiB (2.0 MiB)");
        let split = Reading {
            natterd: vec![("core".to_owned(), 2048), ("gw1".to_owned(), 1024)],
            nats: Some(512),
        };
        assert_eq!(
            rss_line(Some(&split)),
            "3072 KiB (3.0 MiB): core 2.0 MiB, gw1 1.0 MiB; nats-server 512 KiB (0.5 MiB)"
        );
        assert_eq!(rss_line(None), UNKNOWN_PROCESS);
    }

    #[test]
    fn merges_error_counts() {
        let mut a = Errors::from([("rate_limited".to_owned(), 2)]);
        merge_errors(
            &mut a,
            Errors::from([("rate_limited".to_owned(), 1), ("internal".to_owned(), 1)]),
        );
        assert_eq!(errors_line(&a), "internal=1, rate_limited=3");
    }
}
