//! Group commit: one task per store takes every message queued while its
//! previous commit ran and commits them together, then acknowledges each
//! waiting connection.
//!
//! There is no timer: at low load a message is committed alone and at once,
//! at high load batches grow by themselves. The queue is bounded, so a slow
//! store slows the connections that feed it; nothing is ever dropped.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{Store, StoreError};
use crate::message::Envelope;

enum Job {
    /// A message to commit.
    Message {
        envelope: Arc<Envelope>,
        /// `None` for an optional store: nobody waits for its verdict.
        ack: Option<oneshot::Sender<Result<(), StoreError>>>,
    },
    /// A readiness check, answered between batches.
    Ping(oneshot::Sender<Result<(), StoreError>>),
}

/// A connection's handle to one store writer; cheap to clone.
#[derive(Clone)]
pub struct Delivery {
    tx: mpsc::Sender<Job>,
    store: &'static str,
}

/// A message queued for one store; await it for the store's verdict.
pub struct Pending {
    done: oneshot::Receiver<Result<(), StoreError>>,
    store: &'static str,
}

impl Pending {
    /// Waits until the message is committed or failed.
    pub async fn wait(self) -> Result<(), StoreError> {
        self.done.await.unwrap_or_else(|_| {
            Err(StoreError::transient(
                self.store,
                "writer stopped before commit",
            ))
        })
    }
}

impl Delivery {
    /// The store's name, for logs.
    pub fn store(&self) -> &'static str {
        self.store
    }

    /// Queues `envelope`, waiting for room in the queue (backpressure).
    pub async fn submit(&self, envelope: Arc<Envelope>) -> Result<Pending, StoreError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Job::Message {
                envelope,
                ack: Some(ack),
            })
            .await
            .map_err(|_| StoreError::transient(self.store, "writer has stopped"))?;
        Ok(Pending {
            done,
            store: self.store,
        })
    }

    /// Asks the store, through its writer, whether it can commit now.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Job::Ping(ack))
            .await
            .map_err(|_| StoreError::transient(self.store, "writer has stopped"))?;
        Pending {
            done,
            store: self.store,
        }
        .wait()
        .await
    }

    /// Queues `envelope` and waits until it is committed or failed.
    pub async fn deliver(&self, envelope: Arc<Envelope>) -> Result<(), StoreError> {
        self.submit(envelope).await?.wait().await
    }

    /// Queues `envelope` for a best-effort store without waiting: if the
    /// queue is full the message is not written there, and that is logged.
    pub fn offer(&self, envelope: Arc<Envelope>) {
        let id = envelope.id;
        if let Err(e) = self.tx.try_send(Job::Message {
            envelope,
            ack: None,
        }) {
            let why = match e {
                mpsc::error::TrySendError::Full(_) => "queue full",
                mpsc::error::TrySendError::Closed(_) => "writer stopped",
            };
            tracing::warn!(store = self.store, id = %id, why, "optional store skipped a message");
        }
    }
}

/// The writer task; awaiting it waits for the queue to drain after every
/// [`Delivery`] has been dropped.
pub struct WriterHandle {
    end: WriterEnd,
}

/// How to wait for a writer to finish.
enum WriterEnd {
    Task(JoinHandle<()>),
    /// Sent (or dropped) when the writer thread ends.
    Thread(oneshot::Receiver<()>),
}

impl WriterHandle {
    /// Waits until every queued message is committed or failed.
    pub async fn drained(self) {
        match self.end {
            WriterEnd::Task(task) => {
                if let Err(e) = task.await {
                    tracing::error!(error = %e, "store writer panicked");
                }
            }
            WriterEnd::Thread(done) => {
                if done.await.is_err() {
                    tracing::error!("store writer thread ended early");
                }
            }
        }
    }
}

