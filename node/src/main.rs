//! `natterd`: parses flags and configuration, sets up logging, runs the node
//! until SIGINT or SIGTERM.

use clap::Parser;
use natter::config::{Cli, Config, LogFormat};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// mimalloc returns freed memory to the OS and keeps per-thread caches small;
/// with glibc's allocator, argon2's 19 MiB buffers and bursty fan-out left
/// hundreds of megabytes resident (docs/benchmarks.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_logging(config: &Config) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Human => builder.with_ansi(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
    }
    token.cancel();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (role, args) = cli.command.into_parts();
    let config = Config::resolve_for(role, args)?;
    init_logging(&config);
    let shutdown = CancellationToken::new();
    tokio::spawn(shutdown_signal(shutdown.clone()));
    // Boxed: the node's whole future is large, and runs once.
    Box::pin(natter::server::serve(config, shutdown)).await?;
    Ok(())
}
