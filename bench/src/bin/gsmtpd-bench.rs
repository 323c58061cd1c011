//! `gsmtpd-bench`: every benchmark scenario against Postfix's `smtp-sink`
//! and gsmtpd (null, durable SQLite, batched MySQL) in one run, repeated,
//! with medians side by side.
//!
//! Each measurement starts its server fresh as a child of this process and
//! stops it with SIGTERM; `wait4` then reports the child's exact CPU time
//! (user + system, all threads, microsecond resolution) and its peak RSS.
//! The CPU of an idle start and stop, measured once per server, is
//! subtracted, so "CPU per message" is what the messages cost.
//!
//! Run it through `bench/run.sh`, which builds everything and installs
//! `smtp-sink`/`smtp-source` if they are missing.

use std::io::Write;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use gsmtpd_bench::{Spec, run};

/// Benchmark gsmtpd against Postfix's smtp-sink.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The gsmtpd binary (release build).
    #[arg(long, default_value = "target/release/gsmtpd")]
    gsmtpd: PathBuf,
    /// Postfix's smtp-sink.
    #[arg(long, default_value = "/usr/sbin/smtp-sink")]
    smtp_sink: PathBuf,
    /// Postfix's smtp-source.
    #[arg(long, default_value = "/usr/sbin/smtp-source")]
    smtp_source: PathBuf,
    /// Repetitions of each measurement; the table shows medians.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// MySQL URL for the batched MySQL runs; empty to skip them.
    #[arg(long, default_value = "mysql://root@127.0.0.1:3306/test")]
    mysql_url: String,
    /// Scenarios to run (a, b, c, d, e, t).
    #[arg(long, default_value = "a,b,c,d,e,t", value_delimiter = ',')]
    only: Vec<String>,
    /// Servers to run: sink, null, sqlite, sqlite-raw, mysql.
    #[arg(
        long,
        default_value = "sink,null,sqlite,sqlite-raw,mysql",
        value_delimiter = ','
    )]
    servers: Vec<String>,
    /// Generators to run: source (smtp-source), pipelined (smtp-load).
    #[arg(long, default_value = "source,pipelined", value_delimiter = ',')]
    generators: Vec<String>,
    /// Divide every message count by this (a quick look, not a result).
    #[arg(long, default_value_t = 1)]
    scale: u64,
    /// Scratch directory (databases, configs, logs).
    #[arg(long, default_value = "target/bench")]
    workdir: PathBuf,
}

/// The server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Sink,
    Null,
    Sqlite,
    /// SQLite with `pipeline = ["received"]`: storage without MIME parsing
    /// and hashing, to show what those cost.
    SqliteRaw,
    Mysql,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Sink => "smtp-sink",
            Server::Null => "gsmtpd null",
            Server::Sqlite => "gsmtpd sqlite FULL",
            Server::SqliteRaw => "gsmtpd sqlite FULL, no parse",
            Server::Mysql => "gsmtpd mysql",
        }
    }
}

/// The load generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Generator {
    /// Postfix's smtp-source: no pipelining, one command at a time.
    Source,
    /// Our smtp-load with PIPELINING.
    Pipelined,
}

impl Generator {
    fn name(self) -> &'static str {
        match self {
            Generator::Source => "smtp-source",
            Generator::Pipelined => "smtp-load -P",
        }
    }
}

/// A throughput scenario.
#[derive(Debug, Clone, Copy)]
struct Load {
    key: &'static str,
    title: &'static str,
    size: usize,
    per_connection: u64,
    connections: usize,
    messages: u64,
}

const LOADS: [Load; 3] = [
    Load {
        key: "a",
        title: "(a) 1 KB, 1 msg/conn, 50 conc.",
        size: 1024,
        per_connection: 1,
        connections: 50,
        messages: 20_000,
    },
    Load {
        key: "b",
        title: "(b) 1 KB, 100 msg/conn, 10 conc.",
        size: 1024,
        per_connection: 100,
        connections: 10,
        messages: 20_000,
    },
    Load {
        key: "c",
        title: "(c) 100 KB, 1 msg/conn, 20 conc.",
        size: 102_400,
        per_connection: 1,
        connections: 20,
        messages: 2_000,
    },
];

/// One measurement.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    rate: f64,
    cpu_us_per_msg: f64,
    p50_ms: f64,
    p99_ms: f64,
    peak_rss_mb: f64,
}

