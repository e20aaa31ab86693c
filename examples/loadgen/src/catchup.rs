//! `catchup`: how long a peer node that was down takes to get what its peer
//! queued for it meanwhile.
//!
//! Two peered nodes (see `crate::federation`): `alice` on alpha.bench creates a
//! chat with `bob@beta.bench`. Then beta is killed (`kill -9`), alice sends
//! `events` messages (alpha, the chat's home, stores each and queues it in its
//! outbox for beta), and beta is started again on the same port and data
//! folder. Timed from that restart: beta ready (`/readyz`), alpha's outbox for
//! beta empty (`outboxDepth` of `GET /admin/v1/peers` on alpha, polled every
//! `--poll`), and
//! bob's device (connected as soon as beta is ready) having received all of the
//! messages, acking as it goes.
//!
//! alpha's sender backs off while beta is down; with `max_backoff` 1 s it tries
//! again within a second of beta's return (nothing wakes it earlier unless beta
//! sends alpha a request), so the times include up to one back-off wait.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail, ensure};
use serde_json::json;
use tokio::time::Instant;

use crate::federation::{self, MAX_BACKOFF, NODE_NAMES};
use crate::node::Node;
use crate::replay::{self, Drained, Sent};
use crate::report::{self, RssJson};
use crate::usage::{CpuUse, Reading};
use crate::ws::Conn;

/// Give up on the catch-up after this long.
const DEADLINE: Duration = Duration::from_secs(120);

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The natterd binary (e.g. target/release/natterd); two nodes are spawned
    /// on free ports with temporary data folders and killed at the end.
    #[arg(long, value_name = "PATH")]
    natterd: PathBuf,
    /// Messages sent at the home while the peer is down.
    #[arg(long, default_value_t = 10_000)]
    events: usize,
    /// Sends kept in flight while queueing them.
    #[arg(long, default_value_t = 32)]
    pipeline: usize,
    /// Size of each message's text.
    #[arg(long, default_value_t = 64)]
    message_bytes: usize,
    /// How often to ask alpha for its outbox depth during the catch-up (0: do
    /// not watch it). Not free: natterd reads the whole outbox to count it.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    poll: Duration,
    /// Run each node as `natterd serve --nats` on a nats-server of its own
    /// (this binary): the home's outbox then goes through JetStream.
    #[arg(long, value_name = "PATH")]
    nats_server: Option<PathBuf>,
}

/// alpha's outbox for beta over the catch-up, from beta's restart.
struct Outbox {
    /// Depth with beta down, after the sends.
    depth_before: usize,
    /// alpha's sender state then (`backing-off` …).
    state_before: String,
    /// How long `GET /admin/v1/peers` took before the outage (an outbox that
    /// never held more than the chat's creation).
    list_fresh: Duration,
    /// How long that `GET /admin/v1/peers` took (with the full outbox).
    list_took: Duration,
    /// How long one took after the catch-up, and the depth it reported.
    list_after: (Duration, usize),
    /// When the depth was first seen below `depth_before` (not watched: `None`).
    first_progress: Option<Duration>,
    /// When it was first seen at zero (not watched: `None`).
    empty: Option<Duration>,
}