/// A store whose commit blocks the calling thread (a local database file).
/// Its writer runs on a thread of its own, so a commit costs no hand-off to
/// a thread pool and back: at a few messages per commit those wake-ups cost
/// more than the inserts.
pub trait BlockingStore: Send + 'static {
    /// A short name for logs and metrics.
    fn name(&self) -> &'static str;
    /// Durably writes `batch`, all or nothing (see [`Store::commit`]).
    fn commit(&mut self, batch: &[Arc<Envelope>]) -> Result<(), StoreError>;
    /// Checks the store can take a commit now.
    fn ping(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Starts the writer for `store`, as a task.
pub fn spawn<S: Store>(store: S, queue_size: usize, max_batch: usize) -> (Delivery, WriterHandle) {
    let (tx, rx) = mpsc::channel(queue_size);
    let name = store.name();
    let task = tokio::spawn(run(store, rx, max_batch));
    let end = WriterEnd::Task(task);
    (Delivery { tx, store: name }, WriterHandle { end })
}

/// Starts the writer for a blocking `store`, as a thread.
pub fn spawn_thread<S: BlockingStore>(
    mut store: S,
    queue_size: usize,
    max_batch: usize,
) -> std::io::Result<(Delivery, WriterHandle)> {
    let (tx, mut rx) = mpsc::channel(queue_size);
    let name = store.name();
    let (done, end) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("gsmtpd-{name}"))
        .spawn(move || {
            let mut jobs = Vec::with_capacity(max_batch);
            let mut batch = Batch::with_capacity(max_batch);
            while let Some(first) = rx.blocking_recv() {
                jobs.push(first);
                drain(&mut rx, &mut jobs, max_batch);
                crate::metrics::store_queue_depth(name, rx.len());
                batch.take(&mut jobs);
                for ack in batch.pings.drain(..) {
                    let _ = ack.send(store.ping());
                }
                if !batch.messages.is_empty() {
                    let started = Instant::now();
                    let result = store.commit(&batch.messages);
                    batch.finish(name, started, result);
                }
            }
            let _ = done.send(());
        })?;
    let end = WriterEnd::Thread(end);
    Ok((Delivery { tx, store: name }, WriterHandle { end }))
}

/// Moves what is queued into `jobs`, up to `max` in all.
fn drain(rx: &mut mpsc::Receiver<Job>, jobs: &mut Vec<Job>, max: usize) {
    while jobs.len() < max {
        match rx.try_recv() {
            Ok(job) => jobs.push(job),
            Err(_) => break,
        }
    }
}

/// The messages and pings taken from the queue at once.
struct Batch {
    messages: Vec<Arc<Envelope>>,
    acks: Vec<Option<oneshot::Sender<Result<(), StoreError>>>>,
    pings: Vec<oneshot::Sender<Result<(), StoreError>>>,
}

impl Batch {
    fn with_capacity(n: usize) -> Self {
        Self {
            messages: Vec::with_capacity(n),
            acks: Vec::with_capacity(n),
            pings: Vec::new(),
        }
    }

    fn take(&mut self, jobs: &mut Vec<Job>) {
        for job in jobs.drain(..) {
            match job {
                Job::Message { envelope, ack } => {
                    self.messages.push(envelope);
                    self.acks.push(ack);
                }
                Job::Ping(ack) => self.pings.push(ack),
            }
        }
    }

    /// Records the commit and acknowledges every waiting connection.
    fn finish(&mut self, store: &'static str, started: Instant, result: Result<(), StoreError>) {
        let batch = self.messages.len();
        crate::metrics::store_commit(
            store,
            batch,
            started.elapsed().as_secs_f64(),
            result.as_ref().err().map(|e| match e.kind {
                super::ErrorKind::Transient => "transient",
                super::ErrorKind::Permanent => "permanent",
            }),
        );
        match &result {
            Ok(()) => tracing::debug!(
                store,
                batch,
                micros = started.elapsed().as_micros() as u64,
                "commit"
            ),
            Err(e) => tracing::warn!(
                store,
                batch,
                kind = ?e.kind,
                error = %e.message,
                "commit failed"
            ),
        }
        self.messages.clear();
        // A connection that went away no longer waits; its message is
        // stored all the same.
        for ack in self.acks.drain(..).flatten() {
            let _ = ack.send(result.clone());
        }
    }
}