/// What `wait4` says of a child that ended.
struct Usage {
    cpu: Duration,
    max_rss_kb: u64,
}

/// A server process.
struct Running {
    child: Child,
    addr: SocketAddr,
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .expect("a free loopback port")
        .local_addr()
        .unwrap()
        .port()
}

/// Raises the open-files limit to its hard limit; (d) needs 5000 idle
/// connections on both sides plus the servers' own descriptors.
fn raise_nofile() {
    const NEEDED: libc::rlim_t = 12_000;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct; children inherit it.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    if lim.rlim_cur < NEEDED {
        eprintln!(
            "bench: {} open files allowed, (d) needs {NEEDED}; it may fail",
            lim.rlim_cur
        );
    }
}

struct Bench {
    cli: Cli,
    rt: tokio::runtime::Runtime,
    /// CPU of an idle start and stop, per server.
    idle_cpu: Vec<(Server, Duration)>,
    run_id: u64,
}

impl Bench {
    fn config(&mut self, server: Server, port: u16, large: bool) -> PathBuf {
        self.run_id += 1;
        let dir = self.cli.workdir.join(format!("run{}", self.run_id));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = match server {
            Server::Null => "kind = \"null\"\n".to_owned(),
            Server::Sqlite | Server::SqliteRaw => format!(
                "kind = \"sqlite\"\npath = \"{}\"\nsynchronous = \"full\"\n",
                dir.join("gsmtpd.db").display()
            ),
            Server::Mysql => format!("kind = \"mysql\"\nurl = \"{}\"\n", self.mysql_scratch_url()),
            Server::Sink => unreachable!(),
        };
        let pipeline = if server == Server::SqliteRaw {
            "pipeline = [\"received\"]\n"
        } else {
            ""
        };
        let sizes = if large {
            // The in-flight limit scenario (e) is measured against.
            "max_message_size = 16777216\nmax_inflight_bytes = 67108864\n"
        } else {
            "max_message_size = 16777216\n"
        };
        let text = format!(
            "hostname = \"bench.test\"\nallowed_hosts = [\"*\"]\nmax_clients = 20000\n\
             max_connections_per_ip = 0\nlog_level = \"info\"\nlog_file = \"{}\"\n{sizes}{pipeline}\
             [[listener]]\naddr = \"127.0.0.1:{port}\"\n[[store]]\n{store}",
            dir.join("gsmtpd.log").display()
        );
        let path = dir.join("gsmtpd.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn mysql_scratch_url(&self) -> String {
        let base = self.cli.mysql_url.trim_end_matches('/');
        let cut = base.rfind('/').expect("mysql://host/db");
        format!("{}/gsmtpd_bench_{}", &base[..cut], std::process::id())
    }

    fn mysql(&self, sql: &str) {
        // mysql://user[:pass]@host:port/db → the command-line client.
        let rest = self.cli.mysql_url.trim_start_matches("mysql://");
        let (auth, hostpart) = rest.split_once('@').unwrap_or(("root", rest));
        let (user, pass) = auth.split_once(':').unwrap_or((auth, ""));
        let hostport = hostpart.split('/').next().unwrap_or("127.0.0.1:3306");
        let (host, port) = hostport.split_once(':').unwrap_or((hostport, "3306"));
        let client = ["mariadb", "mysql"]
            .into_iter()
            .find(|c| Command::new(c).arg("--version").output().is_ok())
            .expect("the mariadb or mysql client");
        let ok = Command::new(client)
            .env("MYSQL_PWD", pass)
            .args(["-h", host, "-P", port, "-u", user, "-e", sql])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mysql: {sql}");
    }

    fn start(&mut self, server: Server, large: bool) -> Running {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = match server {
            Server::Sink => Command::new(&self.cli.smtp_sink)
                .args(["-u", "nobody", "-m", "20000", &addr.to_string(), "4096"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn(),
            _ => {
                if server == Server::Mysql {
                    let db = self.mysql_scratch_url();
                    let name = db.rsplit('/').next().unwrap().to_owned();
                    self.mysql(&format!(
                        "DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name}"
                    ));
                }
                let config = self.config(server, port, large);
                Command::new(&self.cli.gsmtpd)
                    .args(["-c", config.to_str().unwrap()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
            }
        }
        .unwrap_or_else(|e| panic!("starting {}: {e}", server.name()));
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "{} did not listen",
                server.name()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // That probe connection is part of the idle start, like a health check.
        Running { child, addr }
    }

    fn stop(&self, mut r: Running) -> Usage {
        let pid = r.child.id() as libc::pid_t;
        // SAFETY: signalling and reaping our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value to be overwritten.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 on our own child with valid out-pointers.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        assert_eq!(rc, pid, "wait4");
        let _ = r.child.stdin.take();
        let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        Usage {
            cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
            max_rss_kb: usage.ru_maxrss as u64,
        }
    }

    fn idle_cpu(&mut self, server: Server) -> Duration {
        if let Some((_, d)) = self.idle_cpu.iter().find(|(s, _)| *s == server) {
            return *d;
        }
        let mut samples: Vec<Duration> = (0..3)
            .map(|_| {
                let r = self.start(server, false);
                std::thread::sleep(Duration::from_millis(200));
                self.stop(r).cpu
            })
            .collect();
        samples.sort();
        let d = samples[1];
        self.idle_cpu.push((server, d));
        d
    }

    /// One throughput measurement.
    fn throughput(&mut self, server: Server, generator: Generator, load: &Load) -> Sample {
        let idle = self.idle_cpu(server);
        let messages = (load.messages / self.cli.scale).max(load.connections as u64);
        let r = self.start(server, false);
        let started = Instant::now();
        let (ok, p50, p99) = match generator {
            Generator::Source => {
                // smtp-source keeps a session for all its messages with -d,
                // so 100 messages per connection = runs of 100 x sessions.
                let rounds = if load.per_connection > 1 {
                    messages / (load.per_connection * load.connections as u64)
                } else {
                    1
                };
                let per_round = if load.per_connection > 1 {
                    load.per_connection * load.connections as u64
                } else {
                    messages
                };
                for _ in 0..rounds.max(1) {
                    let mut cmd = Command::new(&self.cli.smtp_source);
                    if load.per_connection > 1 {
                        cmd.arg("-d");
                    }
                    let status = cmd
                        .args([
                            "-s",
                            &load.connections.to_string(),
                            "-l",
                            &load.size.to_string(),
                            "-m",
                            &per_round.to_string(),
                            "-f",
                            "load@bench.test",
                            "-t",
                            "sink@example.com",
                            &r.addr.to_string(),
                        ])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .expect("smtp-source runs");
                    assert!(
                        status.success(),
                        "smtp-source failed against {}",
                        server.name()
                    );
                }
                (per_round * rounds.max(1), f64::NAN, f64::NAN)
            }
            Generator::Pipelined => {
                let spec = Spec {
                    addr: r.addr,
                    connections: load.connections,
                    messages,
                    per_connection: load.per_connection,
                    size: load.size,
                    pipelining: true,
                    time_limit: Duration::from_secs(600),
                    from: "load@bench.test".into(),
                    rcpt: "sink@example.com".into(),
                    helo: "bench.test".into(),
                };
                let report = self.rt.block_on(run(spec.clone())).expect("a valid spec");
                assert!(
                    report.all_ok(&spec),
                    "{}: not every message got 250: {report:?}",
                    server.name()
                );
                let ms = |p| {
                    report
                        .percentile(p)
                        .map_or(f64::NAN, |us| us as f64 / 1000.0)
                };
                (report.ok, ms(50.0), ms(99.0))
            }
        };
        let elapsed = started.elapsed();
        let usage = self.stop(r);
        let cpu = usage.cpu.saturating_sub(idle);
        Sample {
            rate: ok as f64 / elapsed.as_secs_f64(),
            cpu_us_per_msg: cpu.as_secs_f64() * 1e6 / ok as f64,
            p50_ms: p50,
            p99_ms: p99,
            peak_rss_mb: usage.max_rss_kb as f64 / 1024.0,
        }
    }

    /// (d): RSS growth per idle connection after EHLO.
    fn idle_connections(&mut self, server: Server, count: usize) -> f64 {
        let r = self.start(server, false);
        let pid = r.child.id();
        let rss_kb = || -> u64 {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .unwrap()
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap()
        };
        let addr = r.addr;
        let per_conn = self.rt.block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            /// Reads until the last line of a reply (`NNN ` at a line start).
            async fn read_reply(s: &mut tokio::net::TcpStream) {
                let mut buf = [0u8; 2048];
                let mut got = Vec::new();
                loop {
                    let n = s.read(&mut buf).await.expect("read");
                    assert!(n > 0, "closed");
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got);
                    if text.lines().any(|l| l.len() > 3 && l.as_bytes()[3] == b' ') {
                        return;
                    }
                }
            }
            async fn open(addr: SocketAddr) -> tokio::net::TcpStream {
                let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
                read_reply(&mut s).await;
                s.write_all(b"EHLO idle.test\r\n").await.unwrap();
                read_reply(&mut s).await;
                s
            }
            // Warm up the allocator and the runtime, then measure.
            let mut held = Vec::new();
            for _ in 0..200 {
                held.push(open(addr).await);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            let before = rss_kb();
            for _ in 0..count {
                held.push(open(addr).await);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let after = rss_kb();
            (after.saturating_sub(before) as f64 * 1024.0) / count as f64
        });
        self.stop(r);
        per_conn
    }

    /// (e): peak RSS while 4 clients send 10 MB messages.
    fn large(&mut self, server: Server) -> Sample {
        let messages = (24 / self.cli.scale).max(4);
        let r = self.start(server, true);
        let spec = Spec {
            addr: r.addr,
            connections: 4,
            messages,
            per_connection: 0,
            size: 10 << 20,
            pipelining: true,
            time_limit: Duration::from_secs(600),
            from: "load@bench.test".into(),
            rcpt: "sink@example.com".into(),
            helo: "bench.test".into(),
        };
        let started = Instant::now();
        let report = self.rt.block_on(run(spec.clone())).expect("a valid spec");
        assert!(report.all_ok(&spec), "{}: {report:?}", server.name());
        let elapsed = started.elapsed();
        let usage = self.stop(r);
        Sample {
            rate: report.ok as f64 / elapsed.as_secs_f64(),
            cpu_us_per_msg: usage.cpu.as_secs_f64() * 1e6 / report.ok as f64,
            p50_ms: report
                .percentile(50.0)
                .map_or(f64::NAN, |u| u as f64 / 1000.0),
            p99_ms: report
                .percentile(99.0)
                .map_or(f64::NAN, |u| u as f64 / 1000.0),
            peak_rss_mb: usage.max_rss_kb as f64 / 1024.0,
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn medians(samples: &[Sample]) -> Sample {
    let m = |f: fn(&Sample) -> f64| median(samples.iter().map(f).collect());
    Sample {
        rate: m(|s| s.rate),
        cpu_us_per_msg: m(|s| s.cpu_us_per_msg),
        p50_ms: m(|s| s.p50_ms),
        p99_ms: m(|s| s.p99_ms),
        peak_rss_mb: m(|s| s.peak_rss_mb),
    }
}

fn fmt(x: f64, digits: usize) -> String {
    if x.is_nan() {
        "-".into()
    } else {
        format!("{x:.digits$}")
    }
}

fn main() {
    let cli = Cli::parse();
    raise_nofile();
    for (what, p) in [
        ("gsmtpd", &cli.gsmtpd),
        ("smtp-sink", &cli.smtp_sink),
        ("smtp-source", &cli.smtp_source),
    ] {
        assert!(Path::new(p).exists(), "{what} not found at {}", p.display());
    }
    std::fs::create_dir_all(&cli.workdir).unwrap();
    let only = cli.only.clone();
    let want = |k: &str| only.iter().any(|o| o == k);
    let mysql = !cli.mysql_url.is_empty() && cli.servers.iter().any(|s| s == "mysql");
    let servers: Vec<Server> = [
        ("sink", Server::Sink),
        ("null", Server::Null),
        ("sqlite", Server::Sqlite),
        ("sqlite-raw", Server::SqliteRaw),
        ("mysql", Server::Mysql),
    ]
    .into_iter()
    .filter(|(k, s)| cli.servers.iter().any(|o| o == k) && (*s != Server::Mysql || mysql))
    .map(|(_, s)| s)
    .collect();
    let generators: Vec<Generator> = [
        ("source", Generator::Source),
        ("pipelined", Generator::Pipelined),
    ]
    .into_iter()
    .filter(|(k, _)| cli.generators.iter().any(|o| o == k))
    .map(|(_, g)| g)
    .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut b = Bench {
        cli,
        rt,
        idle_cpu: Vec::new(),
        run_id: 0,
    };
    let reps = b.cli.reps.max(1);
    let out = std::io::stdout();
    let mut out = out.lock();
    writeln!(
        out,
        "gsmtpd-bench: {} repetitions, medians; CPU = server user+system time per message (wait4), idle start/stop subtracted",
        reps
    )
    .unwrap();
    writeln!(
        out,
        "\n| scenario | generator | server | msgs/s | CPU µs/msg | CPU vs sink | p50 ms | p99 ms |\n|---|---|---|---|---|---|---|---|"
    )
    .unwrap();
    for load in LOADS.iter().filter(|l| want(l.key)) {
        for &generator in &generators {
            let mut sink_cpu = f64::NAN;
            for &server in &servers {
                let samples: Vec<Sample> = (0..reps)
                    .map(|_| b.throughput(server, generator, load))
                    .collect();
                let s = medians(&samples);
                if server == Server::Sink {
                    sink_cpu = s.cpu_us_per_msg;
                }
                writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} |",
                    load.title,
                    generator.name(),
                    server.name(),
                    fmt(s.rate, 0),
                    fmt(s.cpu_us_per_msg, 1),
                    fmt(s.cpu_us_per_msg / sink_cpu, 2),
                    fmt(s.p50_ms, 2),
                    fmt(s.p99_ms, 2),
                )
                .unwrap();
                out.flush().unwrap();
            }
        }
    }
    if want("d") {
        writeln!(out, "\n| (d) 5000 idle connections after EHLO | RSS growth per connection (bytes) |\n|---|---|").unwrap();
        for &server in servers.iter().filter(|s| **s != Server::Mysql) {
            let v: Vec<f64> = (0..reps)
                .map(|_| b.idle_connections(server, 5000))
                .collect();
            writeln!(out, "| {} | {} |", server.name(), fmt(median(v), 0)).unwrap();
            out.flush().unwrap();
        }
    }
    if want("e") {
        writeln!(
            out,
            "\n| (e) 10 MB messages, 4 concurrent | peak RSS MB | msgs/s | CPU µs/msg |\n|---|---|---|---|"
        )
        .unwrap();
        for &server in servers.iter().filter(|s| **s != Server::Mysql) {
            let samples: Vec<Sample> = (0..reps).map(|_| b.large(server)).collect();
            let s = medians(&samples);
            writeln!(
                out,
                "| {} | {} | {} | {} |",
                server.name(),
                fmt(s.peak_rss_mb, 1),
                fmt(s.rate, 1),
                fmt(s.cpu_us_per_msg, 0)
            )
            .unwrap();
            out.flush().unwrap();
        }
        writeln!(out, "(gsmtpd runs (e) with max_inflight_bytes = 64 MiB)").unwrap();
    }
    if want("t") {
        let load = Load {
            key: "t",
            title: "(t) 1 KB, 100 msg/conn, 200 conc.",
            size: 1024,
            per_connection: 100,
            connections: 200,
            messages: 60_000,
        };
        writeln!(
            out,
            "\n| (t) throughput, pipelined, 200 connections | msgs/s | vs null | CPU µs/msg | p50 ms | p99 ms |\n|---|---|---|---|---|---|"
        )
        .unwrap();
        let mut null_rate = f64::NAN;
        for &server in servers.iter().filter(|s| **s != Server::Sink) {
            let samples: Vec<Sample> = (0..reps)
                .map(|_| b.throughput(server, Generator::Pipelined, &load))
                .collect();
            let s = medians(&samples);
            if server == Server::Null {
                null_rate = s.rate;
            }
            writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                server.name(),
                fmt(s.rate, 0),
                fmt(s.rate / null_rate, 2),
                fmt(s.cpu_us_per_msg, 1),
                fmt(s.p50_ms, 2),
                fmt(s.p99_ms, 2)
            )
            .unwrap();
            out.flush().unwrap();
        }
    }
    if mysql {
        let url = b.mysql_scratch_url();
        let name = url.rsplit('/').next().unwrap().to_owned();
        b.mysql(&format!("DROP DATABASE IF EXISTS {name}"));
    }
}
