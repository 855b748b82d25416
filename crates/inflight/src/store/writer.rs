//! The one writer: a thread that owns the state's write connection and the output files.
//!
//! Results arrive over a channel and are committed in groups (every few milliseconds or up to a thousand
//! messages, whichever comes first); a group's output lines are appended only after its commit, so the files
//! never hold a result the store does not. A group that someone waits for (a [`WriteMsg::Flush`], as every
//! attempt sends before its request goes out) is committed as soon as the queue is empty. Group commit is what lets a durable runner keep up with a fast
//! server on two cores: one fsync-free WAL commit per group instead of one per job.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{params, TransactionBehavior};

use super::{DoneRow, ErrorRow, FailedAnswer, FailedRow, StepDone, Store, StoreError};
use crate::code::ErrorCode;

const GROUP_MAX: usize = 1024;
const GROUP_WAIT: Duration = Duration::from_millis(5);

/// A successful answer to record.
#[derive(Debug, Clone)]
pub struct Completion {
    /// Store sequence number of the job.
    pub seq: i64,
    /// The job's id.
    pub id: String,
    /// Attempts spent in total.
    pub attempts: u32,
    /// When the successful attempt was sent (Unix ms).
    pub sent_ms: i64,
    /// First byte of its answer (Unix ms).
    pub first_byte_ms: Option<i64>,
    /// When it finished (Unix ms).
    pub finished_ms: i64,
    /// Prompt tokens reported by the server.
    pub prompt_tokens: Option<i64>,
    /// Completion tokens reported by the server.
    pub completion_tokens: Option<i64>,
    /// `stop`, `length`, ...
    pub finish_reason: Option<String>,
    /// HTTP status (200).
    pub status_code: u16,
    /// The server's request id, or ours.
    pub request_id: String,
    /// The answer body as JSON text.
    pub response: String,
}

/// A job that failed for good.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Store sequence number of the job.
    pub seq: i64,
    /// The job's id.
    pub id: String,
    /// Input line number.
    pub line: i64,
    /// Attempts spent in total.
    pub attempts: u32,
    /// When the last attempt was sent (Unix ms).
    pub sent_ms: Option<i64>,
    /// When it failed (Unix ms).
    pub finished_ms: i64,
    /// HTTP status of the server's answer, if it answered.
    pub status_code: Option<u16>,
    /// The server's answer body, if it answered with JSON.
    pub response: Option<String>,
    /// The error record's code.
    pub code: ErrorCode,
    /// The error message, the server's own where it gave one.
    pub message: String,
    /// The step a workflow job failed in.
    pub step: Option<String>,
}

/// What an attempt count belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptKey {
    /// A plain job, by its sequence number.
    Job(i64),
    /// One step of a workflow job, counted under the step's fingerprint.
    Step {
        /// The job's sequence number.
        seq: i64,
        /// The step's name.
        step: String,
        /// The step's fingerprint.
        fingerprint: String,
    },
}

/// What the writer is asked to do.
#[derive(Debug)]
pub enum WriteMsg {
    /// Record a success.
    Done(Box<Completion>),
    /// Record a failure.
    Failed(Box<Failure>),
    /// Record a finished step of a workflow job (and the job, when it was its last step).
    Step(Box<StepDone>),
    /// Record the attempts spent on a job or a step: before each is sent, and after a failure (why it failed).
    Attempt {
        /// The job or step.
        key: AttemptKey,
        /// Attempts spent so far.
        attempts: u32,
        /// Why the last one failed, if it did.
        error: Option<String>,
    },
    /// Replace the live status blob (read by `inflight status`).
    Live(String),
    /// Answer once everything sent before this message is committed and written.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Waits until everything sent on `writer` before this call is committed (and its output lines written).
pub async fn committed(writer: &Sender<WriteMsg>) -> Result<(), StoreError> {
    let (ack, done) = tokio::sync::oneshot::channel();
    writer.send(WriteMsg::Flush(ack)).map_err(|_| StoreError::WriterGone)?;
    done.await.map_err(|_| StoreError::WriterGone)
}

/// The handle the run keeps: a sender for the tasks, and the thread to join at the end.
pub struct WriterHandle {
    tx: Sender<WriteMsg>,
    join: JoinHandle<Result<(), StoreError>>,
}

impl WriterHandle {
    /// Starts a writer thread named `name` that takes its messages from the channel it is handed.
    pub(super) fn spawn(
        name: &str,
        run: impl FnOnce(Receiver<WriteMsg>) -> Result<(), StoreError> + Send + 'static,
    ) -> Result<WriterHandle, StoreError> {
        let (tx, rx) = mpsc::channel();
        let join = std::thread::Builder::new().name(name.into()).spawn(move || run(rx))?;
        Ok(WriterHandle { tx, join })
    }
}

impl WriterHandle {
    /// A sender for tasks; sending fails only when the writer has stopped on an error.
    pub fn sender(&self) -> Sender<WriteMsg> {
        self.tx.clone()
    }

