//! Shared pieces of the results: rates, latency percentiles, error counts and
//! the final JSON line.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Error answers (and lost connections) by code.
pub type Errors = BTreeMap<String, u64>;

/// Adds `more` into `into`.
pub fn merge_errors(into: &mut Errors, more: Errors) {
    for (code, n) in more {
        *into.entry(code).or_default() += n;
    }
}

/// Events per second over `elapsed`.
pub fn per_sec(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

/// Latencies above this are recorded as this (`saturating_record`).
pub const MAX_LATENCY_US: u64 = 60_000_000;

/// A latency histogram in microseconds, 1 µs to 60 s, 3 significant digits.
/// Fixed bounds: an auto-resizing histogram clamps `saturating_record` at its
/// current (tiny) range instead of growing.
pub fn latency_histogram() -> Histogram<u64> {
    // Only fails for bounds or sigfig out of range; these are constants.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// p50/p90/p99/max of a microsecond histogram, in milliseconds.
pub struct Latency {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: histogram.len(),
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            max: ms(histogram.max()),
        }
    }

    pub fn line(&self) -> String {
        format!(
            "p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} samples)",
            self.p50, self.p90, self.p99, self.max, self.count
        )
    }

    pub fn json(&self) -> Value {
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
pub fn errors_line(errors: &Errors) -> String {
    if errors.is_empty() {
        return "none".to_owned();
    }
    let parts: Vec<String> = errors.iter().map(|(k, n)| format!("{k}={n}")).collect();
    parts.join(", ")
}

/// "123456 KiB (120.6 MiB)", or a note when natterd's process is unknown.
pub fn rss_line(kib: Option<u64>) -> String {
    match kib {
        Some(kib) => format!("{kib} KiB ({:.1} MiB)", kib as f64 / 1024.0),
        None => "unknown (not spawned; give --pid)".to_owned(),
    }
}

/// Two decimals are plenty for rates; keeps the JSON line readable.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The last line of every run: all its numbers, one JSON object.
pub fn print_json(value: &Value) {
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
