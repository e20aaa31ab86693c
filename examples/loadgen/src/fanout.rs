//! `fanout`: one chat, every member online; a few members send as fast as the
//! node answers and every other member receives each message.
//!
//! Each sender keeps `pipeline` sends in flight (the next goes out on each
//! answer). A message's text starts with its send time, so the receiver computes
//! send→receive latency on arrival (one process, one clock). Counting starts
//! after the warm-up and covers `duration`.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::time::{Instant, MissedTickBehavior};

use crate::node::{Node, TargetArgs};
use crate::report::{self, Errors, Latency};
use crate::ws::{self, ACK_INTERVAL, Conn, Frame};

/// Connections opened at once during setup.
const CONNECT_CONCURRENCY: usize = 32;
/// The protocol's limit on a chat, the creator included.
const MAX_PARTICIPANTS: usize = 100;
/// The protocol's limit on a message's text.
const MAX_MESSAGE_BYTES: usize = 16 * 1024;

#[derive(Debug, clap::Args)]
pub struct Args {
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
    /// Size of each message's text (at least its 19-digit timestamp).
    #[arg(long, default_value_t = 64)]
    message_bytes: usize,
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

/// What one member saw inside the window (errors: the whole run).
struct Stats {
    sends: u64,
    deliveries: u64,
    /// Send → arrival at another member.
    latency_us: Histogram<u64>,
    /// Send → its `result` (the commit, fsync included), for senders.
    result_us: Histogram<u64>,
    errors: Errors,
}

impl Stats {
    fn new() -> Self {
        Self {
            sends: 0,
            deliveries: 0,
            latency_us: report::latency_histogram(),
            result_us: report::latency_histogram(),
            errors: Errors::new(),
        }
    }

    fn merge(&mut self, other: Stats) -> Result<()> {
        self.sends += other.sends;
        self.deliveries += other.deliveries;
        self.latency_us
            .add(&other.latency_us)
            .context("merge latency histograms")?;
        self.result_us
            .add(&other.result_us)
            .context("merge result histograms")?;
        report::merge_errors(&mut self.errors, other.errors);
        Ok(())
    }
}

/// A member that sends: its chat, its pipeline and the padding of its texts.
struct Sender {
    chat_id: String,
    pipeline: usize,
    message_bytes: usize,
    next_id: u64,
    /// Request id → when it was sent, for the sends not answered yet.
    in_flight: HashMap<String, Instant>,
}

impl Sender {
    fn new(chat_id: String, pipeline: usize, message_bytes: usize) -> Self {
        Self {
            chat_id,
            pipeline,
            message_bytes,
            next_id: 0,
            in_flight: HashMap::with_capacity(pipeline),
        }
    }

    /// Sends one message whose text starts with the current time.
    async fn send_next(&mut self, conn: &mut Conn) -> Result<()> {
        self.next_id += 1;
        let id = format!("s{}", self.next_id);
        let sent_at = Instant::now();
        let text = ws::message_text(&unix_nanos().to_string(), self.message_bytes);
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

pub async fn run(args: Args) -> Result<()> {
    args.check()?;
    let node = Node::start(&args.target).await?;
    let names: Vec<String> = (1..=args.members)
        .map(|i| node.username(&format!("u{i:04}")))
        .collect();
    eprintln!("creating {} users with one device each", names.len());
    node.create_users(&names).await?;
    let owners: Vec<&str> = names.iter().map(String::as_str).collect();
    let devices = node.create_devices(&owners).await?;
    eprintln!("connecting {} members", devices.len());
    let ws_url = node.ws_url();
    let mut conns = ws::connect_all(
        &ws_url,
        devices.iter().map(|d| d.token.as_str()),
        CONNECT_CONCURRENCY,
    )
    .await?;
    // The first member creates the chat; the others are its participants.
    let chat_id = conns[0].create_chat(&names[1..]).await?;

    let start = Instant::now() + args.warmup;
    let window = Window {
        start,
        end: start + args.duration,
    };
    eprintln!(
        "running: {:?} warm-up, then {:?} measured",
        args.warmup, args.duration
    );
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, conn)| {
            let sender = (i < args.senders)
                .then(|| Sender::new(chat_id.clone(), args.pipeline, args.message_bytes));
            tokio::spawn(run_member(conn, sender, window))
        })
        .collect();
    let mut total = Stats::new();
    for task in tasks {
        total.merge(task.await.context("a member task panicked")?)?;
    }
    let rss = node.rss_kib()?;
    node.stop();
    print_results(&args, &total, rss);
    Ok(())
}

/// Drives one member until the window ends. A lost connection ends it early and
/// is counted as an error, so the run still reports what the others measured.
async fn run_member(mut conn: Conn, mut sender: Option<Sender>, window: Window) -> Stats {
    let mut stats = Stats::new();
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

/// Records now − the send time at the start of `message`, in microseconds.
fn record_latency(histogram: &mut Histogram<u64>, message: Option<&str>) {
    let sent_ns = message
        .and_then(|m| m.split(' ').next())
        .and_then(|stamp| stamp.parse::<u64>().ok());
    if let Some(sent_ns) = sent_ns {
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

fn print_results(args: &Args, total: &Stats, rss_kib: Option<u64>) {
    let sends_per_sec = report::per_sec(total.sends, args.duration);
    let deliveries_per_sec = report::per_sec(total.deliveries, args.duration);
    let latency = Latency::of(&total.latency_us);
    let result_latency = Latency::of(&total.result_us);
    // Every other member gets each message: the sending device gets only its result.
    let expected_fanout = args.members - 1;
    let fanout = if total.sends > 0 {
        total.deliveries as f64 / total.sends as f64
    } else {
        0.0
    };
    println!(
        "fanout: {} members, {} senders x pipeline {}, {}-byte messages, {:?} warm-up + {:?} measured",
        args.members, args.senders, args.pipeline, args.message_bytes, args.warmup, args.duration
    );
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
    println!("natterd RSS: {}", report::rss_line(rss_kib));
    report::print_json(&json!({
        "bench": "fanout",
        "members": args.members,
        "senders": args.senders,
        "pipeline": args.pipeline,
        "messageBytes": args.message_bytes,
        "warmupS": args.warmup.as_secs_f64(),
        "durationS": args.duration.as_secs_f64(),
        "sends": total.sends,
        "sendsPerSec": report::round2(sends_per_sec),
        "deliveries": total.deliveries,
        "deliveriesPerSec": report::round2(deliveries_per_sec),
        "latencyMs": latency.json(),
        "resultLatencyMs": result_latency.json(),
        "errors": total.errors,
        "natterdRssKib": rss_kib,
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_comes_from_the_stamp_at_the_start_of_the_text() {
        let mut h = report::latency_histogram();
        let sent = unix_nanos() - 5_000_000;
        record_latency(&mut h, Some(&ws::message_text(&sent.to_string(), 64)));
        record_latency(&mut h, Some("not a stamp"));
        record_latency(&mut h, None);
        assert_eq!(h.len(), 1);
        assert!(h.max() >= 5_000, "{}", h.max());
    }
}