    /// Commits what is queued and stops the thread, returning its error if it failed.
    pub fn finish(self) -> Result<(), StoreError> {
        drop(self.tx);
        self.join.join().unwrap_or(Err(StoreError::WriterGone))
    }
}

/// Where committed results go once their group is committed: the output files, which live a layer above the
/// store (`crate::output` implements this), so the store needs to know nothing of their format.
pub trait CommittedSink: Send {
    /// A result, in commit order.
    fn write_done(&mut self, row: &DoneRow) -> std::io::Result<()>;
    /// A failure or bad line, in commit order.
    fn write_error(&mut self, row: &ErrorRow) -> std::io::Result<()>;
    /// Makes the group's lines durable before their senders hear of the commit.
    fn flush(&mut self) -> std::io::Result<()>;
}

/// The writer thread's state.
pub struct Writer {
    store: Store,
    files: Box<dyn CommittedSink>,
    next_done: i64,
    next_error: i64,
}

impl Writer {
    /// Starts the writer thread over `store` (whose connection it takes) and the reconciled output files.
    pub fn spawn(store: Store, files: Box<dyn CommittedSink>) -> Result<WriterHandle, StoreError> {
        let writer = Writer { next_done: store.next_done_ord()?, next_error: store.next_error_ord()?, store, files };
        WriterHandle::spawn("inflight-writer", move |rx| writer.run(rx))
    }

    fn run(mut self, rx: Receiver<WriteMsg>) -> Result<(), StoreError> {
        let mut group = Vec::with_capacity(GROUP_MAX);
        while next_group(&rx, &mut group) {
            self.commit(&mut group)?;
        }
        Ok(())
    }

