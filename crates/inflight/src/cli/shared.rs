//! A run shared by several workers through PostgreSQL (`--state postgres://USER@HOST/DB?run=NAME`): joining it
//! (identity, the input's ingest, once between however many workers start at once), and `status` and `export`
//! of such a run. The run itself goes through the same session and dispatcher as a run on a state file; only
//! where its jobs come from and where its answers go differ ([`crate::store::SharedRun`]).

use std::path::Path;
use std::time::Duration;

use super::common::setup_error;
use super::run_args::RunArgs;
use crate::code::ErrorCode;
use crate::job::{Entry, Parser};
use crate::output::{export_from, Format};
use crate::store::{
    error_rows, BadLineRow, Counts, NewJob, PgUrl, PgWork, SharedRun, StoreError, WorkStore, WorkerInfo, WorkerRow,
    INGEST_DONE,
};

/// A worker that has not beaten for this long is taken for gone (it beats every second while it runs).
pub const ALIVE_WITHIN: Duration = Duration::from_secs(5);
/// Jobs inserted per transaction while ingesting.
const INGEST_BATCH: usize = 2000;

/// A worker that joined a shared run.
pub(super) struct Joined {
    /// Its part in the run, claimer started.
    pub run: SharedRun,
    /// The run's counts as it joined.
    pub before: Counts,
}

/// Runs `f` on a thread of its own, outside the async runtime (the `postgres` client blocks on a runtime of its
/// own, which must not be started from a thread of this one).
pub(super) fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    tokio::task::block_in_place(|| std::thread::scope(|s| s.spawn(f).join().expect("a PostgreSQL thread panicked")))
}

/// Opens the run `url` names (a new one, or anew with `--restart` when no other worker is alive), checks it was
/// begun with these settings, ingests the input when one is given, and joins as a worker.
pub(super) async fn join(
    args: &RunArgs,
    url: PgUrl,
    fingerprint: String,
    parser: &Parser,
    format: Format,
) -> anyhow::Result<Joined> {
    let servers = args.conn.server.clone();
    let (db, worker, before) = off_runtime(|| -> anyhow::Result<_> {
        let cannot = |e: StoreError| setup_error(format!("cannot open the state {url}: {e}"));
        let mut db = PgWork::open(&url).map_err(cannot)?;
        if args.restart {
            restart(&mut db, &url)?;
        }
        check_identity(&mut db, &url, &fingerprint, format, args)?;
        if let Some(input) = &args.input {
            ingest(&mut db, args, input, parser)?;
        } else if db.meta(INGEST_DONE)?.is_none() && db.counts()?.total() == 0 {
            return Err(setup_error(format!(
                "the run {} has no jobs yet: give the first worker the input file",
                url.run()
            )));
        }
        if args.retry_failed {
            eprintln!("--retry-failed: {} failed jobs will be sent again", db.reopen_failed()?);
        }
        let info = WorkerInfo { host: host_name(), pid: std::process::id(), servers };
        let worker = db.register_worker(&info)?;
        let before = db.totals()?;
        Ok((db, worker, before))
    })?;
    eprintln!(
        "joined the run {} as worker {} ({} jobs, {} pending)",
        url.run(),
        worker.0,
        before.total(),
        before.pending
    );
    let run = SharedRun::start(db, worker, args.lease)?;
    Ok(Joined { run, before })
}

/// `--restart`: refused while another worker is alive; else the run is deleted and begun anew.
fn restart(db: &mut PgWork, url: &PgUrl) -> anyhow::Result<()> {
    let alive: Vec<WorkerRow> = db.workers()?.into_iter().filter(is_alive).collect();
    if !alive.is_empty() {
        let names: Vec<String> = alive.iter().map(|w| format!("{}:{}", w.info.host, w.info.pid)).collect();
        return Err(setup_error(format!(
            "--restart refused: {} other workers are still in the run {} ({}); stop them first",
            alive.len(),
            url.run(),
            names.join(", ")
        )));
    }
    db.reset()?;
    Ok(())
}

/// Whether a worker beat recently enough to count as alive (`status`, `--restart`).
pub(super) fn is_alive(w: &WorkerRow) -> bool {
    w.beat_age_ms < ALIVE_WITHIN.as_millis() as i64
}