pub(crate) async fn run(args: Args) -> Result<()> {
    ensure!(args.events >= 1, "--events must be at least 1");
    ensure!(args.pipeline >= 1, "--pipeline must be at least 1");
    let mut nodes =
        federation::start_pair_on(&args.natterd, "", args.nats_server.as_deref()).await?;
    let [alpha_name, beta_name] = NODE_NAMES;
    let (alice_name, bob_name) = (nodes[0].username("alice"), nodes[1].username("bob"));
    nodes[0].create_user(&alice_name).await?;
    nodes[1].create_user(&bob_name).await?;
    let alice_device = nodes[0].create_device(&alice_name, "loadgen").await?;
    let bob_device = nodes[1].create_device(&bob_name, "loadgen").await?;

    let mut alice = Conn::connect(nodes[0].ws_url(0), &alice_device.token).await?;
    let mut bob = Conn::connect(nodes[1].ws_url(0), &bob_device.token).await?;
    let chat_id = alice.create_chat(&[nodes[1].user_id(&bob_name)]).await?;
    bob.wait_for("chatUpdate").await?;
    drop(bob);
    let asked = Instant::now();
    federation::peer_state(&nodes[0], beta_name).await?;
    let list_fresh = asked.elapsed();

    eprintln!("killing {beta_name}");
    nodes[1].kill()?;
    eprintln!(
        "sending {} messages at {alpha_name}, {} in flight",
        args.events, args.pipeline
    );
    let sent = replay::send_all(
        &mut alice,
        &chat_id,
        args.events,
        args.pipeline,
        args.message_bytes,
    )
    .await?;
    ensure!(
        sent.accepted > 0,
        "alpha refused every message: {:?}",
        sent.errors
    );
    // Idle from here on; closing it keeps the catch-up the only traffic.
    drop(alice);
    let asked = Instant::now();
    let before = federation::peer_state(&nodes[0], beta_name).await?;
    let list_took = asked.elapsed();
    let alpha_cpu_before = nodes[0].processes().cpu_time()?;

    eprintln!("restarting {beta_name} on its port and data folder");
    let restarted = Instant::now();
    nodes[1].restart().await?;
    let ready = restarted.elapsed();
    let (drained, outbox) = tokio::join!(
        replay::drain(nodes[1].ws_url(0), &bob_device.token, sent.accepted),
        watch_outbox(&nodes[0], beta_name, restarted, args.poll),
    );
    let drained = drained?;
    let (first_progress, empty) = outbox?;
    let caught_up = drained.finished_at - restarted;
    // alpha over the catch-up; beta since its restart (start-up included).
    let cpu = match (alpha_cpu_before, nodes[0].processes().cpu_time()?) {
        (Some(a0), Some(a1)) => nodes[1].processes().cpu_time()?.map(|b| CpuUse {
            used: Reading {
                natterd: a1.since(&a0).natterd.into_iter().chain(b.natterd).collect(),
                nats: None,
            },
            elapsed: caught_up,
        }),
        _ => None,
    };
    // The same admin call with the outbox drained (or draining, when unwatched), after the
    // CPU readings.
    let asked = Instant::now();
    let after = federation::peer_state(&nodes[0], beta_name).await?;
    let list_after = (asked.elapsed(), after.outbox_depth);
    let outbox = Outbox {
        depth_before: before.outbox_depth,
        state_before: before.state,
        list_fresh,
        list_took,
        list_after,
        first_progress,
        empty,
    };
    let rss = Node::processes_of(&nodes).rss_kib()?;
    for node in nodes {
        node.stop();
    }
    print_results(
        &args,
        &sent,
        &Times {
            ready,
            caught_up,
            drained: &drained,
            outbox: &outbox,
        },
        cpu.as_ref(),
        rss.as_ref(),
    );
    Ok(())
}

/// Polls `home`'s outbox depth for `peer` every `poll` until it is zero;
/// returns when it first went down and when it was empty, from `since` (`None`s
/// when `poll` is zero: not watched).
async fn watch_outbox(
    home: &Node,
    peer: &str,
    since: Instant,
    poll: Duration,
) -> Result<(Option<Duration>, Option<Duration>)> {
    if poll.is_zero() {
        return Ok((None, None));
    }
    let mut depth_at_start = None;
    let mut first_progress = None;
    loop {
        let state = federation::peer_state(home, peer).await?;
        let depth = state.outbox_depth;
        let start = *depth_at_start.get_or_insert(depth);
        if first_progress.is_none() && depth < start {
            first_progress = Some(since.elapsed());
        }
        if depth == 0 {
            let empty = since.elapsed();
            return Ok((first_progress.or(Some(empty)), Some(empty)));
        }
        if since.elapsed() > DEADLINE {
            bail!("{peer}'s outbox still holds {depth} events after {DEADLINE:?}");
        }
        tokio::time::sleep(poll).await;
    }
}

