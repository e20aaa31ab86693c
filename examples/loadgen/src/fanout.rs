//! `fanout`: one chat, every member online; a few members send as fast as the
//! node answers and every other member receives each message.
//!
//! Each sender keeps `pipeline` sends in flight (the next goes out on each
//! answer). A message's text starts with its send time, so the receiver computes
//! send→receive latency on arrival (one process, one clock). Counting starts
//! after the warm-up and covers `duration`.
//!
//! The node's CPU time over the same window, divided by the deliveries, is the
//! cost of one delivery. `--idle-devices` keeps that many other devices (not in
//! the chat) connected meanwhile: comparing runs with few and many shows
//! whether a delivery gets dearer as more devices are online.
//!
//! With `--topology federated` the members are split between two peered nodes
//! (see `crate::federation`): member `k` is on node `k % 2`, so the creator
//! (member 0) is on alpha, the chat's home, and the senders (the first
//! `--senders` members) are half on each node. Every member connects to its own
//! node. A send from beta is forwarded to alpha over HTTP (natterd keeps one
//! forwarded action in flight per home node), and alpha's outbox carries every
//! message to beta, which fans it out to its members. The text also names the
//! sender's node, so latency is reported per route (sender's node → receiver's
//! node) besides overall, and sends and deliveries per node.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::time::{Instant, MissedTickBehavior};

use crate::idlers::Idlers;
use crate::node::{Node, TargetArgs};
use crate::report::{self, Errors, Latency, RssJson};
use crate::usage::{CpuUse, Processes, Reading};
use crate::ws::{self, ACK_INTERVAL, Conn, Frame};

/// Connections opened at once during setup.
const CONNECT_CONCURRENCY: usize = 32;
/// Idle connections opened at once (as `idle`'s default).
const IDLE_CONNECT_CONCURRENCY: usize = 200;
/// Below this share of the expected deliveries per send, the receivers are
/// falling behind rather than just missing the messages sent at the window's
/// edges.
const BEHIND_RATIO: f64 = 0.95;
/// Devices per idle user (as `idle`'s default). No chat reaches them, so this
/// only sets how many users are created.
const IDLE_DEVICES_PER_USER: usize = 100;
/// The protocol's limit on a chat, the creator included.
const MAX_PARTICIPANTS: usize = 100;
/// The protocol's limit on a message's text.
const MAX_MESSAGE_BYTES: usize = 16 * 1024;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    target: TargetArgs,
    /// Participants of the chat (at most 100), each online with one device.
    #[arg(long, default_value_t = 100)]
    members: usize,
    /// How many of the members send.
    #[arg(long, default_value_t = 10)]
    senders: usize,
    /// How long to measure, after the warm-up (e.g. 20s, 1m).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Load before measuring, not counted.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Sends each sender keeps in flight.
    #[arg(long, default_value_t = 8)]
    pipeline: usize,
    /// Measure the node's idle CPU this long before the run (0: skip).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    baseline: Duration,
    /// Size of each message's text (at least its 19-digit timestamp).
    #[arg(long, default_value_t = 64)]
    message_bytes: usize,
    /// Devices outside the chat kept connected and idle during the run.
    #[arg(long, default_value_t = 0)]
    idle_devices: usize,
}

impl Args {
    fn check(&self) -> Result<()> {
        ensure!(
            (2..=MAX_PARTICIPANTS).contains(&self.members),
            "--members must be 2-{MAX_PARTICIPANTS} (one chat)"
        );
        ensure!(
            (1..=self.members).contains(&self.senders),
            "--senders must be 1-{} (the members)",
            self.members
        );
        ensure!(self.pipeline >= 1, "--pipeline must be at least 1");
        ensure!(
            self.message_bytes <= MAX_MESSAGE_BYTES,
            "--message-bytes must be at most {MAX_MESSAGE_BYTES}"
        );
        ensure!(!self.duration.is_zero(), "--duration must be above zero");
        Ok(())
    }