/// Refuses a run begun with other settings (as a state file's run does); a new run records its settings and
/// the shape of its output lines (what `export` writes).
fn check_identity(
    db: &mut PgWork,
    url: &PgUrl,
    fingerprint: &str,
    format: Format,
    args: &RunArgs,
) -> anyhow::Result<()> {
    match db.meta("settings")? {
        None => {
            db.set_meta("settings", fingerprint)?;
            db.set_meta("format", format.name())?;
            if let Some(input) = &args.input {
                db.set_meta("input", &input.to_string_lossy())?;
            }
            Ok(())
        }
        Some(f) if f == fingerprint => Ok(()),
        Some(_) => Err(setup_error(format!(
            "the run {} belongs to other settings (model, template, system or generation parameters, or another \
             workflow).\n\
             Pass --restart to start over with these settings, or name another run (?run=NAME).",
            url.run()
        ))),
    }
}

/// Ingests the input, or checks it against the one the run was begun with. Safe beside other workers doing the
/// same: a job already in the run is not inserted again.
fn ingest(db: &mut PgWork, args: &RunArgs, input: &Path, parser: &Parser) -> anyhow::Result<()> {
    let mut reader = args.job.open(input, parser)?;
    let changed = || {
        setup_error(format!(
            "the input {} is not the one the run began with; pass --restart to start over with it",
            input.display()
        ))
    };
    let recorded = db.meta("ingest_sha256")?;
    if db.meta(INGEST_DONE)?.is_some() {
        // Complete: only check it is the same input (reading it, not sending it).
        while reader.next_entry()?.is_some() {}
        return if recorded.is_some_and(|s| s != reader.digest_so_far()) { Err(changed()) } else { Ok(()) };
    }
    let (mut jobs, mut bad) = (Vec::with_capacity(INGEST_BATCH), Vec::new());
    let (mut inserted, mut bad_lines) = (0u64, 0u64);
    let mut flush = |db: &mut PgWork, jobs: &mut Vec<NewJob>, bad: &mut Vec<BadLineRow>| -> anyhow::Result<()> {
        let report = db.ingest(jobs)?;
        inserted += report.inserted;
        for line in report.duplicate_ids {
            let id = jobs.iter().find(|j| j.line == line).map(|j| j.id.clone()).unwrap_or_default();
            bad.push(BadLineRow {
                line: line as i64,
                code: ErrorCode::DuplicateId.as_str().to_owned(),
                message: format!("duplicate id {id:?} (another line of the run holds it)"),
                custom_id: Some(id),
            });
        }
        bad_lines += bad.len() as u64;
        db.add_bad_lines(bad)?;
        jobs.clear();
        bad.clear();
        Ok(())
    };
    while let Some(entry) = reader.next_entry()? {
        match entry {
            Entry::Job(job) => jobs.push(NewJob { line: job.line, id: job.id, endpoint: job.endpoint, body: job.body }),
            Entry::Bad(b) => bad.push(BadLineRow {
                line: b.line as i64,
                code: b.code.as_str().to_owned(),
                message: b.message,
                custom_id: b.custom_id,
            }),
        }
        if jobs.len() >= INGEST_BATCH {
            flush(db, &mut jobs, &mut bad)?;
        }
    }
    flush(db, &mut jobs, &mut bad)?;
    let digest = reader.digest_so_far();
    if recorded.is_some_and(|s| s != digest) {
        return Err(changed());
    }
    db.set_meta("ingest_sha256", &digest)?;
    db.set_meta(INGEST_DONE, "1")?;
    if let Err(e) = db.analyze() {
        tracing::warn!("ANALYZE inflight.jobs after the ingest: {e}");
    }
    tracing::info!(inserted, bad_lines, "ingested {}", input.display());
    Ok(())
}

/// This machine's name, for `status`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// `inflight export` of a shared run: every worker's results in the run's commit order, and its error records.
pub(super) fn export(url: &PgUrl, out: &Path, format: Format) -> anyhow::Result<(u64, u64)> {
    off_runtime(|| -> Result<_, StoreError> {
        let mut db = PgWork::open(url)?;
        let mut errors_db = PgWork::open(url)?;
        let format = Format::for_export(db.meta("format")?.as_deref(), format);
        export_from(
            out,
            format,
            |row| {
                let mut next = 0;
                loop {
                    let page = db.results_from(next, 4096)?;
                    let Some(last) = page.last().map(|c| c.ord) else { return Ok(()) };
                    for c in page {
                        row(c.row)?;
                    }
                    next = last + 1;
                }
            },
            |row| {
                for r in error_rows(&mut errors_db)? {
                    row(r)?;
                }
                Ok(())
            },
        )
    })
    .map_err(|e| setup_error(format!("cannot export the state {url}: {e}")))
}
