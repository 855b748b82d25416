//! The store contract for claiming and finishing work: what several workers sharing one run need from a store.
//!
//! Two implementations: [`super::SqliteWork`] (one process owns the state file, so its leases live in that
//! process's memory) and [`super::PgWork`] (any number of processes on any number of machines, leases in the
//! database). One contract test suite (`tests/store_contract.rs`) runs against both.
//!
//! A worker claims jobs in batches; each claim is a *lease*: an expiry and a token. While the lease holds, no
//! other worker can claim the job. A worker that dies or stalls loses its claims when they expire, and another
//! worker takes them. Every write about a claimed job is *fenced* by its token: it takes effect only while the
//! job is still claimed under that token, so a late answer from a worker whose lease expired and was taken by
//! another records nothing ([`Fence::Stale`]) and the job is answered once whatever happens.
//!
//! The methods block (they talk to a database); async code calls them from a blocking thread
//! (`tokio::task::spawn_blocking`, or the writer thread), as it does the SQLite store's.

use std::time::Duration;

use super::{Completion, DoneRow, Failure, StepDone, StoreError};
use crate::job::Endpoint;

/// A job to put into the store: one accepted input line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    /// Input line number: with the id, what makes ingest idempotent.
    pub line: u64,
    /// The job's id (unique in the run).
    pub id: String,
    /// The endpoint the body is for.
    pub endpoint: Endpoint,
    /// The serialized OpenAI-shaped request body.
    pub body: String,
}

/// What one [`WorkStore::ingest`] call did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Ingested {
    /// Jobs this call inserted.
    pub inserted: u64,
    /// Jobs that were already in the store, from the same line (another ingester, or an earlier pass).
    pub present: u64,
    /// Lines whose id another line of the run already holds: not inserted (the caller records them as bad
    /// lines, `duplicate_id`).
    pub duplicate_ids: Vec<u64>,
}

impl Ingested {
    /// Counts a job the store did not insert because it already holds its line or its id: the same line with the
    /// same id was ingested before (`present`); anything else is a line whose id another line holds.
    pub(super) fn not_inserted(&mut self, line: u64, same_job: bool) {
        if same_job {
            self.present += 1;
        } else {
            self.duplicate_ids.push(line);
        }
    }
}

/// The fencing token of one claim: a job's token changes with every claim, so it names that claim alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseToken(pub i64);

/// A job as one claim holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The job's sequence number in the store.
    pub seq: i64,
    /// The claim's token.
    pub token: LeaseToken,
}

/// A job handed to a worker by [`WorkStore::claim`].
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The job and the claim's token.
    pub lease: Lease,
    /// The job's id.
    pub id: String,
    /// Input line number.
    pub line: i64,
    /// The endpoint the body is for.
    pub endpoint: Endpoint,
    /// The serialized OpenAI-shaped request body.
    pub body: String,
    /// Attempts already spent on the job (by earlier claims, as [`WorkStore::record_attempts`] recorded them).
    pub attempts: u32,
}

/// What became of one fenced write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// The job was still claimed under this token: the write is committed.
    Recorded,
    /// The claim is gone (expired and taken by another worker, released, or the job already finished): nothing
    /// was written.
    Stale,
}

/// Jobs of a run by state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WorkCounts {
    /// Not claimed and not finished: the next claims take these.
    pub ready: u64,
    /// Claimed and not finished, whether or not the lease has expired yet (an expired claim counts here until
    /// another worker takes it).
    pub claimed: u64,
    /// Succeeded: each has one result.
    pub done: u64,
    /// Failed for good.
    pub failed: u64,
}

impl WorkCounts {
    /// Jobs in the run.
    pub fn total(&self) -> u64 {
        self.ready + self.claimed + self.done + self.failed
    }
}

/// A result with its position in the run's commit order.
#[derive(Debug, Clone)]
pub struct Committed {
    /// Position in the commit order: 0, 1, 2, … with no gap, assigned when the result is committed.
    pub ord: i64,
    /// The result.
    pub row: DoneRow,
}

/// A worker's identity in the run, given by [`WorkStore::register_worker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WorkerId(pub i64);

/// What a worker says about itself when it joins a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    /// Host name of its machine.
    pub host: String,
    /// Its process id on that host.
    pub pid: u32,
    /// The servers (URLs, or the engine's model) it sends to.
    pub servers: Vec<String>,
}

/// A worker as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRow {
    /// Its identity.
    pub id: WorkerId,
    /// What it said when it joined.
    pub info: WorkerInfo,
    /// Milliseconds since its last beat (or since it joined), by the store's clock.
    pub beat_age_ms: i64,
}

