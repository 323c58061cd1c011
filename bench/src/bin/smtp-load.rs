//! `smtp-load`: sends SMTP load to a server on loopback and prints the
//! rate, the latency from end of data to the reply, and the reply counts.
//!
//! The last line of output is machine-readable for scripts:
//! `RESULT ok=… temp=… perm=… io_errors=… attempted=… seconds=… rate=… p50_ms=… p99_ms=…`.
//! The exit status is 0 only if every message got its 250 in time.

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use gsmtpd_bench::{Report, Spec, run};

/// Send SMTP load to a local server and measure it.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Server address (loopback only).
    #[arg(long, default_value = "127.0.0.1:2525")]
    addr: String,
    /// Concurrent connections.
    #[arg(short = 'c', long, default_value_t = 50)]
    connections: usize,
    /// Messages in all.
    #[arg(short = 'n', long, default_value_t = 5000)]
    messages: u64,
    /// Messages per connection before it reconnects (0: no limit).
    #[arg(long, default_value_t = 0)]
    per_connection: u64,
    /// Octets of content per message.
    #[arg(short = 's', long, default_value_t = 1024)]
    size: usize,
    /// Pipeline MAIL/RCPT/DATA, and the data with the next envelope, when
    /// the server offers PIPELINING.
    #[arg(long)]
    pipelining: bool,
    /// Hard limit for the whole run, in seconds.
    #[arg(long, default_value_t = 300)]
    time_limit: u64,
    /// Reverse-path.
    #[arg(long, default_value = "load@bench.test")]
    from: String,
    /// Recipient of every message.
    #[arg(long, default_value = "sink@example.com")]
    rcpt: String,
    /// EHLO name.
    #[arg(long, default_value = "bench.test")]
    helo: String,
}

fn resolve(addr: &str) -> Result<SocketAddr, String> {
    addr.to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))
}

fn ms(us: Option<u64>) -> f64 {
    us.map_or(f64::NAN, |us| us as f64 / 1000.0)
}

fn print(spec: &Spec, r: &Report) {
    println!(
        "smtp-load: {} connections, {} messages of {} octets to {}, pipelining {}",
        spec.connections,
        spec.messages,
        spec.size,
        spec.addr,
        if spec.pipelining { "on" } else { "off" }
    );
    println!(
        "  {} answered 250 in {:.3} s: {:.1} messages/s{}",
        r.ok,
        r.elapsed.as_secs_f64(),
        r.rate(),
        if r.timed_out {
            " (TIME LIMIT REACHED)"
        } else {
            ""
        }
    );
    println!(
        "  replies: 250={} 4xx={} 5xx={}  connection errors={}",
        r.ok, r.temp, r.perm, r.io_errors
    );
    println!(
        "  end of data → reply: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        ms(r.percentile(50.0)),
        ms(r.percentile(99.0)),
        ms(r.latencies_us.last().copied())
    );
    println!(
        "RESULT ok={} temp={} perm={} io_errors={} attempted={} seconds={:.3} rate={:.1} p50_ms={:.3} p99_ms={:.3}",
        r.ok,
        r.temp,
        r.perm,
        r.io_errors,
        r.attempted,
        r.elapsed.as_secs_f64(),
        r.rate(),
        ms(r.percentile(50.0)),
        ms(r.percentile(99.0)),
    );
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let addr = match resolve(&cli.addr) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("smtp-load: {e}");
            return ExitCode::from(2);
        }
    };
    let spec = Spec {
        addr,
        connections: cli.connections,
        messages: cli.messages,
        per_connection: cli.per_connection,
        size: cli.size,
        pipelining: cli.pipelining,
        time_limit: Duration::from_secs(cli.time_limit),
        from: cli.from,
        rcpt: cli.rcpt,
        helo: cli.helo,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("smtp-load: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(spec.clone())) {
        Ok(report) => {
            print(&spec, &report);
            if report.all_ok(&spec) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("smtp-load: {e}");
            ExitCode::from(2)
        }
    }
}
