//! The store contract (`inflight::store::WorkStore`), one property per function, each run against SQLite and
//! against PostgreSQL. PostgreSQL is the database `INFLIGHT_TEST_PG` names (a URL without `run=`), else one
//! throwaway cluster per test process started by `scripts/pg.sh` (stopped when the process exits); each test
//! has a run of its own. (One test makes a role: `INFLIGHT_TEST_PG`'s user must be allowed to.) Leases expire by renewing them for zero time, never by sleeping.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use inflight::code::ErrorCode;

use crate::util::pg_database;
use inflight::job::Endpoint;
use inflight::store::{
    Completion, Failure, Fence, Lease, NewJob, PgUrl, PgWork, SqliteWork, StepDone, WorkCounts, WorkStore, WorkerId,
    WorkerInfo,
};

/// Long enough never to expire during a test.
const HELD: Duration = Duration::from_secs(600);
/// How long a test waits for the database's clock to pass an expiry it set to now.
const CLOCK_WAIT: Duration = Duration::from_secs(10);

/// A store under test, and what keeps it alive.
struct Fixture {
    store: Box<dyn WorkStore>,
    _dir: Option<tempfile::TempDir>,
}

fn sqlite(_test: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteWork::open(&dir.path().join("state.db")).unwrap();
    Fixture { store: Box::new(store), _dir: Some(dir) }
}

/// A URL for a run of this test's own (`extra`: more query parameters).
fn pg_url(test: &str, extra: &str) -> PgUrl {
    let db = pg_database();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let sep = if db.contains('?') { '&' } else { '?' };
    PgUrl::parse(&format!("{db}{sep}run={test}-{}-{nanos}{extra}", std::process::id())).unwrap()
}

fn postgres(test: &str) -> Fixture {
    Fixture { store: Box::new(PgWork::open(&pg_url(test, "")).unwrap()), _dir: None }
}

