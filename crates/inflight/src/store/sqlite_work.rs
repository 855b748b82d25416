//! The store contract ([`WorkStore`]) over the SQLite state: one process owns the file (its lock file says so),
//! so the leases live in that process's memory, shared by its handles, and die with it — every job still
//! pending when a process starts is ready, as a resumed run expects.
//!
//! Jobs, results and failures are the rows the SQLite store already keeps (`jobs`, with `out_ord` as the commit
//! order), written by the same `.sql` files as the [`super::Writer`]; a run uses one or the other to write.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rusqlite::{params, OptionalExtension, Row, TransactionBehavior};

use super::contract::{
    Claimed, Committed, Fence, Ingested, Lease, LeaseToken, NewJob, WorkCounts, WorkStore, WorkerId, WorkerInfo,
    WorkerRow,
};
use super::{now_ms, Completion, DoneRow, Failure, StepDone, Store, StoreError};
use crate::job::Endpoint;

/// The SQLite state as a [`WorkStore`]; clones are handles on the same state and the same leases.
pub struct SqliteWork {
    shared: Arc<Mutex<Shared>>,
}

/// A claim held in memory.
struct Held {
    token: i64,
    worker: WorkerId,
    expires_ms: i64,
}

/// A worker of this process.
struct Joined {
    info: WorkerInfo,
    beat: Instant,
}

/// Everything the handles share: the connection and the claims.
struct Shared {
    store: Store,
    /// Unfinished claims by job sequence number (expired ones too, until another claim takes them).
    leases: HashMap<i64, Held>,
    /// Released claims: pending jobs before `cursor` that no lease holds, handed out again first.
    returned: BTreeSet<i64>,
    /// Every pending job after this sequence number has never been claimed by this process.
    cursor: i64,
    /// The last token given; tokens are never reused within the process.
    last_token: i64,
    next_done: i64,
    next_error: i64,
    workers: Vec<Joined>,
}

impl SqliteWork {
    /// Opens (creating and migrating if needed) the state at `path`. The caller holds its lock file.
    pub fn open(path: &Path) -> Result<SqliteWork, StoreError> {
        SqliteWork::new(Store::open(path)?)
    }

    /// Takes over an open state: every pending job in it is ready.
    pub fn new(store: Store) -> Result<SqliteWork, StoreError> {
        let shared = Shared {
            next_done: store.next_done_ord()?,
            next_error: store.next_error_ord()?,
            store,
            leases: HashMap::new(),
            returned: BTreeSet::new(),
            cursor: -1,
            last_token: 0,
            workers: Vec::new(),
        };
        Ok(SqliteWork { shared: Arc::new(Mutex::new(shared)) })
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A handle that panicked mid-call left no half-written transaction (rusqlite rolls back on drop).
        self.shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn claimed_from(r: &Row<'_>, token: i64) -> rusqlite::Result<Claimed> {
    let endpoint: String = r.get(2)?;
    Ok(Claimed {
        lease: Lease { seq: r.get(0)?, token: LeaseToken(token) },
        id: r.get(1)?,
        endpoint: Endpoint::from_code(&endpoint).unwrap_or(Endpoint::Chat),
        body: r.get(3)?,
        attempts: r.get(4)?,
        line: r.get(5)?,
    })
}

fn lease_ms(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2)
}

/// Whether `token` still holds job `seq`: the fence every write about a claimed job passes.
fn holds(leases: &HashMap<i64, Held>, seq: i64, token: LeaseToken) -> bool {
    leases.get(&seq).is_some_and(|h| h.token == token.0)
}

impl Shared {
    fn claim(&mut self, worker: WorkerId, limit: usize, lease: Duration) -> Result<Vec<Claimed>, StoreError> {
        let now = now_ms();
        let expires_ms = now.saturating_add(lease_ms(lease));
        // Jobs before the cursor that are claimable again: expired leases and released claims, in order.
        let mut again: Vec<i64> =
            self.leases.iter().filter(|(_, h)| h.expires_ms <= now).map(|(&seq, _)| seq).collect();
        again.extend(self.returned.iter().copied());
        again.sort_unstable();
        again.truncate(limit);
        let mut claimed = Vec::with_capacity(limit);
        let mut token = self.last_token;
        {
            let mut by_seq = self.store.conn.prepare_cached(include_str!("sql/job_by_seq.sql"))?;
            for &seq in &again {
                token += 1;
                let row = by_seq.query_row([seq], |r| claimed_from(r, token)).optional()?;
                claimed.extend(row);
            }
        }
        let fresh = self.store.pending_page(self.cursor, limit - again.len())?;
        for job in fresh {
            token += 1;
            claimed.push(Claimed {
                lease: Lease { seq: job.seq, token: LeaseToken(token) },
                id: job.id,
                line: job.line,
                endpoint: job.endpoint,
                body: job.body,
                attempts: job.attempts,
            });
        }
        self.last_token = token;
        for seq in &again {
            self.returned.remove(seq);
            self.leases.remove(seq);
        }
        for c in &claimed {
            self.cursor = self.cursor.max(c.lease.seq);
            self.leases.insert(c.lease.seq, Held { token: c.lease.token.0, worker, expires_ms });
        }
        Ok(claimed)
    }