    /// Each connection is one descriptor here (and one in the spawned process
    /// that serves it, which inherits this limit); leaves room for the rest.
    fn check_open_files(&self, nofile_limit: u64) -> Result<()> {
        let connections = (self.members + self.idle_devices) as u64;
        ensure!(
            connections + 256 <= nofile_limit,
            "the open-files limit ({nofile_limit}) is too low for {connections} connections; raise the hard limit (ulimit -Hn)"
        );
        Ok(())
    }
}

/// When counting happens: from the end of the warm-up to the end of the run.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    fn contains(&self, t: Instant) -> bool {
        self.start <= t && t < self.end
    }
}

/// What one member (or all members of a node, or all) saw inside the window
/// (errors: the whole run).
struct Stats {
    sends: u64,
    deliveries: u64,
    /// Send → arrival at another member, by the sender's node (one histogram
    /// per node).
    latency_us: Vec<Histogram<u64>>,
    /// Send → its `result` (the commit, fsync included), for senders.
    result_us: Histogram<u64>,
    errors: Errors,
}

impl Stats {
    fn new(nodes: usize) -> Self {
        Self {
            sends: 0,
            deliveries: 0,
            latency_us: (0..nodes).map(|_| report::latency_histogram()).collect(),
            result_us: report::latency_histogram(),
            errors: Errors::new(),
        }
    }

    fn merge(&mut self, other: &Stats) -> Result<()> {
        self.sends += other.sends;
        self.deliveries += other.deliveries;
        for (mine, theirs) in self.latency_us.iter_mut().zip(&other.latency_us) {
            mine.add(theirs).context("merge latency histograms")?;
        }
        self.result_us
            .add(&other.result_us)
            .context("merge result histograms")?;
        report::merge_errors(&mut self.errors, other.errors.clone());
        Ok(())
    }

    /// Send → arrival, whichever node sent.
    fn latency(&self) -> Result<Histogram<u64>> {
        let mut all = report::latency_histogram();
        for h in &self.latency_us {
            all.add(h).context("merge latency histograms")?;
        }
        Ok(all)
    }
}

/// Which node member `k` is on, of `nodes`: they take turns.
fn node_of(k: usize, nodes: usize) -> usize {
    k % nodes
}

/// A member that sends: its chat, its node, its pipeline and the padding of
/// its texts.
struct Sender {
    chat_id: String,
    /// Its node's index, after the time stamp in each text.
    node: usize,
    pipeline: usize,
    message_bytes: usize,
    next_id: u64,
    /// Request id → when it was sent, for the sends not answered yet.
    in_flight: HashMap<String, Instant>,
}

impl Sender {
    fn new(chat_id: String, node: usize, pipeline: usize, message_bytes: usize) -> Self {
        Self {
            chat_id,
            node,
            pipeline,
            message_bytes,
            next_id: 0,
            in_flight: HashMap::with_capacity(pipeline),
        }
    }

    /// Sends one message whose text starts with the current time and the
    /// sender's node.
    async fn send_next(&mut self, conn: &mut Conn) -> Result<()> {
        self.next_id += 1;
        let id = format!("s{}", self.next_id);
        let sent_at = Instant::now();
        let head = format!("{} {}", unix_nanos(), self.node);
        let text = ws::message_text(&head, self.message_bytes);
        conn.send_text(ws::send_message_frame(&id, &self.chat_id, &text))
            .await?;
        self.in_flight.insert(id, sent_at);
        Ok(())
    }

    /// How long the answer to `id` took, if it was one of this sender's sends.
    fn answered(&mut self, id: &str) -> Option<Duration> {
        self.in_flight.remove(id).map(|sent| sent.elapsed())
    }
}

/// What the whole run measured.
struct Results {
    total: Stats,
    /// Per node, what its members saw (one entry unless federated).
    by_node: Vec<NodeStats>,
    /// The node's CPU time over the window; `None` when its processes are
    /// unknown.
    cpu: Option<CpuUse>,
    /// The node's CPU time while everything was connected but quiet.
    idle_cpu: Option<CpuUse>,
    rss: Option<Reading<u64>>,
    /// Idle connections that dropped before the end.
    idle_lost: usize,
}

/// The members of one node and what they saw.
struct NodeStats {
    name: String,
    members: usize,
    senders: usize,
    stats: Stats,
}