async fn run<S: Store>(mut store: S, mut rx: mpsc::Receiver<Job>, max_batch: usize) {
    let mut jobs = Vec::with_capacity(max_batch);
    let mut batch = Batch::with_capacity(max_batch);
    while rx.recv_many(&mut jobs, max_batch).await > 0 {
        crate::metrics::store_queue_depth(store.name(), rx.len());
        batch.take(&mut jobs);
        for ack in batch.pings.drain(..) {
            let _ = ack.send(store.ping().await);
        }
        if batch.messages.is_empty() {
            continue;
        }
        let started = Instant::now();
        let result = store.commit(&batch.messages).await;
        batch.finish(store.name(), started, result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    /// A store that records batch sizes and fails on demand. It tests the
    /// writer's batching and acknowledgement logic only; the real stores
    /// are tested against real databases in tests/.
    struct Recorder {
        batches: Arc<Mutex<Vec<usize>>>,
        fail: bool,
        delay: Duration,
    }

    impl Store for Recorder {
        fn name(&self) -> &'static str {
            "recorder"
        }
        async fn commit(&mut self, batch: &[Arc<Envelope>]) -> Result<(), StoreError> {
            tokio::time::sleep(self.delay).await;
            self.batches.lock().unwrap().push(batch.len());
            if self.fail {
                Err(StoreError::transient("recorder", "disk on fire"))
            } else {
                Ok(())
            }
        }
    }

    fn envelope() -> Arc<Envelope> {
        Arc::new(Envelope::fixture(&["r@x"], b"x"))
    }

    #[tokio::test]
    async fn batches_what_queued_during_a_commit() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let store = Recorder {
            batches: batches.clone(),
            fail: false,
            delay: Duration::from_millis(50),
        };
        let (delivery, handle) = spawn(store, 1024, 512);
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let d = delivery.clone();
            tasks.push(tokio::spawn(async move { d.deliver(envelope()).await }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        drop(delivery);
        handle.drained().await;
        let b = batches.lock().unwrap().clone();
        assert_eq!(b.iter().sum::<usize>(), 100);
        // 100 concurrent messages and a 50 ms commit: a few batches, not 100.
        assert!(b.len() < 10, "batches: {b:?}");
    }

    #[tokio::test]
    async fn batch_size_is_capped() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let store = Recorder {
            batches: batches.clone(),
            fail: false,
            delay: Duration::from_millis(20),
        };
        let (delivery, handle) = spawn(store, 1024, 7);
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let d = delivery.clone();
                tokio::spawn(async move { d.deliver(envelope()).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        drop(delivery);
        handle.drained().await;
        let b = batches.lock().unwrap().clone();
        assert!(b.iter().all(|&n| n <= 7), "{b:?}");
        assert_eq!(b.iter().sum::<usize>(), 50);
    }

    /// A store whose commit waits for the test to let it finish.
    struct Gate(Arc<tokio::sync::Notify>);

    impl Store for Gate {
        fn name(&self) -> &'static str {
            "gate"
        }
        async fn commit(&mut self, _: &[Arc<Envelope>]) -> Result<(), StoreError> {
            self.0.notified().await;
            Ok(())
        }
    }

    #[tokio::test]
    async fn no_acknowledgement_before_the_commit_returns() {
        let gate = Arc::new(tokio::sync::Notify::new());
        let (delivery, handle) = spawn(Gate(gate.clone()), 16, 16);
        let mut pending = tokio::spawn(async move { delivery.deliver(envelope()).await });
        let early = tokio::time::timeout(Duration::from_millis(200), &mut pending).await;
        assert!(
            early.is_err(),
            "acknowledged while the commit was still running"
        );
        gate.notify_one();
        pending.await.unwrap().unwrap();
        handle.drained().await;
    }

    #[tokio::test]
    async fn a_failed_commit_fails_every_message_in_it() {
        let store = Recorder {
            batches: Arc::default(),
            fail: true,
            delay: Duration::ZERO,
        };
        let (delivery, handle) = spawn(store, 16, 16);
        let err = delivery.deliver(envelope()).await.unwrap_err();
        assert_eq!(err.kind, super::super::ErrorKind::Transient);
        assert!(err.to_string().contains("disk on fire"));
        drop(delivery);
        handle.drained().await;
    }
}
