//! The `gsmtpd` binary as an operator runs it: flags, configuration errors,
//! signals, and a `kill -9` in the middle of a load.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as AsyncBufReader};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_gsmtpd");

fn write_config(dir: &Path, db: &Path) -> PathBuf {
    let path = dir.join("gsmtpd.toml");
    std::fs::write(
        &path,
        format!(
            "hostname = \"mx.test\"\nallowed_hosts = [\"*\"]\nshutdown_timeout_secs = 5\n\
             max_connections_per_ip = 0\n\
             [[listener]]\naddr = \"127.0.0.1:0\"\n[store]\nkind = \"sqlite\"\npath = {:?}\n",
            db
        ),
    )
    .unwrap();
    path
}

/// A running gsmtpd process and the address it listens on.
pub(crate) struct Proc {
    child: Child,
    pub(crate) addr: SocketAddr,
    /// Every line it wrote to standard error so far.
    log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Proc {
    /// Starts the binary and waits for its "listening" log line on stderr.
    pub(crate) fn start(args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log2 = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                log2.lock().unwrap().push(line);
            }
        });
        let mut p = Self {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            log,
        };
        p.addr = listening_addr(&p.wait_for("listening addr="));
        p
    }

    /// Waits for a log line containing `needle` (after any seen before)
    /// and returns it.
    fn wait_for(&self, needle: &str) -> String {
        self.wait_for_nth(needle, 1)
    }

    /// Waits for the `n`th log line containing `needle`.
    fn wait_for_nth(&self, needle: &str, n: usize) -> String {
        wait_for_line(|| self.log.lock().unwrap().join("\n"), needle, n)
    }

    pub(crate) fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0);
    }

    pub(crate) fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "gsmtpd did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Waits up to 30 s for the `n`th line of `log()` containing `needle`.