pub(crate) async fn run(args: Args, nofile_limit: u64) -> Result<()> {
    args.check()?;
    args.check_open_files(nofile_limit)?;
    let nodes = Node::start_all(&args.target).await?;
    let n = nodes.len();
    let names: Vec<String> = (0..args.members)
        .map(|k| nodes[node_of(k, n)].username(&format!("u{:04}", k + 1)))
        .collect();
    eprintln!(
        "creating {} users with one device each, on {n} node(s)",
        names.len()
    );
    let mut tokens = vec![String::new(); args.members];
    for (i, node) in nodes.iter().enumerate() {
        let here: Vec<usize> = (0..args.members).filter(|&k| node_of(k, n) == i).collect();
        let names_here: Vec<String> = here.iter().map(|&k| names[k].clone()).collect();
        node.create_users(&names_here).await?;
        let owners: Vec<&str> = names_here.iter().map(String::as_str).collect();
        for (&k, device) in here.iter().zip(node.create_devices(&owners).await?) {
            tokens[k] = device.token;
        }
    }
    let idlers = connect_idle(&nodes[0], args.idle_devices).await?;
    eprintln!("connecting {} members", tokens.len());
    // Each member to its own node (round robin over its gateways in split).
    let mut conns = ws::connect_all(
        tokens
            .iter()
            .enumerate()
            .map(|(k, token)| (nodes[node_of(k, n)].ws_url(k / n), token.as_str())),
        CONNECT_CONCURRENCY,
    )
    .await?;
    // The first member creates the chat (on the first node: its home); the
    // others are its participants, as `name@node` when on another node.
    let participants: Vec<String> = (1..args.members)
        .map(|k| match node_of(k, n) {
            0 => names[k].clone(),
            i => nodes[i].user_id(&names[k]),
        })
        .collect();
    let chat_id = conns[0].create_chat(&participants).await?;
    // Nobody sends before every member has the chat (on another node it
    // arrives through the home's outbox).
    for conn in &mut conns[1..] {
        conn.wait_for("chatUpdate").await?;
    }
    let processes = Node::processes_of(&nodes);
    // What holding the connections costs, with no traffic: subtracted from the
    // run's CPU, it leaves the cost of the deliveries themselves.
    let idle_cpu = if args.baseline.is_zero() {
        None
    } else {
        eprintln!("measuring idle CPU for {:?}", args.baseline);
        let now = Instant::now();
        measure_cpu(
            processes.clone(),
            Window {
                start: now,
                end: now + args.baseline,
            },
        )
        .await?
    };

    let start = Instant::now() + args.warmup;
    let window = Window {
        start,
        end: start + args.duration,
    };
    eprintln!(
        "running: {:?} warm-up, then {:?} measured",
        args.warmup, args.duration
    );
    let cpu = tokio::spawn(measure_cpu(processes.clone(), window));
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(k, conn)| {
            let node = node_of(k, n);
            let sender = (k < args.senders)
                .then(|| Sender::new(chat_id.clone(), node, args.pipeline, args.message_bytes));
            tokio::spawn(run_member(conn, sender, window, n))
        })
        .collect();
    let mut by_node: Vec<NodeStats> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let here = (0..args.members).filter(|&k| node_of(k, n) == i);
            NodeStats {
                name: node.name().unwrap_or("node").to_owned(),
                members: here.clone().count(),
                senders: here.filter(|&k| k < args.senders).count(),
                stats: Stats::new(n),
            }
        })
        .collect();
    for (k, task) in tasks.into_iter().enumerate() {
        let stats = task.await.context("a member task panicked")?;
        by_node[node_of(k, n)].stats.merge(&stats)?;
    }
    let mut total = Stats::new(n);
    for node in &by_node {
        total.merge(&node.stats)?;
    }
    let cpu = cpu.await.context("the CPU measuring task panicked")??;
    let idle_lost = match idlers {
        Some(mut idlers) => {
            let lost = idlers.lost();
            idlers.close().await;
            lost
        }
        None => 0,
    };
    let rss = processes.rss_kib()?;
    for node in nodes {
        node.stop();
    }
    let results = Results {
        total,
        by_node,
        cpu,
        idle_cpu,
        rss,
        idle_lost,
    };
    print_results(&args, &results)
}