/// The operations several workers sharing one run need. Every method commits before it returns: what it reports
/// is durable (to the store's own durability) and visible to every other handle.
pub trait WorkStore: Send {
    /// Another handle on the same run, for another thread or worker. With PostgreSQL a new connection; with
    /// SQLite the same owner's state, shared.
    fn try_clone(&self) -> Result<Box<dyn WorkStore>, StoreError>;

    /// Inserts `jobs` (in one transaction), skipping those already present: the same line with the same id
    /// inserts nothing, so a second ingester of the same input, or an ingest resumed after a crash, does no
    /// harm, even at the same moment as another. A line whose id another line already holds is not inserted and
    /// is returned in [`Ingested::duplicate_ids`].
    fn ingest(&mut self, jobs: &[NewJob]) -> Result<Ingested, StoreError>;

    /// Claims up to `limit` jobs for `worker`, for `lease` from now: ready jobs and jobs whose lease has expired,
    /// in sequence order. Each claim gets a new token. No job is claimed by two handles at once: a job is handed
    /// out again only once its lease has expired or was released. An empty answer means nothing is claimable
    /// now (claimed jobs may still come back if their leases expire).
    fn claim(&mut self, worker: WorkerId, limit: usize, lease: Duration) -> Result<Vec<Claimed>, StoreError>;

    /// Extends the given leases to `lease` from now. Returns the leases it renewed; one missing from the answer
    /// is lost (taken by another worker, released, or finished) and its work should stop. A lease that expired
    /// but that no other worker has taken yet is renewed.
    fn renew(&mut self, leases: &[Lease], lease: Duration) -> Result<Vec<Lease>, StoreError>;

    /// Records the attempts spent on claimed jobs (`(lease, attempts)`), fenced by their tokens: before each
    /// request is sent, so that a job whose worker dies mid-request still has that attempt spent when another
    /// worker takes it ([`Claimed::attempts`]). A stale one writes nothing.
    fn record_attempts(&mut self, attempts: &[(Lease, u32)]) -> Result<Vec<Fence>, StoreError>;

    /// Records successes, each fenced by its claim's token (`Completion::seq` names the job), in one transaction.
    /// A recorded job is done and its result gets the next position in the commit order; a stale one writes
    /// nothing. Answers in the order given. A job is completed at most once: its result is never replaced.
    fn complete(&mut self, done: &[(LeaseToken, Completion)]) -> Result<Vec<Fence>, StoreError>;

    /// Records permanent failures, fenced like [`WorkStore::complete`]. A recorded job is failed for good.
    fn fail(&mut self, failed: &[(LeaseToken, Failure)]) -> Result<Vec<Fence>, StoreError>;

    /// Records finished workflow steps of claimed jobs (`StepDone::seq` names the job), each fenced by its claim's
    /// token, in one transaction. A step the job already has is kept as it was: a step is never replaced.
    /// Answers in the order given: recorded while the claim holds, else stale (nothing written).
    fn record_steps(&mut self, steps: &[(LeaseToken, StepDone)]) -> Result<Vec<Fence>, StoreError>;

    /// The workflow steps recorded for the jobs `seqs` (by whichever worker), so that a worker that claims a job
    /// again goes on from them. Their `steps_total` is 0: the workflow knows how many it has.
    fn steps_of(&mut self, seqs: &[i64]) -> Result<Vec<StepDone>, StoreError>;

    /// Makes every unfinished claim of `worker` ready again at once (a worker stopping after its drain), so
    /// others need not wait for the leases to expire. The released tokens are stale from then on. Returns how
    /// many claims it released.
    fn release(&mut self, worker: WorkerId) -> Result<u64, StoreError>;

    /// Jobs by state.
    fn counts(&mut self) -> Result<WorkCounts, StoreError>;

    /// Up to `limit` results from position `from` on, in commit order. Positions have no gap, and a result at
    /// position `n` is visible only once every position before it is, so a reader that pages from where it
    /// stopped misses nothing.
    fn results_from(&mut self, from: i64, limit: usize) -> Result<Vec<Committed>, StoreError>;

    /// A value of the run's metadata (its identity, ingest progress, …), `None` when never set.
    fn meta(&mut self, key: &str) -> Result<Option<String>, StoreError>;

    /// Sets a value of the run's metadata.
    fn set_meta(&mut self, key: &str, value: &str) -> Result<(), StoreError>;

    /// Joins the run as a new worker; its first beat is now.
    fn register_worker(&mut self, info: &WorkerInfo) -> Result<WorkerId, StoreError>;

    /// Says `worker` is alive now.
    fn beat(&mut self, worker: WorkerId) -> Result<(), StoreError>;

    /// Every worker that joined the run, in the order they joined.
    fn workers(&mut self) -> Result<Vec<WorkerRow>, StoreError>;
}