fn jobs(lines: std::ops::Range<u64>) -> Vec<NewJob> {
    lines
        .map(|line| NewJob {
            line,
            id: format!("job-{line}"),
            endpoint: Endpoint::Chat,
            body: format!(r#"{{"messages":[{{"role":"user","content":"line {line}"}}]}}"#),
        })
        .collect()
}

fn worker(store: &mut dyn WorkStore, host: &str) -> WorkerId {
    let info = WorkerInfo { host: host.into(), pid: std::process::id(), servers: vec!["http://127.0.0.1:1".into()] };
    store.register_worker(&info).unwrap()
}

/// A success for the job `lease` holds, whose answer names `by`.
fn done(lease: Lease, by: &str) -> (inflight::store::LeaseToken, Completion) {
    let completion = Completion {
        seq: lease.seq,
        id: format!("seq-{}", lease.seq),
        attempts: 1,
        sent_ms: 1_000,
        first_byte_ms: Some(1_010),
        finished_ms: 1_050,
        prompt_tokens: Some(7),
        completion_tokens: Some(3),
        finish_reason: Some("stop".into()),
        status_code: 200,
        request_id: format!("req-{}", lease.seq),
        response: format!(r#"{{"seq":{},"by":"{by}"}}"#, lease.seq),
    };
    (lease.token, completion)
}

fn failed(lease: Lease) -> (inflight::store::LeaseToken, Failure) {
    let failure = Failure {
        seq: lease.seq,
        id: format!("seq-{}", lease.seq),
        line: lease.seq,
        attempts: 3,
        sent_ms: Some(1_000),
        finished_ms: 1_050,
        status_code: Some(400),
        response: Some(r#"{"error":"bad"}"#.into()),
        code: ErrorCode::BadRequest,
        message: "bad request".into(),
        step: None,
    };
    (lease.token, failure)
}

fn counts(ready: u64, claimed: u64, done: u64, failed: u64) -> WorkCounts {
    WorkCounts { ready, claimed, done, failed }
}

/// Claims until one job comes back, for as long as the store's clock may take to pass an expiry set to now.
fn claim_one_when_expired(store: &mut dyn WorkStore, worker: WorkerId) -> inflight::store::Claimed {
    let deadline = Instant::now() + CLOCK_WAIT;
    loop {
        if let Some(c) = store.claim(worker, 1, HELD).unwrap().pop() {
            return c;
        }
        assert!(Instant::now() < deadline, "an expired lease was not claimable within {CLOCK_WAIT:?}");
        std::thread::yield_now();
    }
}

// ---- the properties -------------------------------------------------------------------------------------------

/// Ingesting the same jobs twice, or from two ingesters at the same moment, inserts them once; a line whose id
/// another line holds is reported, not inserted.
fn ingest_twice_is_once(mut store: Box<dyn WorkStore>) {
    let first = store.ingest(&jobs(0..100)).unwrap();
    assert_eq!((first.inserted, first.present, first.duplicate_ids.len()), (100, 0, 0));
    let again = store.ingest(&jobs(0..100)).unwrap();
    assert_eq!((again.inserted, again.present, again.duplicate_ids.len()), (0, 100, 0));
    let mut dup = jobs(500..501);
    dup[0].id = "job-3".into();
    let dup = store.ingest(&dup).unwrap();
    assert_eq!((dup.inserted, dup.duplicate_ids), (0, vec![500]));
    assert_eq!(store.counts().unwrap(), counts(100, 0, 0, 0));

    let start = Barrier::new(2);
    let reports: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let mut own = store.try_clone().unwrap();
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    own.ingest(&jobs(1_000..3_000)).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(reports.iter().map(|r| r.inserted).sum::<u64>(), 2_000, "{reports:?}");
    assert_eq!(reports.iter().map(|r| r.present).sum::<u64>(), 2_000, "{reports:?}");
    assert!(reports.iter().all(|r| r.duplicate_ids.is_empty()), "{reports:?}");
    assert_eq!(store.counts().unwrap(), counts(2_100, 0, 0, 0));
}

/// Four handles claiming at once never get the same job, and between them get every job.
fn concurrent_claimers_never_share_a_job(mut store: Box<dyn WorkStore>) {
    store.ingest(&jobs(0..2_000)).unwrap();
    let start = Barrier::new(4);
    let claimed = AtomicUsize::new(0);
    let taken: Vec<Vec<i64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let mut own = store.try_clone().unwrap();
                let (start, claimed) = (&start, &claimed);
                s.spawn(move || {
                    let me = worker(&mut *own, &format!("host-{i}"));
                    start.wait();
                    let mut mine = Vec::new();
                    // In rounds: every claimer claims once a round, at the same time as the others, so each
                    // takes part however the threads are scheduled (one could otherwise take everything alone).
                    loop {
                        let batch = own.claim(me, 16, HELD).unwrap();
                        claimed.fetch_add(batch.len(), Ordering::SeqCst);
                        mine.extend(batch.iter().map(|c| c.lease.seq));
                        start.wait();
                        let done = claimed.load(Ordering::SeqCst) >= 2_000;
                        start.wait();
                        if done {
                            return mine;
                        }
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut seen = HashSet::new();
    for seq in taken.iter().flatten() {
        assert!(seen.insert(*seq), "job {seq} was claimed twice");
    }
    assert_eq!(seen.len(), 2_000);
    assert!(
        taken.iter().filter(|t| !t.is_empty()).count() >= 2,
        "one claimer took everything: {:?}",
        taken.iter().map(Vec::len).collect::<Vec<_>>()
    );
    assert_eq!(store.counts().unwrap(), counts(0, 2_000, 0, 0));
    let late = worker(&mut *store, "late");
    assert!(store.claim(late, 10, HELD).unwrap().is_empty(), "a held job was handed out again");
}

/// 5,000 jobs through four concurrent workers: each claimed and completed exactly once, every result in the
/// stream once, in a gap-free order; a completion repeated after the job is done is stale.
fn every_job_once_across_four_workers(mut store: Box<dyn WorkStore>) {
    const N: usize = 5_000;
    store.ingest(&jobs(0..N as u64)).unwrap();
    let start = Barrier::new(4);
    let finished: Vec<Vec<(Lease, String)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let mut own = store.try_clone().unwrap();
                let start = &start;
                s.spawn(move || {
                    let me = worker(&mut *own, &format!("host-{i}"));
                    start.wait();
                    let mut mine = Vec::new();
                    loop {
                        let batch = own.claim(me, 50, HELD).unwrap();
                        if batch.is_empty() {
                            return mine;
                        }
                        let answers: Vec<_> = batch.iter().map(|c| done(c.lease, &format!("w{i}"))).collect();
                        let fences = own.complete(&answers).unwrap();
                        assert!(fences.iter().all(|f| *f == Fence::Recorded), "{fences:?}");
                        mine.extend(batch.into_iter().map(|c| (c.lease, c.id)));
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ids: std::collections::HashMap<i64, String> =
        finished.iter().flatten().map(|(l, id)| (l.seq, id.clone())).collect();
    let all: Vec<Lease> = finished.iter().flatten().map(|(l, _)| *l).collect();
    assert_eq!(all.len(), N);
    assert_eq!(all.iter().map(|l| l.seq).collect::<HashSet<_>>().len(), N, "a job was completed twice");
    assert_eq!(store.counts().unwrap(), counts(0, 0, N as u64, 0));

    let results = store.results_from(0, N + 10).unwrap();
    assert_eq!(results.len(), N);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.ord, i as i64, "the commit order has a gap or a repeat");
        assert!(r.row.response.contains(&format!(r#""seq":{}"#, r.row.seq)), "{:?}", r.row);
        assert_eq!(Some(&r.row.id), ids.get(&r.row.seq), "the result is not the claimed job's");
        assert_eq!((r.row.status_code, r.row.latency_ms), (200, 50));
        assert_eq!(r.row.request_id.as_deref(), Some(format!("req-{}", r.row.seq).as_str()));
    }
    assert_eq!(results.iter().map(|r| r.row.seq).collect::<HashSet<_>>().len(), N);

    let again: Vec<_> = all[..10].iter().map(|l| done(*l, "again")).collect();
    assert_eq!(store.complete(&again).unwrap(), vec![Fence::Stale; 10]);
    assert_eq!(store.results_from(0, N + 10).unwrap().len(), N, "a repeated completion wrote a result");
}

/// A lease that expired is taken by another worker with a new token; the first worker's late renewal,
/// completion and failure write nothing and say so, and the job has the second worker's answer alone.
fn an_expired_lease_is_taken_over_and_the_late_answer_is_stale(mut store: Box<dyn WorkStore>) {
    store.ingest(&jobs(0..2)).unwrap();
    let a = worker(&mut *store, "a");
    let b = worker(&mut *store, "b");
    let mine = store.claim(a, 1, HELD).unwrap();
    assert_eq!(mine.len(), 1);
    let first = mine[0].lease;
    let other = store.claim(b, 1, HELD).unwrap();
    assert_eq!(other.len(), 1);
    assert_ne!(other[0].lease.seq, first.seq, "a held lease was taken");
    assert!(store.claim(b, 1, HELD).unwrap().is_empty(), "a held lease was taken");

    // Expire a's lease now: renewed for no time at all.
    assert_eq!(store.renew(&[first], Duration::ZERO).unwrap(), vec![first]);
    let taken = claim_one_when_expired(&mut *store, b);
    assert_eq!(taken.lease.seq, first.seq);
    assert_ne!(taken.lease.token, first.token, "a new claim must get a new token");

    assert!(store.renew(&[first], HELD).unwrap().is_empty(), "a lost lease was renewed");
    assert_eq!(store.complete(&[done(first, "a")]).unwrap(), vec![Fence::Stale]);
    assert_eq!(store.fail(&[failed(first)]).unwrap(), vec![Fence::Stale]);
    assert_eq!(store.counts().unwrap(), counts(0, 2, 0, 0), "a stale write changed the job");
    assert_eq!(store.renew(&[taken.lease], HELD).unwrap(), vec![taken.lease]);
    assert_eq!(store.complete(&[done(taken.lease, "b")]).unwrap(), vec![Fence::Recorded]);

    let results = store.results_from(0, 10).unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].row.seq, first.seq);
    assert!(results[0].row.response.contains(r#""by":"b""#), "{:?}", results[0].row);
    assert_eq!(store.counts().unwrap(), counts(0, 1, 1, 0));
}

/// Attempts recorded under a claim are what the next claim of the job sees, after an expiry or a release; a
/// lost claim's record writes nothing.
fn attempts_outlive_the_claim(mut store: Box<dyn WorkStore>) {
    store.ingest(&jobs(0..1)).unwrap();
    let a = worker(&mut *store, "a");
    let b = worker(&mut *store, "b");
    let first = store.claim(a, 1, HELD).unwrap().pop().unwrap();
    assert_eq!(first.attempts, 0);
    assert_eq!(store.record_attempts(&[(first.lease, 1)]).unwrap(), vec![Fence::Recorded]);
    assert_eq!(store.record_attempts(&[(first.lease, 2)]).unwrap(), vec![Fence::Recorded]);
    store.renew(&[first.lease], Duration::ZERO).unwrap();
    let second = claim_one_when_expired(&mut *store, b);
    assert_eq!(second.attempts, 2, "the attempts spent under the expired claim were lost");
    assert_eq!(store.record_attempts(&[(first.lease, 5)]).unwrap(), vec![Fence::Stale]);
    assert_eq!(store.record_attempts(&[(second.lease, 3)]).unwrap(), vec![Fence::Recorded]);
    assert_eq!(store.release(b).unwrap(), 1);
    let third = store.claim(a, 1, HELD).unwrap().pop().unwrap();
    assert_eq!(third.attempts, 3, "a stale record changed the attempts, or the release lost them");
}

/// A workflow step of the job `lease` holds, at position `ord`, whose output names `by`.
fn step(lease: Lease, name: &str, ord: usize, by: &str) -> (inflight::store::LeaseToken, StepDone) {
    let done = StepDone {
        seq: lease.seq,
        step: name.into(),
        ord,
        fingerprint: format!("fp-{name}"),
        output: format!("{by:?}"),
        response: r#"{"choices":[]}"#.into(),
        attempts: 1,
        invalid: 0,
        prompt_tokens: Some(5),
        completion_tokens: None,
        sent_ms: 1_000,
        finished_ms: 1_100,
        steps_total: 0,
    };
    (lease.token, done)
}

/// Workflow steps recorded under a claim are read back by the worker that claims the job next; a lost claim's
/// steps write nothing, and a step a job has is never replaced.
fn steps_outlive_the_claim(mut store: Box<dyn WorkStore>) {
    store.ingest(&jobs(0..1)).unwrap();
    let a = worker(&mut *store, "a");
    let b = worker(&mut *store, "b");
    let first = store.claim(a, 1, HELD).unwrap().pop().unwrap();
    let written = store.record_steps(&[step(first.lease, "extract", 0, "a"), step(first.lease, "critique", 1, "a")]);
    assert_eq!(written.unwrap(), vec![Fence::Recorded; 2]);
    store.renew(&[first.lease], Duration::ZERO).unwrap();
    let second = claim_one_when_expired(&mut *store, b);
    assert_eq!(second.lease.seq, first.lease.seq);
    assert_eq!(store.record_steps(&[step(first.lease, "judge", 2, "a")]).unwrap(), vec![Fence::Stale]);
    let again = store.record_steps(&[step(second.lease, "extract", 0, "b"), step(second.lease, "judge", 2, "b")]);
    assert_eq!(again.unwrap(), vec![Fence::Recorded; 2]);
    let steps = store.steps_of(&[first.lease.seq, first.lease.seq + 1_000]).unwrap();
    let seen: Vec<(String, usize, String)> = steps.iter().map(|s| (s.step.clone(), s.ord, s.output.clone())).collect();
    let want = [("extract", 0, "\"a\""), ("critique", 1, "\"a\""), ("judge", 2, "\"b\"")];
    assert_eq!(seen, want.map(|(n, o, by)| (n.to_owned(), o, by.to_owned())));
    assert!(steps.iter().all(|s| s.seq == first.lease.seq && s.fingerprint == format!("fp-{}", s.step)));
    assert!(steps.iter().all(|s| s.prompt_tokens == Some(5) && s.completion_tokens.is_none() && s.attempts == 1));
    assert_eq!((steps[0].sent_ms, steps[0].finished_ms), (1_000, 1_100));
}

/// Releasing a worker's claims makes them ready at once; its tokens are stale from then on.
fn release_makes_claims_ready_at_once(mut store: Box<dyn WorkStore>) {
    store.ingest(&jobs(0..10)).unwrap();
    let a = worker(&mut *store, "a");
    let b = worker(&mut *store, "b");
    let held = store.claim(a, 10, HELD).unwrap();
    assert_eq!(held.len(), 10);
    assert!(store.claim(b, 10, HELD).unwrap().is_empty());
    assert_eq!(store.release(b).unwrap(), 0, "b held nothing");
    assert_eq!(store.release(a).unwrap(), 10);
    assert_eq!(store.counts().unwrap(), counts(10, 0, 0, 0));

    let again = store.claim(b, 10, HELD).unwrap();
    let seqs = |c: &[inflight::store::Claimed]| c.iter().map(|c| c.lease.seq).collect::<BTreeSet<_>>();
    assert_eq!(seqs(&again), seqs(&held));
    let late: Vec<_> = held.iter().map(|c| done(c.lease, "a")).collect();
    assert_eq!(store.complete(&late).unwrap(), vec![Fence::Stale; 10]);
    let now: Vec<_> = again.iter().map(|c| done(c.lease, "b")).collect();
    assert_eq!(store.complete(&now).unwrap(), vec![Fence::Recorded; 10]);
    assert_eq!(store.counts().unwrap(), counts(0, 0, 10, 0));
}

/// Results committed by four workers at once are read, while they commit, by a reader paging from where it
/// stopped: every position from 0 on, in order, none skipped, none twice.
fn results_come_in_one_gap_free_commit_order(mut store: Box<dyn WorkStore>) {
    const N: usize = 2_000;
    store.ingest(&jobs(0..N as u64)).unwrap();
    let mut reader = store.try_clone().unwrap();
    let read: Vec<i64> = std::thread::scope(|s| {
        for i in 0..4 {
            let mut own = store.try_clone().unwrap();
            s.spawn(move || {
                let me = worker(&mut *own, &format!("host-{i}"));
                loop {
                    let batch = own.claim(me, 5, HELD).unwrap();
                    if batch.is_empty() {
                        return;
                    }
                    // One job at a time and then the rest of the batch: groups of different sizes interleave.
                    let answers: Vec<_> = batch.iter().map(|c| done(c.lease, "w")).collect();
                    own.complete(&answers[..1]).unwrap();
                    own.complete(&answers[1..]).unwrap();
                }
            });
        }
        let reading = s.spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut seqs = Vec::new();
            while seqs.len() < N {
                let page = reader.results_from(seqs.len() as i64, 7).unwrap();
                for (k, r) in page.iter().enumerate() {
                    assert_eq!(r.ord, (seqs.len() + k) as i64, "the reader saw a gap in the commit order");
                }
                seqs.extend(page.iter().map(|r| r.row.seq));
                assert!(Instant::now() < deadline, "only {} results after 120 s", seqs.len());
            }
            seqs
        });
        reading.join().unwrap()
    });
    assert_eq!(read.len(), N);
    assert_eq!(read.iter().collect::<HashSet<_>>().len(), N, "a result was read twice");
    assert_eq!(store.results_from(N as i64, 10).unwrap().len(), 0);
}

/// Counts follow claims, completions, failures and releases.
fn counts_are_right(mut store: Box<dyn WorkStore>) {
    store.ingest(&jobs(0..20)).unwrap();
    assert_eq!(store.counts().unwrap(), counts(20, 0, 0, 0));
    let a = worker(&mut *store, "a");
    let held = store.claim(a, 8, HELD).unwrap();
    assert_eq!(held.len(), 8);
    assert_eq!(store.counts().unwrap(), counts(12, 8, 0, 0));
    let ok: Vec<_> = held[..3].iter().map(|c| done(c.lease, "a")).collect();
    assert_eq!(store.complete(&ok).unwrap(), vec![Fence::Recorded; 3]);
    let bad: Vec<_> = held[3..5].iter().map(|c| failed(c.lease)).collect();
    assert_eq!(store.fail(&bad).unwrap(), vec![Fence::Recorded; 2]);
    assert_eq!(store.counts().unwrap(), counts(12, 3, 3, 2));
    assert_eq!(store.release(a).unwrap(), 3);
    assert_eq!(store.counts().unwrap(), counts(15, 0, 3, 2));
    assert_eq!(store.counts().unwrap().total(), 20);
    let rest = store.claim(a, 100, HELD).unwrap();
    assert_eq!(rest.len(), 15, "finished jobs were handed out again");
    assert!(rest.iter().all(|c| c.attempts == 0));
}

/// Workers are listed in the order they joined, with what they said and the age of their last beat.
fn workers_are_listed_with_their_beats(mut store: Box<dyn WorkStore>) {
    let info = |host: &str, servers: &[&str]| WorkerInfo {
        host: host.into(),
        pid: 4242,
        servers: servers.iter().map(|s| s.to_string()).collect(),
    };
    let a = store.register_worker(&info("alpha", &["http://127.0.0.1:8080"])).unwrap();
    let b = store.register_worker(&info("beta", &["http://127.0.0.1:11434", "model.gguf"])).unwrap();
    assert_ne!(a, b);
    store.beat(a).unwrap();
    let listed = store.workers().unwrap();
    assert_eq!(listed.iter().map(|w| w.id).collect::<Vec<_>>(), vec![a, b]);
    assert_eq!(listed[0].info, info("alpha", &["http://127.0.0.1:8080"]));
    assert_eq!(listed[1].info, info("beta", &["http://127.0.0.1:11434", "model.gguf"]));
    assert!(listed.iter().all(|w| (0..60_000).contains(&w.beat_age_ms)), "{listed:?}");
    let err = store.beat(WorkerId(i64::MAX)).unwrap_err();
    assert_eq!(err.kind(), "unknown_worker");
}

/// The run's metadata is kept, replaced by a later value, and seen by every handle.
fn meta_is_kept(mut store: Box<dyn WorkStore>) {
    assert_eq!(store.meta("input_sha256").unwrap(), None);
    store.set_meta("input_sha256", "abc").unwrap();
    store.set_meta("input_sha256", "def").unwrap();
    store.set_meta("ingest_lines", "20000").unwrap();
    let mut other = store.try_clone().unwrap();
    assert_eq!(other.meta("input_sha256").unwrap().as_deref(), Some("def"));
    assert_eq!(other.meta("ingest_lines").unwrap().as_deref(), Some("20000"));
}

/// Every property, as one test for SQLite and one for PostgreSQL.
macro_rules! contract {
    ($($property:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $property() {
                let fixture = super::sqlite(stringify!($property));
                super::$property(fixture.store);
            })*
        }
        mod postgres {
            $(#[test]
            fn $property() {
                let fixture = super::postgres(stringify!($property));
                super::$property(fixture.store);
            })*
        }
    };
}

contract!(
    ingest_twice_is_once,
    concurrent_claimers_never_share_a_job,
    every_job_once_across_four_workers,
    an_expired_lease_is_taken_over_and_the_late_answer_is_stale,
    attempts_outlive_the_claim,
    steps_outlive_the_claim,
    release_makes_claims_ready_at_once,
    results_come_in_one_gap_free_commit_order,
    counts_are_right,
    workers_are_listed_with_their_beats,
    meta_is_kept,
);

/// Two runs in one PostgreSQL database are apart: the same lines and ids in both, each run's claims, results,
/// counts, metadata and workers its own.
#[test]
fn postgres_runs_in_one_database_are_apart() {
    let mut one = PgWork::open(&pg_url("apart_one", "")).unwrap();
    let mut two = PgWork::open(&pg_url("apart_two", "")).unwrap();
    assert_eq!(one.ingest(&jobs(0..10)).unwrap().inserted, 10);
    assert_eq!(two.ingest(&jobs(0..5)).unwrap().inserted, 5, "the other run's ids blocked these");
    one.set_meta("k", "one").unwrap();
    let w = worker(&mut two, "two");
    let claimed = two.claim(w, 100, HELD).unwrap();
    assert_eq!(claimed.len(), 5);
    let answers: Vec<_> = claimed.iter().map(|c| done(c.lease, "two")).collect();
    assert_eq!(two.complete(&answers).unwrap(), vec![Fence::Recorded; 5]);
    assert_eq!(one.counts().unwrap(), counts(10, 0, 0, 0));
    assert_eq!(two.counts().unwrap(), counts(0, 0, 5, 0));
    assert!(one.results_from(0, 100).unwrap().is_empty());
    assert_eq!(two.results_from(0, 100).unwrap().len(), 5);
    assert_eq!(two.meta("k").unwrap(), None);
    assert!(one.workers().unwrap().is_empty());
    assert_eq!(one.release(w).unwrap(), 0);
}

/// A worker whose role may read and write inflight's tables but create nothing opens a run of a database
/// already migrated (as a DBA would set it up).
#[test]
fn postgres_a_role_that_cannot_create_opens_a_migrated_database() {
    let mut store = PgWork::open(&pg_url("migrated", "")).unwrap();
    store.ingest(&jobs(0..3)).unwrap();
    let role = format!("inflight_worker_{}", std::process::id());
    let mut admin = ::postgres::Client::connect(pg_database(), ::postgres::NoTls).unwrap();
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN;
             GRANT USAGE ON SCHEMA inflight TO {role};
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA inflight TO {role};
             GRANT USAGE ON ALL SEQUENCES IN SCHEMA inflight TO {role};"
        ))
        .unwrap();
    let mut as_worker = url::Url::parse(&pg_url("migrated", "").to_string()).unwrap();
    as_worker.set_username(&role).unwrap();
    let opened = PgWork::open(&PgUrl::parse(as_worker.as_str()).unwrap());
    let claimed = opened.map(|mut store| {
        assert_eq!(store.ingest(&jobs(0..3)).unwrap().inserted, 3);
        let w = worker(&mut store, "limited");
        store.claim(w, 10, HELD).unwrap().len()
    });
    admin.batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role};")).unwrap();
    assert_eq!(claimed.unwrap(), 3);
}

/// A PostgreSQL connection that the server drops is a retryable error, and no error shows the password.
#[test]
fn postgres_lost_connection_is_retryable() {
    let app = format!("inflight-lost-{}", std::process::id());
    let url = pg_url("lost_connection", &format!("&application_name={app}"));
    let mut store = PgWork::open(&url).unwrap();
    store.ingest(&jobs(0..3)).unwrap();
    let mut admin = ::postgres::Client::connect(pg_database(), ::postgres::NoTls).unwrap();
    let killed = admin
        .query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", &[&app])
        .unwrap();
    assert_eq!(killed.len(), 1);
    // The server ends the backend when the signal lands: a call may still get through just before.
    let deadline = Instant::now() + CLOCK_WAIT;
    let err = loop {
        match store.counts() {
            Err(e) => break e,
            Ok(_) => assert!(Instant::now() < deadline, "the connection outlived its backend"),
        }
    };
    assert_eq!(err.kind(), "postgres");
    assert!(err.is_retryable(), "{err:?}");

    // A port nothing listens on: the connection is refused, which is retryable, and the error is printable.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = PgUrl::parse(&format!("postgres://postgres:pw-s3cret@127.0.0.1:{closed}/postgres?run=x")).unwrap();
    let err = PgWork::open(&url).err().expect("nothing listens there");
    let shown = format!("{err} {err:?} {url} {url:?}");
    assert!(!shown.contains("pw-s3cret"), "{shown}");
    assert!(err.is_retryable(), "{shown}");
}