fn wait_for_line(log: impl Fn() -> String, needle: &str, n: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = log();
        if let Some(l) = log.lines().filter(|l| l.contains(needle)).nth(n - 1) {
            return l.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {needle:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends SIGTERM to `child` and checks that it exits cleanly.
async fn terminate(mut child: Child) {
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

/// The address in a `listening addr=...` log line.
fn listening_addr(line: &str) -> SocketAddr {
    line.split("listening addr=")
        .nth(1)
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn bad_config_exits_nonzero_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "max_recipent = 5\n").unwrap();
    let out = Command::new(BIN).arg("-c").arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("max_recipent"), "{err}");

    let out = Command::new(BIN)
        .args(["-c", "/nonexistent/gsmtpd.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("/nonexistent/gsmtpd.toml")
    );
}

#[test]
fn check_flag_validates_the_sample() {
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/gsmtpd.toml.sample");
    let out = Command::new(BIN)
        .args(["-c", sample, "--check"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn unusable_database_path_exits_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    // The database path is a directory: SQLite cannot open it.
    let db = dir.path().join("db");
    std::fs::create_dir(&db).unwrap();
    let cfg = write_config(dir.path(), &db);
    let out = Command::new(BIN)
        .args(["-c", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sqlite"));
}

#[tokio::test(flavor = "multi_thread")]
async fn port_and_log_flags_then_sigterm_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let cfg = write_config(dir.path(), &db);
    let log = dir.path().join("gsmtpd.log");
    // Find a free port for -p.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(BIN)
        .args([
            "-c",
            cfg.to_str().unwrap(),
            "-p",
            &port.to_string(),
            "-l",
            log.to_str().unwrap(),
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut c = loop {
        if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
            drop(s);
            break crate::harness::Client::connect(addr).await;
        }
        assert!(Instant::now() < deadline, "gsmtpd listens on -p port");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let id = c
        .send_message("a@sender.test", &["r@any.test"], b"Subject: flags\r\n\r\n")
        .await
        .queued_id();
    c.expect("QUIT", 221).await;
    terminate(child).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&format!("listening addr=127.0.0.1:{port}")),
        "{text}"
    );
    assert!(text.contains(&format!("queued id={id}")), "{text}");
    assert!(
        text.contains("disconnect ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5"),
        "{text}"
    );
    assert!(text.contains("stopped"), "{text}");
}

/// Sends messages until `stop` is set or the connection fails; returns the
/// ids that got a `250`. Any error just ends the loop: the server may be
/// killed at any byte.
async fn load_client(addr: SocketAddr, stop: Arc<AtomicBool>, n: usize) -> Vec<String> {
    let mut acked = Vec::new();
    let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
        return acked;
    };
    let (r, mut w) = stream.into_split();
    let mut r = AsyncBufReader::new(r);
    let mut line = String::new();
    // Reads one reply's final line; None on EOF or error.
    macro_rules! reply {
        () => {{
            loop {
                line.clear();
                match r.read_line(&mut line).await {
                    Ok(0) | Err(_) => return acked,
                    Ok(_) if line.as_bytes().get(3) == Some(&b'-') => continue,
                    Ok(_) => break line.clone(),
                }
            }
        }};
    }
    reply!();
    if w.write_all(b"EHLO load.test\r\n").await.is_err() {
        return acked;
    }
    reply!();
    for i in 0..n {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let msg = b"MAIL FROM:<load@sender.test>\r\nRCPT TO:<r@example.com>\r\nDATA\r\n";
        if w.write_all(msg).await.is_err() {
            return acked;
        }
        for _ in 0..3 {
            reply!();
        }
        let body = format!("Subject: load {i}\r\n\r\n{}\r\n.\r\n", "z".repeat(512));
        if w.write_all(body.as_bytes()).await.is_err() {
            return acked;
        }
        let last = reply!();
        if let Some(id) = last.trim_end().strip_prefix("250 2.0.0 Ok: queued as ") {
            acked.push(id.to_owned());
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_under_load_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let cfg = write_config(dir.path(), &db);
    let cfg = cfg.to_str().unwrap();
    let mut server = Proc::start(&["-c", cfg]);
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..50)
        .map(|_| tokio::spawn(load_client(server.addr, stop.clone(), 10_000)))
        .collect();
    // Let the load run, then kill the server without warning.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.signal(libc::SIGKILL);
    let status = tokio::task::spawn_blocking(move || {
        let s = server.wait();
        drop(server);
        s
    })
    .await
    .unwrap();
    assert!(!status.success());
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for c in clients {
        acked.extend(c.await.unwrap());
    }
    assert!(
        acked.len() >= 50,
        "the load ran: only {} messages acknowledged",
        acked.len()
    );

    // Restart on the same database: it opens, recovers the WAL and serves.
    let mut server = Proc::start(&["-c", cfg]);
    let mut c = crate::harness::Client::connect(server.addr).await;
    c.send_message(
        "a@sender.test",
        &["r@example.com"],
        b"Subject: after\r\n\r\n",
    )
    .await
    .queued_id();
    c.expect("QUIT", 221).await;
    server.signal(libc::SIGTERM);
    let status = tokio::task::spawn_blocking(move || server.wait())
        .await
        .unwrap();
    assert!(status.success(), "{status}");

    let conn = gsmtpd::store::sqlite::open_read_only(&db).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let mut missing = 0;
    for id in &acked {
        let n: i64 = conn
            .query_row("SELECT count(*) FROM messages WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap();
        if n != 1 {
            missing += 1;
        }
    }
    let total: i64 = conn
        .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
        .unwrap();
    println!(
        "kill -9: {} acknowledged, {} stored before the restart, {} missing",
        acked.len(),
        total - 1,
        missing
    );
    assert_eq!(missing, 0, "every message that got a 250 survives kill -9");
    // Stored but never acknowledged is allowed (the reply was lost with the
    // process: RFC 1047's duplicate window), never more than one per client.
    assert!(total - 1 - (acked.len() as i64) <= 50);
}

/// SIGHUP adds an allowed domain, replaces the certificate and adds a
/// listener while a client stays connected and finishes its transaction;
/// a broken file keeps the old configuration; SIGUSR1 reopens the log;
/// the pid file lives as long as the process.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_reload_sigusr1_reopen_and_pid_file() {
    use rustls_pki_types::ServerName;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cert = crate::tls::cert(d, "a");
    let pid = d.join("gsmtpd.pid");
    let log = d.join("gsmtpd.log");
    let write = |extra_domain: &str, extra_listener: &str, level: &str| {
        std::fs::write(
            d.join("gsmtpd.toml"),
            format!(
                "hostname = \"mx.test\"\nallowed_hosts = [\"example.com\"{extra_domain}]\n\
                 max_connections_per_ip = 0\npid_file = {pid:?}\nlog_level = {level:?}\n\
                 [[listener]]\naddr = \"127.0.0.1:0\"\ntls = \"starttls\"\n\
                 tls_cert = {:?}\ntls_key = {:?}\n{extra_listener}\
                 [store]\nkind = \"sqlite\"\npath = {:?}\n",
                cert.cert,
                cert.key,
                d.join("m.db")
            ),
        )
        .unwrap();
    };
    write("", "", "info");
    let cfg = d.join("gsmtpd.toml");
    // Log to stderr for the address, and to a file via -l? One sink only:
    // the file. Its first line gives the address.
    let child = Command::new(BIN)
        .args(["-c", cfg.to_str().unwrap(), "-l", log.to_str().unwrap()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let wait_log = |needle: &str, n: usize| wait_for_line(read_log, needle, n);
    let addr = listening_addr(&wait_log("listening addr=", 1));
    assert_eq!(
        std::fs::read_to_string(&pid).unwrap().trim(),
        child.id().to_string()
    );

    let mut busy = crate::harness::Client::connect(addr).await;
    busy.expect("EHLO busy.test", 250).await;
    busy.expect("MAIL FROM:<a@sender.test>", 250).await;
    busy.expect("RCPT TO:<r@example.com>", 250).await;

    // A broken file: the old configuration stays.
    std::fs::write(&cfg, "allowed_hosts = [\"new.test\"]\nbogus_key = 1\n").unwrap();
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGHUP) }, 0);
    wait_log("reload failed, keeping the old configuration", 1);

    // The real change: a domain, a certificate (same files), a listener.
    let new_cert = crate::tls::cert(d, "b");
    std::fs::copy(&new_cert.cert, &cert.cert).unwrap();
    std::fs::copy(&new_cert.key, &cert.key).unwrap();
    // ...and the log level: the SMTP dialogue is logged from now on.
    write(
        ", \"new.test\"",
        "[[listener]]\naddr = \"127.0.0.2:0\"\n",
        "info,gsmtpd::dialogue=debug",
    );
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGHUP) }, 0);
    wait_log("configuration reloaded", 1);
    let second: SocketAddr = wait_log("listening addr=", 2)
        .split("listening addr=")
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    busy.expect("DATA", 354).await;
    busy.send("Subject: across SIGHUP\r\n\r\n.\r\n").await;
    busy.reply().await.queued_id();
    busy.expect("QUIT", 221).await;

    let mut fresh = crate::harness::Client::connect(second).await;
    fresh.expect("EHLO fresh.test", 250).await;
    fresh.expect("MAIL FROM:<a@sender.test>", 250).await;
    fresh.expect("RCPT TO:<r@new.test>", 250).await;
    fresh.expect("QUIT", 221).await;
    let dialogue = wait_log("< EHLO fresh.test", 1);
    assert!(
        !read_log().contains("< EHLO busy.test"),
        "debug was off before the reload: {dialogue}"
    );
    let mut c = crate::harness::Client::connect(addr).await;
    c.expect("EHLO tls.test", 250).await;
    c.expect("STARTTLS", 220).await;
    crate::tls::connector(&new_cert)
        .connect(ServerName::try_from("mx.test").unwrap(), c.into_stream())
        .await
        .expect("the new certificate is served after SIGHUP");

    // logrotate: move the file away, SIGUSR1, and logging goes on in a new one.
    let rotated = d.join("gsmtpd.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) }, 0);
    wait_log("log file reopened", 1);
    let mut c = crate::harness::Client::connect(addr).await;
    c.expect("QUIT", 221).await;
    wait_log("disconnect", 1);
    assert!(
        std::fs::read_to_string(&rotated)
            .unwrap()
            .contains("configuration reloaded")
    );

    terminate(child).await;
    assert!(!pid.exists(), "the pid file is removed at exit");
}
