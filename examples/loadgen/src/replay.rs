//! `replay`: how fast a device that was offline drains its inbox.
//!
//! `sender` sends `messages` messages into a chat with `receiver`, whose device
//! has never connected, so all of them wait in its inbox. Then the receiver
//! connects; the drain time runs from the upgrade request to the last of those
//! messages arriving (acking in batches as it goes, as a real client must: the
//! node keeps only `websocket.window` events unacked in flight). The node's CPU
//! time over the drain gives the cost of one replayed event.
//!
//! With two gateways (`--topology split`) the sender and the receiver use
//! different ones, so the messages cross from one to the other.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;
use tokio::time::{Instant, MissedTickBehavior};

use crate::node::{Node, TargetArgs};
use crate::report::{self, Errors, RssJson};
use crate::usage::{CpuUse, Reading};
use crate::ws::{self, ACK_INTERVAL, ANSWER_TIMEOUT, Conn, Frame};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    target: TargetArgs,
    /// Messages waiting in the receiver's inbox.
    #[arg(long, default_value_t = 10_000)]
    messages: usize,
    /// Sends the sender keeps in flight.
    #[arg(long, default_value_t = 32)]
    pipeline: usize,
    /// Size of each message's text.
    #[arg(long, default_value_t = 64)]
    message_bytes: usize,
}

/// How the sender's phase went.
pub(crate) struct Sent {
    pub accepted: usize,
    pub errors: Errors,
    pub elapsed: Duration,
}

/// How the receiver's drain went.
pub(crate) struct Drained {
    pub elapsed: Duration,
    /// When the last message arrived.
    pub finished_at: Instant,
    /// `newMessage` frames for a seq already seen (resends).
    pub duplicates: u64,
    /// `newMessage` frames whose seq was below one seen before.
    pub out_of_order: u64,
}

pub(crate) async fn run(args: Args) -> Result<()> {
    ensure!(args.messages >= 1, "--messages must be at least 1");
    ensure!(args.pipeline >= 1, "--pipeline must be at least 1");
    let node = Node::start(&args.target).await?;
    let names = [node.username("sender"), node.username("receiver")];
    node.create_users(&names).await?;
    let devices = node.create_devices(&[&names[0], &names[1]]).await?;

    let mut sender = Conn::connect(node.ws_url(0), &devices[0].token).await?;
    let chat_id = sender.create_chat(&names[1..]).await?;
    eprintln!(
        "sending {} messages, {} in flight",
        args.messages, args.pipeline
    );
    let sent = send_all(
        &mut sender,
        &chat_id,
        args.messages,
        args.pipeline,
        args.message_bytes,
    )
    .await?;
    ensure!(
        sent.accepted > 0,
        "the node refused every message: {:?}",
        sent.errors
    );
    // Idle from here on; closing it keeps the drain the only traffic.
    drop(sender);

    eprintln!("receiver connecting to drain {} messages", sent.accepted);
    let cpu_before = node.processes().cpu_time()?;
    let drained = drain(node.ws_url(1), &devices[1].token, sent.accepted).await?;
    let cpu = match (cpu_before, node.processes().cpu_time()?) {
        (Some(before), Some(after)) => Some(CpuUse::between(&before, &after, drained.elapsed)),
        _ => None,
    };
    let rss = node.processes().rss_kib()?;
    node.stop();
    print_results(&args, &sent, &drained, cpu.as_ref(), rss.as_ref());
    Ok(())
}

/// Sends `messages` messages (texts `m0`, `m1`, … padded to `message_bytes`),
/// keeping `pipeline` in flight, until each has its answer.
pub(crate) async fn send_all(
    conn: &mut Conn,
    chat_id: &str,
    messages: usize,
    pipeline: usize,
    message_bytes: usize,
) -> Result<Sent> {
    let started = Instant::now();
    let mut sent = 0;
    let mut answered = 0;
    let mut accepted = 0;
    let mut errors = Errors::new();
    while sent < pipeline.min(messages) {
        send_one(conn, chat_id, sent, message_bytes).await?;
        sent += 1;
    }
    while answered < messages {
        let text = tokio::time::timeout(ANSWER_TIMEOUT, conn.next_text())
            .await
            .with_context(|| {
                format!("no answer for {ANSWER_TIMEOUT:?} after {answered} answers")
            })??;
        let frame = Frame::parse(&text)?;
        match frame.kind.as_ref() {
            "result" => accepted += 1,
            "error" => {
                let code = frame.code.as_deref().unwrap_or("unknown");
                *errors.entry(code.to_owned()).or_default() += 1;
            }
            _ => continue,
        }
        answered += 1;
        if sent < messages {
            send_one(conn, chat_id, sent, message_bytes).await?;
            sent += 1;
        }
    }
    Ok(Sent {
        accepted,
        errors,
        elapsed: started.elapsed(),
    })
}

