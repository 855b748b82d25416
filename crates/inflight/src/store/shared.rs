//! One worker's part in a run shared through PostgreSQL ([`PgWork`]): three threads, each with its own
//! connection, beside the async run.
//!
//! - The *claimer* hands out jobs in small claims (leases), keeps the tokens of the jobs this worker holds,
//!   renews their leases every third of the lease, says the worker is alive every second, and at the end
//!   releases what the worker still holds.
//! - The *writer* takes the run's [`WriteMsg`]s in groups, as the SQLite writer does, and writes them fenced by
//!   the held tokens: a completion whose claim was lost (expired and taken by another worker) records nothing
//!   and is counted as stale.
//! - The *follower* (with `-o`) keeps a local copy of the whole run's output: every worker's results, paged in
//!   the run's one commit order, and at the end the error records.
//!
//! The database going away pauses all three: each retries its operation on a new connection with a backoff,
//! keeping what it holds (the writer's group; no attempt is sent meanwhile, since every attempt waits for its
//! attempt count to be written first), and goes on when the database is back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::contract::{Lease, LeaseToken, WorkStore, WorkerId};
use super::writer::next_group;
use super::{
    now_ms, AttemptKey, CommittedSink, Completion, Counts, DoneRow, ErrorRow, Failure, PendingJob, PgUrl, PgWork,
    StepDone, StoreError, WriteMsg, WriterHandle,
};
use crate::code::ErrorCode;

/// What a claim found.
#[derive(Debug)]
pub enum Claim {
    /// Jobs now held by this worker, in sequence order.
    Jobs(Vec<PendingJob>),
    /// Nothing claimable now, but the run is not over: other workers hold jobs (which come back if their leases
    /// expire), or the input is still being ingested.
    Later,
    /// Every job of the run is finished.
    Exhausted,
}

/// The tokens of the claims this worker holds, by job.
type Held = Arc<Mutex<HashMap<i64, LeaseToken>>>;

enum Request {
    Claim(usize, tokio::sync::oneshot::Sender<Result<Claim, StoreError>>),
    Totals(tokio::sync::oneshot::Sender<Result<(Counts, hdrhistogram::Histogram<u64>), StoreError>>),
    Sample(usize, tokio::sync::oneshot::Sender<Result<Vec<PendingJob>, StoreError>>),
    Steps(Vec<i64>, tokio::sync::oneshot::Sender<Result<Vec<StepDone>, StoreError>>),
    Release(tokio::sync::oneshot::Sender<Result<u64, StoreError>>),
}

/// This worker's part in a shared run.
pub struct SharedRun {
    url: PgUrl,
    worker: WorkerId,
    /// To the claimer thread, which ends when this is dropped.
    requests: Sender<Request>,
    held: Held,
    stale: Arc<AtomicU64>,
    paused: Arc<AtomicBool>,
}

/// How long the end of a run (the last counts, the release) waits for a database that is away.
const END_PATIENCE: Duration = Duration::from_secs(30);

impl SharedRun {
    /// Starts the claimer for `worker` (already registered in `db`'s run), with claims held for `lease`.
    pub fn start(db: PgWork, worker: WorkerId, lease: Duration) -> Result<SharedRun, StoreError> {
        let url = db.url().clone();
        let held: Held = Arc::default();
        let paused = Arc::new(AtomicBool::new(false));
        let (requests, rx) = mpsc::channel();
        let claimer =
            Claimer { db: Reconnecting::with(db, paused.clone()), worker, lease, held: held.clone(), ingested: false };
        std::thread::Builder::new().name("inflight-claims".into()).spawn(move || claimer.serve(rx))?;
        let stale = Arc::default();
        Ok(SharedRun { url, worker, requests, held, stale, paused })
    }

    /// Completions and failures that recorded nothing because their claim was lost (counted by the writer).
    pub fn stale(&self) -> u64 {
        self.stale.load(Ordering::Relaxed)
    }

    /// Claims up to `limit` jobs.
    pub async fn claim(&self, limit: usize) -> Result<Claim, StoreError> {
        self.ask(|reply| Request::Claim(limit, reply)).await
    }