/// The catch-up's times, from beta's restart.
struct Times<'a> {
    ready: Duration,
    caught_up: Duration,
    drained: &'a Drained,
    outbox: &'a Outbox,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn print_results(
    args: &Args,
    sent: &Sent,
    times: &Times,
    cpu: Option<&CpuUse>,
    rss: Option<&Reading<u64>>,
) {
    let [alpha, beta] = NODE_NAMES;
    let Times {
        ready,
        caught_up,
        drained,
        outbox,
    } = times;
    let events = sent.accepted as u64;
    println!(
        "catchup: {} events of {} bytes queued at {alpha} (the home) for {beta} while it was down (kill -9); \
         federation.max_backoff {} on both; outbox on {}",
        args.events,
        args.message_bytes,
        humantime::format_duration(MAX_BACKOFF),
        if args.nats_server.is_some() {
            "JetStream (serve --nats)"
        } else {
            "fjall (serve)"
        }
    );
    println!(
        "sent:        {} accepted in {:.0} ms ({:.1}/s), {} in flight, errors: {}; alpha's outbox for beta: {} ({})",
        sent.accepted,
        ms(sent.elapsed),
        report::per_sec(events, sent.elapsed),
        args.pipeline,
        report::errors_line(&sent.errors),
        outbox.depth_before,
        outbox.state_before
    );
    println!(
        "restart:     {beta} ready {:.1} ms after its restart (same port and data folder)",
        ms(*ready)
    );
    println!(
        "peer list:   GET /admin/v1/peers on {alpha} took {:.1} ms before the outage, {:.1} ms with {} queued, {:.1} ms with {} after the catch-up",
        ms(outbox.list_fresh),
        ms(outbox.list_took),
        outbox.depth_before,
        ms(outbox.list_after.0),
        outbox.list_after.1
    );
    match (outbox.first_progress, outbox.empty) {
        (Some(first), Some(empty)) => println!(
            "outbox:      first events confirmed by {:.1} ms, empty at {:.1} ms after the restart \
             (polled every {}; {:.1} events/s from the first)",
            ms(first),
            ms(empty),
            humantime::format_duration(args.poll),
            report::per_sec(outbox.depth_before as u64, empty.saturating_sub(first))
        ),
        _ => println!("outbox:      not watched (--poll 0)"),
    }
    println!(
        "caught up:   all {} at bob's device {:.1} ms after the restart ({:.1} ms after it connected); \
         includes up to one back-off wait ({})",
        sent.accepted,
        ms(*caught_up),
        ms(drained.elapsed),
        humantime::format_duration(MAX_BACKOFF)
    );
    if drained.duplicates > 0 || drained.out_of_order > 0 {
        println!(
            "warning:     {} duplicates, {} out of order",
            drained.duplicates, drained.out_of_order
        );
    }
    println!(
        "CPU:         {} ({alpha} over the catch-up, {beta} since its restart)",
        report::cpu_line(cpu)
    );
    println!("CPU/event:   {}", report::per_unit_line(cpu, events));
    println!("natterd RSS: {}", report::rss_line(rss));
    let rss = RssJson::of(rss);
    report::print_json(&json!({
        "bench": "catchup",
        "topology": "federated",
        "outbox": if args.nats_server.is_some() { "jetstream" } else { "fjall" },
        "home": alpha,
        "peer": beta,
        "events": args.events,
        "messageBytes": args.message_bytes,
        "pipeline": args.pipeline,
        "maxBackoffS": MAX_BACKOFF.as_secs_f64(),
        "accepted": sent.accepted,
        "sendMs": report::round2(ms(sent.elapsed)),
        "sendErrors": sent.errors,
        "outboxDepthBefore": outbox.depth_before,
        "outboxStateBefore": outbox.state_before,
        "readyMs": report::round2(ms(*ready)),
        "peerListFreshMs": report::round2(ms(outbox.list_fresh)),
        "peerListMs": report::round2(ms(outbox.list_took)),
        "peerListAfterMs": report::round2(ms(outbox.list_after.0)),
        "outboxDepthAfter": outbox.list_after.1,
        "pollMs": report::round2(ms(args.poll)),
        "outboxFirstProgressMs": outbox.first_progress.map(|d| report::round2(ms(d))),
        "outboxEmptyMs": outbox.empty.map(|d| report::round2(ms(d))),
        "caughtUpMs": report::round2(ms(*caught_up)),
        "drainAfterConnectMs": report::round2(ms(drained.elapsed)),
        "duplicates": drained.duplicates,
        "outOfOrder": drained.out_of_order,
        "cpu": report::cpu_json(cpu),
        "cpuPerEventUs": report::per_unit_json(cpu, events),
        "natterdRssKib": rss.total,
        "natterdRssKibByProcess": rss.by_process,
    }));
}