    fn complete(&mut self, done: &[(LeaseToken, Completion)]) -> Result<Vec<Fence>, StoreError> {
        let mut fences = Vec::with_capacity(done.len());
        let mut ord = self.next_done;
        let tx = self.store.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut record = tx.prepare_cached(include_str!("sql/record_done.sql"))?;
            for (token, c) in done {
                let held = holds(&self.leases, c.seq, *token);
                let changed = held
                    && record.execute(params![
                        c.seq,
                        c.attempts,
                        c.sent_ms,
                        c.first_byte_ms,
                        c.finished_ms,
                        c.finished_ms - c.sent_ms,
                        c.prompt_tokens,
                        c.completion_tokens,
                        c.finish_reason,
                        c.status_code,
                        c.request_id,
                        c.response,
                        ord,
                    ])? > 0;
                if changed {
                    ord += 1;
                }
                fences.push(if changed { Fence::Recorded } else { Fence::Stale });
            }
        }
        tx.commit()?;
        self.next_done = ord;
        self.forget(done.iter().map(|(_, c)| c.seq), &fences);
        Ok(fences)
    }

    fn fail(&mut self, failed: &[(LeaseToken, Failure)]) -> Result<Vec<Fence>, StoreError> {
        let mut fences = Vec::with_capacity(failed.len());
        let mut ord = self.next_error;
        let tx = self.store.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut record = tx.prepare_cached(include_str!("sql/record_failed.sql"))?;
            for (token, f) in failed {
                let held = holds(&self.leases, f.seq, *token);
                let changed = held
                    && record.execute(params![
                        f.seq,
                        f.attempts,
                        f.sent_ms,
                        f.finished_ms,
                        f.sent_ms.map(|s| f.finished_ms - s),
                        f.status_code,
                        f.response,
                        f.code,
                        f.message,
                        ord,
                        f.step,
                    ])? > 0;
                if changed {
                    ord += 1;
                }
                fences.push(if changed { Fence::Recorded } else { Fence::Stale });
            }
        }
        tx.commit()?;
        self.next_error = ord;
        self.forget(failed.iter().map(|(_, f)| f.seq), &fences);
        Ok(fences)
    }

    /// Drops the claims of jobs that are finished now (after their transaction committed).
    fn forget(&mut self, seqs: impl Iterator<Item = i64>, fences: &[Fence]) {
        for (seq, fence) in seqs.zip(fences) {
            if *fence == Fence::Recorded {
                self.leases.remove(&seq);
            }
        }
    }
}

impl WorkStore for SqliteWork {
    fn try_clone(&self) -> Result<Box<dyn WorkStore>, StoreError> {
        Ok(Box::new(SqliteWork { shared: Arc::clone(&self.shared) }))
    }