/// Creates `count` devices outside the chat and connects them, to stay idle
/// through the run (none when `count` is 0).
async fn connect_idle(node: &Node, count: usize) -> Result<Option<Idlers>> {
    if count == 0 {
        return Ok(None);
    }
    eprintln!("creating {count} idle devices, up to {IDLE_DEVICES_PER_USER} per user");
    let tokens = node.provision("idle", count, IDLE_DEVICES_PER_USER).await?;
    eprintln!("connecting {count} idle devices, {IDLE_CONNECT_CONCURRENCY} at a time");
    let (idlers, _) = Idlers::open(node, &tokens, IDLE_CONNECT_CONCURRENCY).await?;
    Ok(Some(idlers))
}

/// natterd's CPU per delivery beyond what it spends idle over the same time.
fn marginal_cpu_per_delivery_us(
    cpu: Option<&CpuUse>,
    idle: Option<&CpuUse>,
    deliveries: u64,
) -> Option<f64> {
    let (cpu, idle) = (cpu?, idle?);
    if deliveries == 0 || idle.elapsed.is_zero() {
        return None;
    }
    let idle_rate = idle.used.natterd_total().as_secs_f64() / idle.elapsed.as_secs_f64();
    let busy = cpu.used.natterd_total().as_secs_f64() - idle_rate * cpu.elapsed.as_secs_f64();
    Some(busy.max(0.0) / deliveries as f64 * 1e6)
}

/// The node's CPU time over `window`, read from /proc at its start and its end.
async fn measure_cpu(processes: Processes, window: Window) -> Result<Option<CpuUse>> {
    tokio::time::sleep_until(window.start).await;
    let started = Instant::now();
    let Some(start) = processes.cpu_time()? else {
        return Ok(None);
    };
    tokio::time::sleep_until(window.end).await;
    let Some(end) = processes.cpu_time()? else {
        return Ok(None);
    };
    Ok(Some(CpuUse::between(&start, &end, started.elapsed())))
}

/// Drives one member until the window ends. A lost connection ends it early and
/// is counted as an error, so the run still reports what the others measured.
async fn run_member(
    mut conn: Conn,
    mut sender: Option<Sender>,
    window: Window,
    nodes: usize,
) -> Stats {
    let mut stats = Stats::new(nodes);
    if let Err(e) = drive(&mut conn, sender.as_mut(), window, &mut stats).await {
        eprintln!("a member lost its connection: {e:#}");
        *stats
            .errors
            .entry("connection_lost".to_owned())
            .or_default() += 1;
    }
    stats
}

async fn drive(
    conn: &mut Conn,
    mut sender: Option<&mut Sender>,
    window: Window,
    stats: &mut Stats,
) -> Result<()> {
    if let Some(sender) = sender.as_deref_mut() {
        for _ in 0..sender.pipeline {
            sender.send_next(conn).await?;
        }
    }
    let mut ack_tick = tokio::time::interval(ACK_INTERVAL);
    ack_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let end = tokio::time::sleep_until(window.end);
    tokio::pin!(end);
    loop {
        tokio::select! {
            () = &mut end => return Ok(()),
            text = conn.next_text() => {
                on_frame(conn, &text?, sender.as_deref_mut(), window, stats).await?;
            }
            _ = ack_tick.tick() => conn.flush_acks().await?,
        }
    }
}

async fn on_frame(
    conn: &mut Conn,
    text: &str,
    sender: Option<&mut Sender>,
    window: Window,
    stats: &mut Stats,
) -> Result<()> {
    let frame = Frame::parse(text)?;
    let now = Instant::now();
    let in_window = window.contains(now);
    match frame.kind.as_ref() {
        "newMessage" if in_window => {
            stats.deliveries += 1;
            record_latency(&mut stats.latency_us, frame.message.as_deref());
        }
        "result" if in_window => stats.sends += 1,
        "error" => {
            let code = frame.code.as_deref().unwrap_or("unknown");
            *stats.errors.entry(code.to_owned()).or_default() += 1;
        }
        _ => {}
    }
    if let Some(delivery_id) = &frame.delivery_id {
        conn.ack_later(delivery_id).await?;
    }
    // An answer (result, or error: a refused send frees its slot too) makes
    // room in the pipeline.
    if let (Some(sender), Some(id)) = (sender, &frame.id)
        && let Some(took) = sender.answered(id)
    {
        // Refusals are quick and would flatter the commit latency.
        if in_window && frame.kind == "result" {
            let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
            stats.result_us.saturating_record(micros);
        }
        if now < window.end {
            sender.send_next(conn).await?;
        }
    }
    Ok(())
}