    /// The run's counts and latencies (every worker's), for the summary.
    pub async fn totals(&self) -> Result<(Counts, hdrhistogram::Histogram<u64>), StoreError> {
        self.ask(Request::Totals).await
    }

    /// The first `n` unfinished jobs of the run, claimed or not (a sample to size the engine from).
    pub async fn sample(&self, n: usize) -> Result<Vec<PendingJob>, StoreError> {
        self.ask(|reply| Request::Sample(n, reply)).await
    }

    /// The workflow steps the run kept for the jobs `seqs` (recorded by whichever worker held them before).
    pub async fn steps_of(&self, seqs: Vec<i64>) -> Result<Vec<StepDone>, StoreError> {
        self.ask(|reply| Request::Steps(seqs, reply)).await
    }

    /// Releases every claim this worker still holds (after its drain and its writer's last commit), so that
    /// the others take them at once. Returns how many it released.
    pub async fn release(&self) -> Result<u64, StoreError> {
        self.ask(Request::Release).await
    }

    async fn ask<T>(
        &self,
        request: impl FnOnce(tokio::sync::oneshot::Sender<Result<T, StoreError>>) -> Request,
    ) -> Result<T, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.requests.send(request(tx)).map_err(|_| StoreError::WriterGone)?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Starts the writer: the run's messages, written fenced by this worker's claims, on a connection of its own.
    pub fn writer(&self) -> Result<WriterHandle, StoreError> {
        let db = Reconnecting::lazy(&self.url, self.paused.clone());
        let (held, stale, worker) = (self.held.clone(), self.stale.clone(), self.worker);
        WriterHandle::spawn("inflight-writer", move |rx| write(db, held, stale, worker, rx))
    }

    /// Starts the follower: it writes every worker's results to `files` (fresh) in the run's commit order as
    /// they are committed, and the error records when it is stopped.
    pub fn follow(&self, files: Box<dyn CommittedSink>) -> Result<Follower, StoreError> {
        let db = Reconnecting::lazy(&self.url, self.paused.clone());
        let (stop, rx) = mpsc::channel();
        let join = std::thread::Builder::new().name("inflight-follow".into()).spawn(move || follow(db, files, rx))?;
        Ok(Follower { stop, join })
    }
}

/// The thread that keeps a worker's local copy of the run's output.
pub struct Follower {
    stop: Sender<()>,
    join: JoinHandle<Result<u64, StoreError>>,
}

impl Follower {
    /// Brings the copy up to date one last time (results committed so far by every worker, then the error
    /// records) and stops. Returns how many results the copy holds.
    pub fn finish(self) -> Result<u64, StoreError> {
        let _ = self.stop.send(());
        self.join.join().unwrap_or(Err(StoreError::WriterGone))
    }
}

/// A connection that comes back: an operation that fails because the database went away (a retryable error)
/// is tried again on a new connection, with a backoff, until it succeeds, fails otherwise, or `patience` runs
/// out. While it waits, the worker counts as paused.
struct Reconnecting {
    url: PgUrl,
    db: Option<PgWork>,
    paused: Arc<AtomicBool>,
}

impl Reconnecting {
    fn with(db: PgWork, paused: Arc<AtomicBool>) -> Reconnecting {
        Reconnecting { url: db.url().clone(), db: Some(db), paused }
    }

    /// Connects on first use, on the thread that uses it (never on the async runtime's).
    fn lazy(url: &PgUrl, paused: Arc<AtomicBool>) -> Reconnecting {
        Reconnecting { url: url.clone(), db: None, paused }
    }

    fn run<T>(
        &mut self,
        patience: Option<Duration>,
        mut op: impl FnMut(&mut PgWork) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            let result = match self.db.as_mut() {
                Some(db) => op(db),
                None => PgWork::open(&self.url).and_then(|mut db| {
                    let r = op(&mut db);
                    self.db = Some(db);
                    r
                }),
            };
            match result {
                Err(e) if e.is_retryable() && patience.is_none_or(|p| started.elapsed() < p) => {
                    if !self.paused.swap(true, Ordering::Relaxed) {
                        eprintln!("state database unreachable ({e}): paused, trying again");
                    }
                    self.db = None;
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                other => {
                    if other.is_ok() && self.paused.swap(false, Ordering::Relaxed) {
                        eprintln!("state database back: going on");
                    }
                    return other;
                }
            }
        }
    }
}

