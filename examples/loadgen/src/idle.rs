//! `idle`: the memory natterd spends per open, idle WebSocket.
//!
//! natterd's RSS (summed over its processes) is read after provisioning and
//! before the first connection, then again once all connections are ready and
//! the RSS stopped growing; the difference divided by the connections is the
//! cost of one. The CPU time spent while opening them is the cost of a connect.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::json;
use tokio::time::{Instant, MissedTickBehavior};

use crate::idlers::Idlers;
use crate::node::{Node, TargetArgs};
use crate::report::{self, Latency, RssJson};
use crate::usage::{CpuUse, Processes, Reading};

/// How often RSS is sampled while waiting for it to settle.
const SETTLE_POLL: Duration = Duration::from_millis(250);
/// RSS counts as settled once it has not grown for this long...
const SETTLE_QUIET: Duration = Duration::from_secs(2);
/// ...or when this much time has passed anyway.
const SETTLE_MAX: Duration = Duration::from_secs(20);

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    target: TargetArgs,
    /// Open WebSockets, one per device.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Devices of each user (users = connections / this, rounded up).
    #[arg(long, default_value_t = 100)]
    devices_per_user: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
}

/// How opening the connections went.
struct Opened {
    /// From the first connect to the last `ready`.
    elapsed: Duration,
    /// Each connection, from its TCP connect to its `ready`.
    each: Latency,
    /// The node's CPU time meanwhile.
    cpu: CpuUse,
}

/// natterd's RSS once it stopped growing.
struct Settled {
    rss_kib: Reading<u64>,
    waited: Duration,
    /// False when it was still growing after `SETTLE_MAX`.
    quiet: bool,
}

pub(crate) async fn run(args: Args, nofile_limit: u64) -> Result<()> {
    ensure!(args.connections >= 1, "--connections must be at least 1");
    ensure!(
        args.devices_per_user >= 1 && args.connect_concurrency >= 1,
        "--devices-per-user and --connect-concurrency must be at least 1"
    );
    // Each connection is one descriptor here (and one in a spawned natterd, which
    // inherits this limit); leave room for everything else.
    ensure!(
        args.connections as u64 + 256 <= nofile_limit,
        "the open-files limit ({nofile_limit}) is too low for {} connections; raise the hard limit (ulimit -Hn)",
        args.connections
    );
    let node = Node::start(&args.target).await?;
    let processes = node.processes().clone();
    ensure!(
        !processes.natterd.is_empty(),
        "idle measures natterd's memory: use --natterd, or --pid with --url"
    );

    eprintln!(
        "creating {} devices, up to {} per user",
        args.connections, args.devices_per_user
    );
    let tokens = node
        .provision("u", args.connections, args.devices_per_user)
        .await?;
    let before_kib = read_rss(&processes)?;
    eprintln!(
        "natterd RSS before connecting: {}",
        report::rss_line(Some(&before_kib))
    );

    eprintln!(
        "opening {} connections, {} at a time",
        tokens.len(),
        args.connect_concurrency
    );
    let (mut idlers, opened) = open(&node, &tokens, args.connect_concurrency).await?;
    eprintln!(
        "all ready after {:?}; waiting for natterd's RSS to settle",
        opened.elapsed
    );

    let settled = settle(&processes).await?;
    let lost = idlers.lost();
    idlers.close().await;
    node.stop();

    print_results(&args, &before_kib, &settled, &opened, lost);
    Ok(())
}

/// Opens the connections, timing them and the node's CPU time meanwhile.
async fn open(node: &Node, tokens: &[String], concurrency: usize) -> Result<(Idlers, Opened)> {
    let processes = node.processes();
    let cpu_before = read_cpu(processes)?;
    let opening = Instant::now();
    let (idlers, connect_us) = Idlers::open(node, tokens, concurrency).await?;
    let elapsed = opening.elapsed();
    let cpu = CpuUse::between(&cpu_before, &read_cpu(processes)?, elapsed);
    let opened = Opened {
        elapsed,
        each: Latency::of(&connect_us),
        cpu,
    };
    Ok((idlers, opened))
}

/// natterd's RSS; the caller made sure its processes are known.
fn read_rss(processes: &Processes) -> Result<Reading<u64>> {
    processes
        .rss_kib()?
        .context("natterd's processes are unknown")
}