/// Records now − the send time at the start of `message`, in microseconds, in
/// the histogram of the sender's node (named after the time).
fn record_latency(by_node: &mut [Histogram<u64>], message: Option<&str>) {
    let mut words = message.unwrap_or_default().split(' ');
    let Some(sent_ns) = words.next().and_then(|stamp| stamp.parse::<u64>().ok()) else {
        return;
    };
    let node = words.next().and_then(|n| n.parse::<usize>().ok());
    if let Some(histogram) = by_node.get_mut(node.unwrap_or(0)) {
        let micros = unix_nanos().saturating_sub(sent_ns) / 1_000;
        histogram.saturating_record(micros);
    }
}

/// Wall-clock time in ns since the UNIX epoch; both ends of a latency use it.
fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

fn print_results(args: &Args, results: &Results) -> Result<()> {
    let total = &results.total;
    let sends_per_sec = report::per_sec(total.sends, args.duration);
    let deliveries_per_sec = report::per_sec(total.deliveries, args.duration);
    let latency = Latency::of(&total.latency()?);
    let result_latency = Latency::of(&total.result_us);
    let cpu = results.cpu.as_ref();
    // Every other member gets each message: the sending device gets only its result.
    let expected_fanout = args.members - 1;
    let fanout = if total.sends > 0 {
        total.deliveries as f64 / total.sends as f64
    } else {
        0.0
    };
    println!(
        "fanout: {} members, {} senders x pipeline {}, {}-byte messages, {:?} warm-up + {:?} measured, topology {}",
        args.members,
        args.senders,
        args.pipeline,
        args.message_bytes,
        args.warmup,
        args.duration,
        args.target.topology_name()
    );
    if args.idle_devices > 0 {
        println!(
            "idle:        {} other devices connected, {} of them lost",
            args.idle_devices, results.idle_lost
        );
    }
    println!("sends:       {} ({sends_per_sec:.1}/s)", total.sends);
    println!(
        "deliveries:  {} ({deliveries_per_sec:.1}/s), {fanout:.2} per send (expected {expected_fanout})",
        total.deliveries
    );
    println!("latency:     {} (send -> other members)", latency.line());
    println!(
        "result:      {} (send -> its result)",
        result_latency.line()
    );
    println!("errors:      {}", report::errors_line(&total.errors));
    let federated = results.by_node.len() > 1;
    if federated {
        print_nodes(args, &results.by_node);
    }
    if fanout < expected_fanout as f64 * BEHIND_RATIO {
        println!(
            "warning:     deliveries fell behind the sends: the node is overloaded, latency \
             grows with the run, and the cost per delivery includes work for messages \
             not delivered yet; lower --senders or --pipeline"
        );
    }
    println!("CPU:         {}", report::cpu_line(cpu));
    println!(
        "CPU per delivery: {}",
        report::per_unit_line(cpu, total.deliveries)
    );
    let marginal = marginal_cpu_per_delivery_us(cpu, results.idle_cpu.as_ref(), total.deliveries);
    if let (Some(idle), Some(marginal)) = (results.idle_cpu.as_ref(), marginal) {
        println!(
            "CPU idle:    natterd {:.3} cores with everything connected and quiet; \
             per delivery beyond that: {marginal:.2} µs",
            idle.used.natterd_total().as_secs_f64() / idle.elapsed.as_secs_f64()
        );
    }
    println!("natterd RSS: {}", report::rss_line(results.rss.as_ref()));
    let rss = RssJson::of(results.rss.as_ref());
    report::print_json(&json!({
        "bench": "fanout",
        "topology": args.target.topology_name(),
        "members": args.members,
        "senders": args.senders,
        "pipeline": args.pipeline,
        "messageBytes": args.message_bytes,
        "idleDevices": args.idle_devices,
        "idleLost": results.idle_lost,
        "warmupS": args.warmup.as_secs_f64(),
        "durationS": args.duration.as_secs_f64(),
        "sends": total.sends,
        "sendsPerSec": report::round2(sends_per_sec),
        "deliveries": total.deliveries,
        "deliveriesPerSec": report::round2(deliveries_per_sec),
        "latencyMs": latency.json(),
        "resultLatencyMs": result_latency.json(),
        "errors": total.errors,
        "cpu": report::cpu_json(cpu),
        "cpuPerDeliveryUs": report::per_unit_json(cpu, total.deliveries),
        "idleCpuCores": results.idle_cpu.as_ref().map(|idle| report::round2(
            idle.used.natterd_total().as_secs_f64() / idle.elapsed.as_secs_f64()
        )),
        "marginalCpuPerDeliveryUs": marginal.map(report::round2),
        "natterdRssKib": rss.total,
        "natterdRssKibByProcess": rss.by_process,
        "natsServerRssKib": rss.nats,
        "nodes": federated.then(|| nodes_json(args, &results.by_node)),
        "maxBackoffS": federated.then(|| crate::federation::MAX_BACKOFF.as_secs_f64()),
    }));
    Ok(())
}

