//! `natterd`: parses flags and configuration, sets up logging, runs the node
//! until SIGINT or SIGTERM.

use clap::{CommandFactory, FromArgMatches};
use natter::config::{Cli, CliCommand, Config, ConfigCommand, LogFormat, RestoreArgs};
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

/// `natterd restore`: exits 1 with the reason when it cannot.
fn restore(args: &RestoreArgs) {
    match natter::backup::restore(&args.file, &args.data) {
        Ok(report) if args.json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
        }
        Ok(report) => print!("{}", natter::backup::describe_restore(&report)),
        Err(e) => {
            eprintln!(
                "natterd restore: {e}; {} was left as it was",
                args.data.display()
            );
            std::process::exit(1);
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let CliCommand::Config(ConfigCommand::Check(check)) = cli.command {
        let sub = matches
            .subcommand_matches("config")
            .and_then(|m| m.subcommand_matches("check"));
        match natter::config_check::run(check, sub) {
            Ok(text) => print!("{text}"),
            Err(e) => {
                eprintln!("natterd config check: the configuration is not valid: {e}");
                std::process::exit(1);
            }
        }
        return Ok(());
    }
    if let CliCommand::Restore(args) = cli.command {
        restore(&args);
        return Ok(());
    }
    let Some((role, args)) = cli.command.into_parts() else {
        unreachable!("config and restore commands return above")
    };
    let config = Config::resolve_for(role, args)?;
    init_logging(&config);
    let shutdown = CancellationToken::new();
    tokio::spawn(shutdown_signal(shutdown.clone()));
    // Boxed: the node's whole future is large, and runs once.
    Box::pin(natter::server::serve(config, shutdown)).await?;
    Ok(())
}