/// natterd's CPU time; the caller made sure its processes are known.
fn read_cpu(processes: &Processes) -> Result<Reading<Duration>> {
    processes
        .cpu_time()?
        .context("natterd's processes are unknown")
}

/// Polls natterd's RSS (summed over its processes) until it has not grown for
/// `SETTLE_QUIET`, at most `SETTLE_MAX`: the node allocates lazily (buffers,
/// task state), so a reading taken right after the last `ready` would miss part
/// of the cost.
async fn settle(processes: &Processes) -> Result<Settled> {
    let started = Instant::now();
    let mut peak = read_rss(processes)?.natterd_total();
    let mut grew_at = started;
    let mut poll = tokio::time::interval(SETTLE_POLL);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        poll.tick().await;
        let rss_kib = read_rss(processes)?;
        if rss_kib.natterd_total() > peak {
            peak = rss_kib.natterd_total();
            grew_at = Instant::now();
        }
        let quiet = grew_at.elapsed() >= SETTLE_QUIET;
        if quiet || started.elapsed() >= SETTLE_MAX {
            return Ok(Settled {
                rss_kib,
                waited: started.elapsed(),
                quiet,
            });
        }
    }
}

fn print_results(
    args: &Args,
    before_kib: &Reading<u64>,
    settled: &Settled,
    opened: &Opened,
    lost: usize,
) {
    let growth = settled.rss_kib.growth_since(before_kib);
    let growth_kib = growth.natterd_total();
    let per_conn_kib = growth_kib as f64 / args.connections as f64;
    let connects_per_sec = report::per_sec(args.connections as u64, opened.elapsed);
    let connections = args.connections as u64;
    println!(
        "idle: {} connections ({} devices per user)",
        args.connections, args.devices_per_user
    );
    println!(
        "opened:      all ready in {:.0} ms ({connects_per_sec:.0} connections/s)",
        opened.elapsed.as_secs_f64() * 1e3
    );
    println!("each:        {} (connect -> ready)", opened.each.line());
    println!("open CPU:    {}", report::cpu_line(Some(&opened.cpu)));
    println!(
        "CPU/connect: {}",
        report::per_unit_line(Some(&opened.cpu), connections)
    );
    println!("RSS before:  {}", report::rss_line(Some(before_kib)));
    println!(
        "RSS after:   {}, {} after {:.1} s",
        report::rss_line(Some(&settled.rss_kib)),
        if settled.quiet {
            "settled"
        } else {
            "still growing"
        },
        settled.waited.as_secs_f64()
    );
    println!("growth:      {}", growth_line(&growth, per_conn_kib));
    if lost > 0 {
        println!("lost:        {lost} connections ended before the measurement did");
    }
    let before = RssJson::of(Some(before_kib));
    let after = RssJson::of(Some(&settled.rss_kib));
    let grown = RssJson::of(Some(&growth));
    report::print_json(&json!({
        "bench": "idle",
        "topology": args.target.topology_name(),
        "connections": args.connections,
        "devicesPerUser": args.devices_per_user,
        "openMs": report::round2(opened.elapsed.as_secs_f64() * 1e3),
        "connectMs": opened.each.json(),
        "connectsPerSec": report::round2(connects_per_sec),
        "openCpu": report::cpu_json(Some(&opened.cpu)),
        "cpuPerConnectUs": report::per_unit_json(Some(&opened.cpu), connections),
        "rssBeforeKib": before.total,
        "rssAfterKib": after.total,
        "rssBeforeKibByProcess": before.by_process,
        "rssAfterKibByProcess": after.by_process,
        "natsServerRssKib": after.nats,
        "rssSettled": settled.quiet,
        "settleWaitS": report::round2(settled.waited.as_secs_f64()),
        "growthKib": growth_kib,
        "growthKibByProcess": grown.by_process,
        "perConnectionKib": report::round2(per_conn_kib),
        "lostConnections": lost,
    }));
}

/// "1234 KiB, 2.47 KiB per connection", then each process's share when there
/// are several.
fn growth_line(growth: &Reading<u64>, per_conn_kib: f64) -> String {
    let mut line = format!(
        "{} KiB, {per_conn_kib:.2} KiB per connection",
        growth.natterd_total()
    );
    if growth.is_split() {
        let each: Vec<String> = growth
            .natterd
            .iter()
            .map(|(name, kib)| format!("{name} +{kib} KiB"))
            .collect();
        line.push_str(&format!(" ({})", each.join(", ")));
    }
    line
}
