//! The `gsmtpd` binary: command line → configuration → logging → server,
//! then signals: SIGHUP reloads, SIGUSR1 reopens the log, SIGTERM and
//! SIGINT shut down gracefully.

use std::io::{self, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use gsmtpd::config::Config;
use gsmtpd::logsink::{Flusher, LogSink};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, reload};

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
    pin_mmap_threshold();
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
    let logging = match Logging::init(&config, cli.verbose) {
        Ok(l) => l,
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
    let result = runtime.block_on(serve(&cli, config, &logging));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            drop(logging);
            eprintln!("gsmtpd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Large message buffers (hundreds of KB to tens of MB) must go back to the
/// system when freed. glibc raises its mmap threshold each time it frees a
/// mapped block, after which such buffers come from per-thread heaps that
/// keep freed memory: measured with 10 MB messages, that alone held ~30 MB.
/// A fixed threshold keeps every block over 256 KiB a mapping of its own.
fn pin_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt is called once, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

/// Reads the configuration and applies the command-line overrides.
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

/// The installed subscriber's handles.
struct Logging {
    filter: reload::Handle<EnvFilter, tracing_subscriber::Registry>,
    sink: LogSink,
    verbose: bool,
    /// Writes out buffered lines at exit.
    _flusher: Flusher,
}

impl Logging {
    fn init(config: &Config, verbose: bool) -> Result<Self> {
        let level = if verbose {
            "debug"
        } else {
            config.log_level.as_str()
        };
        let filter = EnvFilter::try_new(level).with_context(|| format!("log level {level:?}"))?;
        let (filter, handle) = reload::Layer::new(filter);
        let (sink, flusher) = LogSink::open(config.log_file.as_deref()).with_context(|| {
            format!(
                "cannot open log file {}",
                config
                    .log_file
                    .as_deref()
                    .unwrap_or(Path::new("-"))
                    .display()
            )
        })?;
        let ansi = config.log_file.is_none() && io::stderr().is_terminal();
        tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(sink.clone())
                    .with_ansi(ansi),
            )
            .init();
        Ok(Self {
            filter: handle,
            sink,
            verbose,
            _flusher: flusher,
        })
    }

    fn set_level(&self, level: &str) {
        if self.verbose {
            return;
        }
        match EnvFilter::try_new(level) {
            Ok(f) => {
                if let Err(e) = self.filter.modify(|current| *current = f) {
                    tracing::warn!(error = %e, "cannot change the log level");
                }
            }
            Err(e) => tracing::warn!(error = %e, "log level unchanged"),
        }
    }
}

async fn serve(cli: &Cli, config: Config, logging: &Logging) -> Result<()> {
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let mut usr1 = signal(SignalKind::user_defined1()).context("cannot handle SIGUSR1")?;
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;

    let backends = gsmtpd::Backends::open(&config).await?;
    let pid_file = config.pid_file.clone();
    let server = gsmtpd::Server::bind(config, backends).await?;
    if let Some(path) = &pid_file {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .with_context(|| format!("cannot write pid file {}", path.display()))?;
    }
    loop {
        tokio::select! {
            _ = hup.recv() => reload(cli, &server, logging).await,
            _ = usr1.recv() => match logging.sink.reopen() {
                Ok(Some(path)) => tracing::info!(path = %path.display(), "log file reopened"),
                Ok(None) => tracing::info!("SIGUSR1: logging to standard error, nothing to reopen"),
                Err(e) => tracing::error!(error = %e, "cannot reopen the log file"),
            },
            _ = term.recv() => {
                tracing::info!("SIGTERM received");
                break;
            }
            _ = int.recv() => {
                tracing::info!("SIGINT received");
                break;
            }
        }
    }
    server.shutdown().await;
    if let Some(path) = &pid_file {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// SIGHUP: read the file again, validate, swap; keep the old on error.
async fn reload(cli: &Cli, server: &gsmtpd::Server, logging: &Logging) {
    if cli.config.is_none() {
        tracing::warn!("SIGHUP: started without -c, nothing to reload");
        return;
    }
    let config = match load(cli) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "reload failed, keeping the old configuration");
            return;
        }
    };
    let level = config.log_level.clone();
    match server.reload(config).await {
        Ok(()) => logging.set_level(&level),
        Err(e) => tracing::error!(error = %e, "reload failed, keeping the old configuration"),
    }
}
