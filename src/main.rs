//! The `gsmtpd` binary: command line → configuration → logging → run.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use gsmtpd::config::Config;

/// A receive-only SMTP server that stores every message durably.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML); without it, the built-in defaults.
    #[arg(short = 'c', long = "config")]
    config: Option<PathBuf>,
    /// Port for the first listener (overrides the configuration).
    #[arg(short = 'p', long = "port")]
    port: Option<u16>,
    /// Log to this file instead of standard error (`-l` alone: ./log.txt).
    #[arg(short = 'l', long = "log-file", num_args = 0..=1, default_missing_value = "log.txt")]
    log_file: Option<PathBuf>,
    /// Verbose: log at debug level, including the SMTP dialogue.
    #[arg(short = 'v', long = "verbose")]
    verbose: bool,
    /// Check the configuration and exit.
    #[arg(long = "check")]
    check: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gsmtpd: {e:#}");
            return ExitCode::from(2);
        }
    };
    if cli.check {
        println!("configuration ok");
        return ExitCode::SUCCESS;
    }
    let _log_guard = match init_logging(&config, cli.verbose) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("gsmtpd: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gsmtpd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("gsmtpd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(cli: &Cli) -> Result<Config> {
    let mut config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(port) = cli.port {
        config.listener[0].addr.set_port(port);
    }
    if let Some(file) = &cli.log_file {
        config.log_file = Some(file.clone());
    }
    Ok(config)
}

fn init_logging(
    config: &Config,
    verbose: bool,
) -> Result<tracing_appender::non_blocking::WorkerGuard> {
    let level = if verbose {
        "debug"
    } else {
        config.log_level.as_str()
    };
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .with_context(|| format!("log level {level:?}"))?;
    let (writer, guard, ansi) = match &config.log_file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open log file {}", path.display()))?;
            let (w, g) = tracing_appender::non_blocking(file);
            (w, g, false)
        }
        None => {
            let (w, g) = tracing_appender::non_blocking(std::io::stderr());
            (w, g, std::io::stderr().is_terminal())
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi)
        .init();
    Ok(guard)
}

async fn serve(config: Config) -> Result<()> {
    let mut listeners = Vec::new();
    for l in &config.listener {
        let listener = tokio::net::TcpListener::bind(l.addr)
            .await
            .with_context(|| format!("cannot listen on {}", l.addr))?;
        listeners.push(listener);
    }
    let shutdown = shutdown_signal()?;
    let backends = gsmtpd::Backends::open(&config).await?;
    gsmtpd::serve(listeners, config, backends, shutdown).await?;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}
