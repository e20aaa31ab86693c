//! Run with: cargo run --release -p natter-loadgen -- <subcommand> ...
//!
//! Load generator for natterd. It drives a real node over real WebSockets:
//! either one it spawns (`--natterd target/release/natterd`: a temporary data
//! folder, open registration, every `[limits]` rate and quota lifted in its
//! config, as docs/configuration.md documents; killed at the end),
//! in the topology `--topology` names (`embedded`, `nats`: over a spawned
//! nats-server, `split`: a core and two gateways, `federated`: two peered
//! nodes, for `fanout`), or one already running
//! (`--url URL --admin-token TOKEN`). Users and devices are created through the
//! admin API. Memory and CPU are read from /proc for every natterd process
//! (summed and each) and for nats-server. Subcommands:
//! - `fanout`: send throughput, delivery throughput and latency in one big chat;
//! - `idle`: natterd's memory per idle WebSocket;
//! - `replay`: how fast an offline device drains a full inbox;
//! - `catchup`: how fast a peer node that was down gets what its peer queued
//!   for it meanwhile (two spawned nodes).
//!
//! Each prints human-readable lines, then one JSON line with all its numbers.
//! Progress goes to stderr.

mod catchup;
mod fanout;
mod federation;
mod idle;
mod idlers;
mod node;
mod replay;
mod report;
mod spawn;
mod usage;
mod ws;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Parser)]
#[command(name = "natter-loadgen", version, about = "Load generator for natterd")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// One chat, all members online; senders send as fast as the node answers.
    Fanout(fanout::Args),
    /// Many idle WebSockets; natterd's memory per connection.
    Idle(idle::Args),
    /// An offline device connects to a full inbox; time to drain it.
    Replay(replay::Args),
    /// A peer node down while its peer queues events for it; time to catch up.
    Catchup(catchup::Args),
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    // Thousands of sockets need thousands of descriptors; a spawned natterd
    // inherits the raised limit too.
    let nofile_limit =
        rlimit::increase_nofile_limit(u64::MAX).context("raise the open-files limit")?;
    let bench = async {
        match cli.bench {
            Bench::Fanout(args) => fanout::run(args, nofile_limit).await,
            Bench::Idle(args) => idle::run(args, nofile_limit).await,
            Bench::Replay(args) => replay::run(args).await,
            Bench::Catchup(args) => catchup::run(args).await,
        }
    };
    // On SIGINT or SIGTERM the benchmark is dropped rather than the process
    // just exiting: dropping it kills the processes it spawned.
    tokio::select! {
        result = bench => result,
        signal = stop_signal() => bail!("stopped by {}", signal?),
    }
}

/// Waits for SIGINT or SIGTERM; returns its name.
async fn stop_signal() -> Result<&'static str> {
    let mut term = signal(SignalKind::terminate()).context("listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listen for SIGINT")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}