    fn ingest(&mut self, jobs: &[NewJob]) -> Result<Ingested, StoreError> {
        let mut sh = self.lock();
        let mut report = Ingested::default();
        let queued_at = now_ms();
        let tx = sh.store.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut insert = tx.prepare_cached(include_str!("sql/insert_job.sql"))?;
            let mut line_of = tx.prepare_cached(include_str!("sql/job_line_by_id.sql"))?;
            for job in jobs {
                let line = job.line as i64;
                if insert.execute(params![line, job.id, job.endpoint.code(), job.body, queued_at])? > 0 {
                    report.inserted += 1;
                } else {
                    report.not_inserted(job.line, line_of.query_row([&job.id], |r| r.get::<_, i64>(0))? == line);
                }
            }
        }
        tx.commit()?;
        Ok(report)
    }

    fn claim(&mut self, worker: WorkerId, limit: usize, lease: Duration) -> Result<Vec<Claimed>, StoreError> {
        self.lock().claim(worker, limit, lease)
    }

    fn renew(&mut self, leases: &[Lease], lease: Duration) -> Result<Vec<Lease>, StoreError> {
        let mut sh = self.lock();
        let expires_ms = now_ms().saturating_add(lease_ms(lease));
        let mut renewed = Vec::with_capacity(leases.len());
        for l in leases {
            if let Some(h) = sh.leases.get_mut(&l.seq).filter(|h| h.token == l.token.0) {
                h.expires_ms = expires_ms;
                renewed.push(*l);
            }
        }
        Ok(renewed)
    }

    fn record_attempts(&mut self, attempts: &[(Lease, u32)]) -> Result<Vec<Fence>, StoreError> {
        let mut sh = self.lock();
        let sh = &mut *sh;
        let mut fences = Vec::with_capacity(attempts.len());
        let tx = sh.store.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut record = tx.prepare_cached(include_str!("sql/record_attempt.sql"))?;
            for (lease, n) in attempts {
                let held = holds(&sh.leases, lease.seq, lease.token);
                let changed = held && record.execute(params![lease.seq, n, None::<String>])? > 0;
                fences.push(if changed { Fence::Recorded } else { Fence::Stale });
            }
        }
        tx.commit()?;
        Ok(fences)
    }

    fn record_steps(&mut self, steps: &[(LeaseToken, StepDone)]) -> Result<Vec<Fence>, StoreError> {
        let mut sh = self.lock();
        let sh = &mut *sh;
        let mut fences = Vec::with_capacity(steps.len());
        let tx = sh.store.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for (token, step) in steps {
            let held = holds(&sh.leases, step.seq, *token);
            if held {
                super::steps::insert_step(&tx, step)?;
            }
            fences.push(if held { Fence::Recorded } else { Fence::Stale });
        }
        tx.commit()?;
        Ok(fences)
    }

    fn steps_of(&mut self, seqs: &[i64]) -> Result<Vec<StepDone>, StoreError> {
        let sh = self.lock();
        let mut stmt = sh.store.conn.prepare_cached(include_str!("sql/steps_of.sql"))?;
        let mut steps = Vec::new();
        for seq in seqs {
            let rows = stmt.query_map([seq], |r| {
                Ok(StepDone {
                    seq: r.get(0)?,
                    step: r.get(1)?,
                    ord: r.get::<_, i64>(2)?.max(0) as usize,
                    fingerprint: r.get(3)?,
                    output: r.get(4)?,
                    response: r.get(5)?,
                    attempts: r.get(6)?,
                    invalid: r.get(7)?,
                    prompt_tokens: r.get(8)?,
                    completion_tokens: r.get(9)?,
                    sent_ms: r.get(10)?,
                    finished_ms: r.get(11)?,
                    steps_total: 0,
                })
            })?;
            for row in rows {
                steps.push(row?);
            }
        }
        Ok(steps)
    }

    fn complete(&mut self, done: &[(LeaseToken, Completion)]) -> Result<Vec<Fence>, StoreError> {
        self.lock().complete(done)
    }

    fn fail(&mut self, failed: &[(LeaseToken, Failure)]) -> Result<Vec<Fence>, StoreError> {
        self.lock().fail(failed)
    }

    fn release(&mut self, worker: WorkerId) -> Result<u64, StoreError> {
        let mut sh = self.lock();
        let mine: Vec<i64> = sh.leases.iter().filter(|(_, h)| h.worker == worker).map(|(&seq, _)| seq).collect();
        for seq in &mine {
            sh.leases.remove(seq);
            sh.returned.insert(*seq);
        }
        Ok(mine.len() as u64)
    }

    fn counts(&mut self) -> Result<WorkCounts, StoreError> {
        let sh = self.lock();
        let c = sh.store.counts()?;
        let claimed = sh.leases.len() as u64;
        Ok(WorkCounts { ready: c.pending.saturating_sub(claimed), claimed, done: c.done, failed: c.failed })
    }

    fn results_from(&mut self, from: i64, limit: usize) -> Result<Vec<Committed>, StoreError> {
        let sh = self.lock();
        let mut stmt = sh.store.conn.prepare_cached(include_str!("sql/done_page.sql"))?;
        let rows = stmt.query_map(params![from, limit as i64], |r| {
            Ok(Committed {
                ord: r.get(0)?,
                row: DoneRow {
                    seq: r.get(1)?,
                    id: r.get(2)?,
                    status_code: r.get(3)?,
                    request_id: r.get(4)?,
                    response: r.get(5)?,
                    latency_ms: r.get(6)?,
                },
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn meta(&mut self, key: &str) -> Result<Option<String>, StoreError> {
        self.lock().store.meta(key)
    }

    fn set_meta(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        self.lock().store.set_meta(key, value)
    }

    fn register_worker(&mut self, info: &WorkerInfo) -> Result<WorkerId, StoreError> {
        let mut sh = self.lock();
        sh.workers.push(Joined { info: info.clone(), beat: Instant::now() });
        Ok(WorkerId(sh.workers.len() as i64))
    }

    fn beat(&mut self, worker: WorkerId) -> Result<(), StoreError> {
        let mut sh = self.lock();
        let joined = usize::try_from(worker.0 - 1).ok().and_then(|i| sh.workers.get_mut(i));
        match joined {
            Some(w) => {
                w.beat = Instant::now();
                Ok(())
            }
            None => Err(StoreError::UnknownWorker(worker.0)),
        }
    }

    fn workers(&mut self) -> Result<Vec<WorkerRow>, StoreError> {
        let sh = self.lock();
        Ok(sh
            .workers
            .iter()
            .enumerate()
            .map(|(i, w)| WorkerRow {
                id: WorkerId(i as i64 + 1),
                info: w.info.clone(),
                beat_age_ms: w.beat.elapsed().as_millis() as i64,
            })
            .collect())
    }
}