    fn commit(&mut self, group: &mut Vec<WriteMsg>) -> Result<(), StoreError> {
        let mut done_rows = Vec::new();
        let mut error_rows = Vec::new();
        let mut acks = Vec::new();
        let tx = self.store.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut done = tx.prepare_cached(include_str!("sql/record_done.sql"))?;
            let mut failed = tx.prepare_cached(include_str!("sql/record_failed.sql"))?;
            let mut attempt = tx.prepare_cached(include_str!("sql/record_attempt.sql"))?;
            let mut step_attempt = tx.prepare_cached(include_str!("sql/record_step_attempt.sql"))?;
            for msg in group.drain(..) {
                match msg {
                    WriteMsg::Done(c) => {
                        let latency = c.finished_ms - c.sent_ms;
                        let changed = done.execute(params![
                            c.seq,
                            c.attempts,
                            c.sent_ms,
                            c.first_byte_ms,
                            c.finished_ms,
                            latency,
                            c.prompt_tokens,
                            c.completion_tokens,
                            c.finish_reason,
                            c.status_code,
                            c.request_id,
                            c.response,
                            self.next_done,
                        ])?;
                        if changed > 0 {
                            self.next_done += 1;
                            done_rows.push(DoneRow {
                                seq: c.seq,
                                id: c.id,
                                status_code: c.status_code.into(),
                                request_id: Some(c.request_id),
                                response: c.response,
                                latency_ms: latency,
                            });
                        }
                    }
                    WriteMsg::Failed(f) => {
                        let latency = f.sent_ms.map(|s| f.finished_ms - s);
                        let changed = failed.execute(params![
                            f.seq,
                            f.attempts,
                            f.sent_ms,
                            f.finished_ms,
                            latency,
                            f.status_code,
                            f.response,
                            f.code,
                            f.message,
                            self.next_error,
                            f.step,
                        ])?;
                        if changed > 0 {
                            self.next_error += 1;
                            let body = f.response;
                            let answer = f.status_code.map(|status| FailedAnswer {
                                status_code: status.into(),
                                request_id: None,
                                body,
                            });
                            error_rows.push(ErrorRow::Failed(FailedRow {
                                seq: f.seq,
                                line: f.line,
                                id: f.id,
                                answer,
                                code: f.code.as_str().to_owned(),
                                message: f.message,
                                step: f.step,
                            }));
                        }
                    }
                    WriteMsg::Step(step) => {
                        if let Some(row) = super::steps::record_step(&tx, &step, self.next_done)? {
                            self.next_done += 1;
                            done_rows.push(row);
                        }
                    }
                    WriteMsg::Attempt { key: AttemptKey::Job(seq), attempts, error } => {
                        attempt.execute(params![seq, attempts, error])?;
                    }
                    WriteMsg::Attempt { key: AttemptKey::Step { seq, step, fingerprint }, attempts, error } => {
                        step_attempt.execute(params![seq, step, fingerprint, attempts, error])?;
                    }
                    WriteMsg::Live(blob) => {
                        tx.execute(
                            "INSERT INTO meta (key, value) VALUES ('live', ?1) ON CONFLICT (key) DO UPDATE SET value = ?1",
                            [blob],
                        )?;
                    }
                    WriteMsg::Flush(ack) => acks.push(ack),
                }
            }
        }
        if let Some(hold) = commit_failpoint() {
            std::thread::sleep(hold);
        }
        tx.commit()?;
        for row in &done_rows {
            self.files.write_done(row)?;
        }
        for row in &error_rows {
            self.files.write_error(row)?;
        }
        self.files.flush()?;
        for ack in acks {
            let _ = ack.send(());
        }
        Ok(())
    }
}

/// Waits for the next message and gathers the group it starts into `group`: up to [`GROUP_MAX`] messages, or
/// what arrives within [`GROUP_WAIT`], or, when someone waits for the commit (a [`WriteMsg::Flush`]), what is
/// queued now. False once every sender is gone. Both writers (this one and the shared run's) group this way.
pub(super) fn next_group(rx: &Receiver<WriteMsg>, group: &mut Vec<WriteMsg>) -> bool {
    let Ok(first) = rx.recv() else { return false };
    let mut awaited = matches!(first, WriteMsg::Flush(_));
    group.push(first);
    let deadline = Instant::now() + GROUP_WAIT;
    while group.len() < GROUP_MAX {
        // Someone waits for this commit (an attempt about to be sent): take what is queued, then commit at once
        // rather than wait out the group's time.
        let next = if awaited {
            rx.try_recv().map_err(|_| RecvTimeoutError::Timeout)
        } else {
            rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        };
        match next {
            Ok(msg) => {
                awaited |= matches!(msg, WriteMsg::Flush(_));
                group.push(msg);
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
        }
    }
    true
}

/// A test-only failpoint (`scripts/chaos.sh`): `INFLIGHT_FAILPOINT_COMMIT_MS` holds every group commit open that
/// long before it commits, so that a signal lands inside one. Unset in normal use; read once.
fn commit_failpoint() -> Option<Duration> {
    static HOLD: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    *HOLD.get_or_init(|| {
        let ms: u64 = std::env::var("INFLIGHT_FAILPOINT_COMMIT_MS").ok()?.parse().ok()?;
        Some(Duration::from_millis(ms))
    })
}