/// Per node: its senders' sends and their results, what its members received,
/// and latency by route (sender's node -> receiver's node).
fn print_nodes(args: &Args, by_node: &[NodeStats]) {
    for (i, node) in by_node.iter().enumerate() {
        let s = &node.stats;
        let role = if i == 0 { " (home)" } else { "" };
        println!(
            "node {}{role}: {} members, {} senders: sends {} ({:.1}/s), result {}; received {} ({:.1}/s)",
            node.name,
            node.members,
            node.senders,
            s.sends,
            report::per_sec(s.sends, args.duration),
            Latency::of(&s.result_us).short(),
            s.deliveries,
            report::per_sec(s.deliveries, args.duration),
        );
    }
    for to in by_node {
        for (from, h) in by_node.iter().zip(&to.stats.latency_us) {
            println!(
                "route {} -> {}: {}",
                from.name,
                to.name,
                Latency::of(h).line()
            );
        }
    }
}

fn nodes_json(args: &Args, by_node: &[NodeStats]) -> serde_json::Value {
    let nodes: Vec<_> = by_node
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let s = &node.stats;
            let from: serde_json::Map<_, _> = by_node
                .iter()
                .zip(&s.latency_us)
                .map(|(from, h)| (from.name.clone(), Latency::of(h).json()))
                .collect();
            json!({
                "node": node.name,
                "home": i == 0,
                "members": node.members,
                "senders": node.senders,
                "sends": s.sends,
                "sendsPerSec": report::round2(report::per_sec(s.sends, args.duration)),
                "resultLatencyMs": Latency::of(&s.result_us).json(),
                "deliveries": s.deliveries,
                "deliveriesPerSec": report::round2(report::per_sec(s.deliveries, args.duration)),
                "latencyFromMs": from,
                "errors": s.errors,
            })
        })
        .collect();
    json!(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_comes_from_the_stamp_at_the_start_of_the_text() {
        let mut h = [report::latency_histogram(), report::latency_histogram()];
        let sent = unix_nanos() - 5_000_000;
        record_latency(&mut h, Some(&ws::message_text(&format!("{sent} 1"), 64)));
        record_latency(&mut h, Some(&ws::message_text(&format!("{sent} 0"), 64)));
        record_latency(&mut h, Some(&ws::message_text(&sent.to_string(), 64)));
        record_latency(&mut h, Some("not a stamp"));
        record_latency(&mut h, None);
        assert_eq!(h[0].len(), 2, "no node named: the first");
        assert_eq!(h[1].len(), 1);
        assert!(h[1].max() >= 5_000, "{}", h[1].max());
    }

    #[test]
    fn members_alternate_between_nodes() {
        let on: Vec<usize> = (0..6).map(|k| node_of(k, 2)).collect();
        assert_eq!(on, [0, 1, 0, 1, 0, 1]);
        assert!((0..6).all(|k| node_of(k, 1) == 0));
    }
}