struct Claimer {
    db: Reconnecting,
    worker: WorkerId,
    lease: Duration,
    held: Held,
    /// Seen the input's ingest complete (a run is over only once it is).
    ingested: bool,
}

impl Claimer {
    fn serve(mut self, rx: Receiver<Request>) {
        // Beats every second (what `status` reads); leases renewed every third of the lease.
        let beat_every = Duration::from_secs(1).min(self.lease / 3);
        let renew_every = self.lease / 3;
        let (mut next_beat, mut next_renew) = (Instant::now() + beat_every, Instant::now() + renew_every);
        loop {
            let wait = next_beat.min(next_renew).saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Request::Claim(n, reply)) => {
                    let _ = reply.send(self.claim(n));
                }
                Ok(Request::Totals(reply)) => {
                    let totals = self.db.run(Some(END_PATIENCE), |db| Ok((db.totals()?, db.latency_histogram()?)));
                    let _ = reply.send(totals);
                }
                Ok(Request::Sample(n, reply)) => {
                    let _ = reply.send(self.db.run(Some(END_PATIENCE), |db| db.unfinished(n)));
                }
                Ok(Request::Steps(seqs, reply)) => {
                    let _ = reply.send(self.db.run(None, |db| db.steps_of(&seqs)));
                }
                Ok(Request::Release(reply)) => {
                    let worker = self.worker;
                    let released = self.db.run(Some(END_PATIENCE), |db| db.release(worker));
                    self.held.lock().expect("held lock").clear();
                    let _ = reply.send(released);
                }
                Err(RecvTimeoutError::Timeout) => {
                    let worker = self.worker;
                    if Instant::now() >= next_beat {
                        if let Err(e) = self.db.run(None, |db| db.beat(worker)) {
                            tracing::warn!("beat: {e}");
                        }
                        next_beat = Instant::now() + beat_every;
                    }
                    if Instant::now() >= next_renew {
                        self.renew();
                        next_renew = Instant::now() + renew_every;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn claim(&mut self, n: usize) -> Result<Claim, StoreError> {
        let (worker, lease) = (self.worker, self.lease);
        let claimed = self.db.run(None, |db| db.claim(worker, n, lease))?;
        if claimed.is_empty() {
            if !self.ingested {
                self.ingested = self.db.run(None, |db| db.meta(INGEST_DONE))?.is_some();
            }
            let counts = self.db.run(None, |db| db.counts())?;
            let over = self.ingested && counts.ready == 0 && counts.claimed == 0;
            return Ok(if over { Claim::Exhausted } else { Claim::Later });
        }
        let mut held = self.held.lock().expect("held lock");
        let jobs = claimed
            .into_iter()
            .map(|c| {
                held.insert(c.lease.seq, c.lease.token);
                PendingJob {
                    seq: c.lease.seq,
                    id: c.id,
                    endpoint: c.endpoint,
                    body: c.body,
                    attempts: c.attempts,
                    line: c.line,
                }
            })
            .collect();
        Ok(Claim::Jobs(jobs))
    }

    /// Renews every lease held; one that was lost (another worker took it after it expired) is dropped, so its
    /// job's late answer records nothing.
    fn renew(&mut self) {
        let leases: Vec<Lease> = {
            let held = self.held.lock().expect("held lock");
            held.iter().map(|(&seq, &token)| Lease { seq, token }).collect()
        };
        if leases.is_empty() {
            return;
        }
        let lease = self.lease;
        match self.db.run(None, |db| db.renew(&leases, lease)) {
            Ok(renewed) if renewed.len() < leases.len() => {
                let kept: std::collections::HashSet<i64> = renewed.iter().map(|l| l.seq).collect();
                let mut held = self.held.lock().expect("held lock");
                // A lease not renewed whose claim is still held is lost; one no longer held was finished by this
                // worker meanwhile (its writer let go of it), which is no loss.
                let mut lost = 0;
                for l in leases.iter().filter(|l| !kept.contains(&l.seq)) {
                    if held.get(&l.seq) == Some(&l.token) {
                        held.remove(&l.seq);
                        lost += 1;
                    }
                }
                if lost > 0 {
                    tracing::warn!("{lost} claims were lost (their leases expired and other workers took them)");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("renewing leases: {e}"),
        }
    }
}

/// The metadata key set once the input is ingested completely.
pub const INGEST_DONE: &str = "ingest_done";

/// The shared run's writer thread.
fn write(
    mut db: Reconnecting,
    held: Held,
    stale: Arc<AtomicU64>,
    worker: WorkerId,
    rx: Receiver<WriteMsg>,
) -> Result<(), StoreError> {
    let mut group = Vec::new();
    let live_key = format!("live:{}", worker.0);
    while next_group(&rx, &mut group) {
        let mut attempts: HashMap<i64, (Lease, u32)> = HashMap::new();
        let (mut done, mut failed, mut steps, mut acks, mut live) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), None);
        let mut lost = 0u64;
        {
            let held = held.lock().expect("held lock");
            for msg in group.drain(..) {
                match msg {
                    WriteMsg::Done(c) => match held.get(&c.seq) {
                        Some(&token) => done.push((token, *c)),
                        None => lost += 1,
                    },
                    WriteMsg::Failed(f) => match held.get(&f.seq) {
                        Some(&token) => failed.push((token, *f)),
                        None => lost += 1,
                    },
                    WriteMsg::Attempt { key: AttemptKey::Job(seq), attempts: n, .. } => {
                        if let Some(&token) = held.get(&seq) {
                            let entry = attempts.entry(seq).or_insert((Lease { seq, token }, n));
                            entry.1 = entry.1.max(n);
                        }
                    }
                    // A workflow round's steps: kept so that a worker claiming the job again goes on from them. A
                    // step of a lost claim is dropped (its job's worker will record its own).
                    WriteMsg::Step(step) => {
                        if let Some(&token) = held.get(&step.seq) {
                            steps.push((token, *step));
                        }
                    }
                    // A step's attempts are counted in the round's own state.
                    WriteMsg::Attempt { key: AttemptKey::Step { .. }, .. } => {}
                    WriteMsg::Live(blob) => live = Some(blob),
                    WriteMsg::Flush(ack) => acks.push(ack),
                }
            }
        }
        let attempts: Vec<(Lease, u32)> = attempts.into_values().collect();
        // One operation at a time, so that one tried again after an outage does not repeat another that
        // already went through (a repeated completion would only be stale, but counted as such).
        if !attempts.is_empty() {
            db.run(None, |db| db.record_attempts(&attempts))?;
        }
        // Before the completions: a job's last step and its result may come in one group.
        if !steps.is_empty() {
            db.run(None, |db| db.record_steps(&steps))?;
        }
        let mut fences = if done.is_empty() { Vec::new() } else { db.run(None, |db| db.complete(&done))? };
        if !failed.is_empty() {
            fences.extend(db.run(None, |db| db.fail(&failed))?);
        }
        if let Some(blob) = &live {
            db.run(None, |db| db.set_meta(&live_key, blob))?;
        }
        lost += fences.iter().filter(|f| **f == super::Fence::Stale).count() as u64;
        if lost > 0 {
            stale.fetch_add(lost, Ordering::Relaxed);
        }
        {
            let mut held = held.lock().expect("held lock");
            for seq in done.iter().map(|(_, c)| c.seq).chain(failed.iter().map(|(_, f)| f.seq)) {
                held.remove(&seq);
            }
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
    Ok(())
}

/// How often the follower looks for new results.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);
const FOLLOW_PAGE: usize = 1024;

/// The follower thread: results as they are committed, then the error records.
fn follow(mut db: Reconnecting, mut files: Box<dyn CommittedSink>, stop: Receiver<()>) -> Result<u64, StoreError> {
    let mut next = 0i64;
    loop {
        let stopping = !matches!(stop.recv_timeout(FOLLOW_EVERY), Err(RecvTimeoutError::Timeout));
        loop {
            let page = db.run(stopping.then_some(END_PATIENCE), |db| db.results_from(next, FOLLOW_PAGE))?;
            let Some(last) = page.last().map(|c| c.ord) else { break };
            for c in &page {
                files.write_done(&c.row)?;
            }
            next = last + 1;
        }
        files.flush()?;
        if stopping {
            for row in db.run(Some(END_PATIENCE), error_rows)? {
                files.write_error(&row)?;
            }
            files.flush()?;
            return Ok(next as u64);
        }
    }
}

/// The run's error records, failed jobs and bad lines, in input order: the errors file of `export` and of a
/// worker's copy.
pub fn error_rows(db: &mut PgWork) -> Result<Vec<ErrorRow>, StoreError> {
    let mut rows: Vec<ErrorRow> = db.failed_rows()?.into_iter().map(ErrorRow::Failed).collect();
    rows.extend(db.bad_lines()?.into_iter().map(ErrorRow::BadLine));
    rows.sort_by_key(ErrorRow::line);
    Ok(rows)
}

/// The output side of a workflow worker's round: the jobs the round's state file finished (each once, after its
/// commit there) go to the shared run's writer as results and failures, fenced there by this worker's claims.
/// A workflow job's result is its whole output line; its tokens and attempts are its steps' sums.
pub struct Forward {
    to: Sender<WriteMsg>,
}

impl Forward {
    /// Forwards to the shared run's writer `to`.
    pub fn to(to: Sender<WriteMsg>) -> Forward {
        Forward { to }
    }

    fn send(&self, msg: WriteMsg) -> std::io::Result<()> {
        self.to.send(msg).map_err(|_| std::io::Error::other("the shared run's writer stopped"))
    }
}

/// A writer channel for a workflow round: every message goes on to the round's own writer (`local`), and each
/// finished step also to the shared run's (`shared`), which keeps it fenced by the job's claim. The thread ends
/// once every sender of the returned channel is gone.
pub fn with_steps_to(
    shared: Sender<WriteMsg>,
    local: Sender<WriteMsg>,
) -> std::io::Result<(Sender<WriteMsg>, JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel::<WriteMsg>();
    let join = std::thread::Builder::new().name("inflight-steps".into()).spawn(move || {
        for msg in rx {
            if let WriteMsg::Step(step) = &msg {
                let _ = shared.send(WriteMsg::Step(step.clone()));
            }
            if local.send(msg).is_err() {
                return;
            }
        }
    })?;
    Ok((tx, join))
}

/// The sum of `key` over a workflow output line's steps (`{"steps": {name: {"usage": {...}, "attempts": n}}}`).
fn steps_sum(line: &serde_json::Value, key: &[&str]) -> Option<i64> {
    let steps = line.get("steps")?.as_object()?;
    let values = steps.values().map(|s| key.iter().try_fold(s, |v, k| v.get(k)).and_then(serde_json::Value::as_i64));
    values.sum()
}

impl CommittedSink for Forward {
    fn write_done(&mut self, row: &DoneRow) -> std::io::Result<()> {
        let line: serde_json::Value = serde_json::from_str(&row.response).unwrap_or_default();
        let finished_ms = now_ms();
        self.send(WriteMsg::Done(Box::new(Completion {
            seq: row.seq,
            id: row.id.clone(),
            attempts: steps_sum(&line, &["attempts"]).unwrap_or(0) as u32,
            sent_ms: finished_ms - row.latency_ms,
            first_byte_ms: None,
            finished_ms,
            prompt_tokens: steps_sum(&line, &["usage", "prompt_tokens"]),
            completion_tokens: steps_sum(&line, &["usage", "completion_tokens"]),
            finish_reason: None,
            status_code: row.status_code as u16,
            request_id: String::new(),
            response: row.response.clone(),
        })))
    }

    fn write_error(&mut self, row: &ErrorRow) -> std::io::Result<()> {
        let ErrorRow::Failed(f) = row else {
            // A round's state holds claimed jobs only: its input lines were checked when the run was ingested.
            return Ok(());
        };
        let answer = f.answer.as_ref();
        self.send(WriteMsg::Failed(Box::new(Failure {
            seq: f.seq,
            id: f.id.clone(),
            line: f.line,
            attempts: 0,
            sent_ms: None,
            finished_ms: now_ms(),
            status_code: answer.map(|a| a.status_code as u16),
            response: answer.and_then(|a| a.body.clone()),
            code: ErrorCode::parse(&f.code).unwrap_or(ErrorCode::ServerError),
            message: f.message.clone(),
            step: f.step.clone(),
        })))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
