//! Where log lines go: an in-memory buffer that a flusher thread writes out
//! every 100 ms, or sooner once it holds 64 KiB.
//!
//! A log line then costs its formatting and a copy under a mutex — no
//! system call and no thread wake-up per line, which at tens of thousands
//! of messages a second is most of what logging would otherwise cost. The
//! price: a crash loses at most the last 100 ms of lines (Postfix's syslog
//! path loses as much). The file can be reopened in place (logrotate's
//! SIGUSR1), and dropping the [`Flusher`] writes out what is left.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often buffered lines are written out.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// A buffer this full is written out at once.
const FLUSH_AT: usize = 64 * 1024;

/// The destination of the buffered lines.
enum Target {
    Stderr,
    File { path: PathBuf, file: File },
}

impl Target {
    fn write(&mut self, bytes: &[u8]) {
        // A log that cannot be written has nowhere to report it.
        let _ = match self {
            Target::Stderr => io::stderr().write_all(bytes),
            Target::File { file, .. } => file.write_all(bytes),
        };
    }
}

struct Shared {
    buf: Mutex<Vec<u8>>,
    wake: Condvar,
    target: Mutex<Target>,
    stop: AtomicBool,
}

/// The writer handed to the subscriber; cheap to clone.
#[derive(Clone)]
pub struct LogSink(Arc<Shared>);

/// Owns the flusher thread; dropping it flushes and stops the thread.
pub struct Flusher {
    sink: LogSink,
    thread: Option<JoinHandle<()>>,
}

fn append(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

impl LogSink {
    /// Buffers lines for `path`, or for standard error when `None`.
    pub fn open(path: Option<&Path>) -> io::Result<(LogSink, Flusher)> {
        let target = match path {
            Some(p) => Target::File {
                path: p.to_owned(),
                file: append(p)?,
            },
            None => Target::Stderr,
        };
        let sink = LogSink(Arc::new(Shared {
            buf: Mutex::new(Vec::with_capacity(FLUSH_AT)),
            wake: Condvar::new(),
            target: Mutex::new(target),
            stop: AtomicBool::new(false),
        }));
        let s = sink.clone();
        let thread = std::thread::Builder::new()
            .name("gsmtpd-log".into())
            .spawn(move || s.run())?;
        Ok((
            sink.clone(),
            Flusher {
                sink,
                thread: Some(thread),
            },
        ))
    }

    /// Reopens the file (after logrotate moved it); `Ok(None)` when logging
    /// to standard error, `Ok(Some(path))` with the file reopened.
    pub fn reopen(&self) -> io::Result<Option<PathBuf>> {
        self.flush_now();
        let mut target = self.0.target.lock().expect("log target lock");
        match &mut *target {
            Target::Stderr => Ok(None),
            Target::File { path, file } => {
                *file = append(path)?;
                Ok(Some(path.clone()))
            }
        }
    }

    fn run(&self) {
        loop {
            let stop = {
                let buf = self.0.buf.lock().expect("log buffer lock");
                let (_buf, _) = self
                    .0
                    .wake
                    .wait_timeout_while(buf, FLUSH_EVERY, |b| {
                        b.len() < FLUSH_AT && !self.0.stop.load(Ordering::Relaxed)
                    })
                    .expect("log buffer lock");
                self.0.stop.load(Ordering::Relaxed)
            };
            self.flush_now();
            if stop {
                return;
            }
        }
    }

    /// Writes out what is buffered, outside the buffer's lock.
    fn flush_now(&self) {
        let lines = {
            let mut buf = self.0.buf.lock().expect("log buffer lock");
            if buf.is_empty() {
                return;
            }
            std::mem::replace(&mut *buf, Vec::with_capacity(FLUSH_AT))
        };
        self.0.target.lock().expect("log target lock").write(&lines);
    }
}

impl Write for LogSink {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut buf = self.0.buf.lock().expect("log buffer lock");
        buf.extend_from_slice(bytes);
        if buf.len() >= FLUSH_AT {
            self.0.wake.notify_one();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogSink {
    type Writer = LogSink;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.sink.0.stop.store(true, Ordering::Relaxed);
        self.sink.0.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.sink.flush_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_reach_the_file_on_time_and_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.log");
        let (mut sink, flusher) = LogSink::open(Some(&path)).unwrap();
        sink.write_all(b"one\n").unwrap();
        std::thread::sleep(FLUSH_EVERY * 3);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\n");

        // logrotate: the old file is moved away, lines go to a new one.
        std::fs::rename(&path, dir.path().join("g.log.1")).unwrap();
        sink.write_all(b"two\n").unwrap();
        assert_eq!(sink.reopen().unwrap(), Some(path.clone()));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("g.log.1")).unwrap(),
            "one\ntwo\n",
            "what was buffered before the reopen belongs to the old file"
        );
        sink.write_all(b"three\n").unwrap();
        drop(flusher);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "three\n");
    }
}