async fn send_one(conn: &mut Conn, chat_id: &str, n: usize, message_bytes: usize) -> Result<()> {
    let text = ws::message_text(&format!("m{n}"), message_bytes);
    conn.send_text(ws::send_message_frame(&format!("s{n}"), chat_id, &text))
        .await
}

/// Connects the receiver and reads until `expected` distinct messages arrived.
pub(crate) async fn drain(ws_url: &str, token: &str, expected: usize) -> Result<Drained> {
    let started = Instant::now();
    let mut conn = Conn::connect(ws_url, token).await?;
    let mut seen = HashSet::with_capacity(expected);
    let mut duplicates = 0;
    let mut out_of_order = 0;
    let mut last_seq = 0;
    let mut last_progress = Instant::now();
    let mut ack_tick = tokio::time::interval(ACK_INTERVAL);
    ack_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    while seen.len() < expected {
        tokio::select! {
            text = conn.next_text() => {
                let text = text?;
                let frame = Frame::parse(&text)?;
                if frame.kind == "newMessage" {
                    let seq = frame.seq.with_context(|| format!("newMessage without seq: {text}"))?;
                    if !seen.insert(seq) {
                        duplicates += 1;
                    }
                    if seq < last_seq {
                        out_of_order += 1;
                    }
                    last_seq = seq;
                    last_progress = Instant::now();
                }
                if let Some(delivery_id) = &frame.delivery_id {
                    conn.ack_later(delivery_id).await?;
                }
            }
            _ = ack_tick.tick() => {
                conn.flush_acks().await?;
                if last_progress.elapsed() > ANSWER_TIMEOUT {
                    bail!("stalled: {} of {expected} messages after {:?}", seen.len(), started.elapsed());
                }
            }
        }
    }
    let finished_at = Instant::now();
    // Not timed: leaves the inbox empty, as a real client would.
    conn.flush_acks().await?;
    Ok(Drained {
        elapsed: finished_at - started,
        finished_at,
        duplicates,
        out_of_order,
    })
}

fn print_results(
    args: &Args,
    sent: &Sent,
    drained: &Drained,
    cpu: Option<&CpuUse>,
    rss: Option<&Reading<u64>>,
) {
    let sends_per_sec = report::per_sec(sent.accepted as u64, sent.elapsed);
    let events_per_sec = report::per_sec(sent.accepted as u64, drained.elapsed);
    let drain_ms = drained.elapsed.as_secs_f64() * 1e3;
    println!(
        "replay: {} messages of {} bytes, sent {} in flight",
        args.messages, args.message_bytes, args.pipeline
    );
    println!(
        "sent:        {} accepted in {:.0} ms ({sends_per_sec:.1}/s), errors: {}",
        sent.accepted,
        sent.elapsed.as_secs_f64() * 1e3,
        report::errors_line(&sent.errors)
    );
    println!(
        "drain:       {drain_ms:.1} ms from upgrade request to the last message ({events_per_sec:.1} events/s)"
    );
    if drained.duplicates > 0 {
        println!("duplicates:  {}", drained.duplicates);
    }
    if drained.out_of_order > 0 {
        println!("out of order: {}", drained.out_of_order);
    }
    let events = sent.accepted as u64;
    println!("drain CPU:   {}", report::cpu_line(cpu));
    println!("CPU/event:   {}", report::per_unit_line(cpu, events));
    println!("natterd RSS: {}", report::rss_line(rss));
    let rss = RssJson::of(rss);
    report::print_json(&json!({
        "bench": "replay",
        "topology": args.target.topology_name(),
        "messages": args.messages,
        "messageBytes": args.message_bytes,
        "pipeline": args.pipeline,
        "accepted": sent.accepted,
        "sendMs": report::round2(sent.elapsed.as_secs_f64() * 1e3),
        "sendsPerSec": report::round2(sends_per_sec),
        "sendErrors": sent.errors,
        "drainMs": report::round2(drain_ms),
        "eventsPerSec": report::round2(events_per_sec),
        "duplicates": drained.duplicates,
        "outOfOrder": drained.out_of_order,
        "drainCpu": report::cpu_json(cpu),
        "cpuPerEventUs": report::per_unit_json(cpu, events),
        "natterdRssKib": rss.total,
        "natterdRssKibByProcess": rss.by_process,
        "natsServerRssKib": rss.nats,
    }));
}
