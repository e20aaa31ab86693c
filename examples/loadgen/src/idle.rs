//! `idle`: the memory natterd spends per open, idle WebSocket.
//!
//! natterd's RSS is read after provisioning and before the first connection,
//! then again once all connections are ready and the RSS stopped growing; the
//! difference divided by the connections is the cost of one.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use futures_util::{StreamExt, stream};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use crate::node::{self, Node, TargetArgs};
use crate::report::{self, Latency};
use crate::ws::Conn;

/// How often RSS is sampled while waiting for it to settle.
const SETTLE_POLL: Duration = Duration::from_millis(250);
/// RSS counts as settled once it has not grown for this long...
const SETTLE_QUIET: Duration = Duration::from_secs(2);
/// ...or when this much time has passed anyway.
const SETTLE_MAX: Duration = Duration::from_secs(20);

#[derive(Debug, clap::Args)]
pub struct Args {
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
}

/// natterd's RSS once it stopped growing.
struct Settled {
    rss_kib: u64,
    waited: Duration,
    /// False when it was still growing after `SETTLE_MAX`.
    quiet: bool,
}

pub async fn run(args: Args, nofile_limit: u64) -> Result<()> {
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
    let pid = node
        .pid()
        .context("idle measures natterd's memory: use --natterd, or --pid with --url")?;

    let tokens = provision(&node, &args).await?;
    let before_kib = node::rss_kib(pid)?;
    eprintln!("natterd RSS before connecting: {before_kib} KiB");

    eprintln!(
        "opening {} connections, {} at a time",
        tokens.len(),
        args.connect_concurrency
    );
    let opening = Instant::now();
    let (mut open, connect_us) =
        open_all(&node.ws_url(), &tokens, args.connect_concurrency).await?;
    let opened = Opened {
        elapsed: opening.elapsed(),
        each: Latency::of(&connect_us),
    };
    eprintln!(
        "all ready after {:?}; waiting for natterd's RSS to settle",
        opened.elapsed
    );

    let settled = settle(pid).await?;
    let lost = lost_connections(&mut open);
    open.shutdown().await;
    node.stop();

    print_results(&args, before_kib, &settled, &opened, lost);
    Ok(())
}

/// Creates the users and `connections` devices; returns the devices' tokens.
async fn provision(node: &Node, args: &Args) -> Result<Vec<String>> {
    let users = args.connections.div_ceil(args.devices_per_user);
    let names: Vec<String> = (1..=users)
        .map(|i| node.username(&format!("u{i:04}")))
        .collect();
    eprintln!(
        "creating {users} users and {} devices (up to {} per user)",
        args.connections, args.devices_per_user
    );
    node.create_users(&names).await?;
    let owners: Vec<&str> = (0..args.connections)
        .map(|k| names[k / args.devices_per_user].as_str())
        .collect();
    let devices = node.create_devices(&owners).await?;
    Ok(devices.into_iter().map(|d| d.token).collect())
}

/// Opens every connection and hands each, once ready, to a task that keeps
/// reading it (reading is what answers the node's pings). A task ends only if
/// its connection does.
/// Also returns how long each took, from the TCP connect to `ready`.
async fn open_all(
    ws_url: &str,
    tokens: &[String],
    concurrency: usize,
) -> Result<(JoinSet<Result<()>>, Histogram<u64>)> {
    let mut connecting = stream::iter(tokens)
        .map(|token| async move {
            let started = Instant::now();
            let conn = Conn::connect(ws_url, token).await?;
            anyhow::Ok((conn, started.elapsed()))
        })
        .buffer_unordered(concurrency);
    let mut open = JoinSet::new();
    let mut connect_us = report::latency_histogram();
    while let Some(connected) = connecting.next().await {
        let (conn, took) = connected?;
        connect_us.saturating_record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
        open.spawn(hold(conn));
    }
    Ok((open, connect_us))
}

async fn hold(mut conn: Conn) -> Result<()> {
    loop {
        // Idle devices get no events; anything that arrives is just drained.
        conn.next_text().await?;
    }
}

/// Connections that ended before the measurement did (each is reported).
fn lost_connections(open: &mut JoinSet<Result<()>>) -> usize {
    let mut lost = 0;
    while let Some(ended) = open.try_join_next() {
        lost += 1;
        match ended {
            Ok(Err(e)) => eprintln!("a connection ended early: {e:#}"),
            Ok(Ok(())) => eprintln!("a connection ended early"),
            Err(e) => eprintln!("a connection task failed: {e}"),
        }
    }
    lost
}

/// Polls natterd's RSS until it has not grown for `SETTLE_QUIET`, at most
/// `SETTLE_MAX`: the node allocates lazily (buffers, task state), so a reading
/// taken right after the last `ready` would miss part of the cost.
async fn settle(pid: u32) -> Result<Settled> {
    let started = Instant::now();
    let mut peak = node::rss_kib(pid)?;
    let mut grew_at = started;
    let mut poll = tokio::time::interval(SETTLE_POLL);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        poll.tick().await;
        let rss_kib = node::rss_kib(pid)?;
        if rss_kib > peak {
            peak = rss_kib;
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

fn print_results(args: &Args, before_kib: u64, settled: &Settled, opened: &Opened, lost: usize) {
    let growth_kib = settled.rss_kib.saturating_sub(before_kib);
    let per_conn_kib = growth_kib as f64 / args.connections as f64;
    let connects_per_sec = report::per_sec(args.connections as u64, opened.elapsed);
    println!(
        "idle: {} connections ({} devices per user)",
        args.connections, args.devices_per_user
    );
    println!(
        "opened:      all ready in {:.0} ms ({connects_per_sec:.0} connections/s)",
        opened.elapsed.as_secs_f64() * 1e3
    );
    println!("each:        {} (connect -> ready)", opened.each.line());
    println!("RSS before:  {}", report::rss_line(Some(before_kib)));
    println!(
        "RSS after:   {}, {} after {:.1} s",
        report::rss_line(Some(settled.rss_kib)),
        if settled.quiet {
            "settled"
        } else {
            "still growing"
        },
        settled.waited.as_secs_f64()
    );
    println!("growth:      {growth_kib} KiB, {per_conn_kib:.2} KiB per connection");
    if lost > 0 {
        println!("lost:        {lost} connections ended before the measurement did");
    }
    report::print_json(&json!({
        "bench": "idle",
        "connections": args.connections,
        "devicesPerUser": args.devices_per_user,
        "openMs": report::round2(opened.elapsed.as_secs_f64() * 1e3),
        "connectMs": opened.each.json(),
        "connectsPerSec": report::round2(connects_per_sec),
        "rssBeforeKib": before_kib,
        "rssAfterKib": settled.rss_kib,
        "rssSettled": settled.quiet,
        "settleWaitS": report::round2(settled.waited.as_secs_f64()),
        "growthKib": growth_kib,
        "perConnectionKib": report::round2(per_conn_kib),
        "lostConnections": lost,
    }));
}
