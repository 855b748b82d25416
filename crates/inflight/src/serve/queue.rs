//! The queue: one batch at a time, first created first. A batch is validated (its input read as the run
//! will read it), run through the [`BatchRunner`] with a stop token of its own (a cancel, or serve's
//! shutdown), then finalized: its output and error files become file objects and the batch `completed` or
//! `cancelled` in one transaction. Every step is recorded before the next begins, so a restart picks the
//! batch up where it was: `validating` is checked again, `in_progress` and `finalizing` resume the run (its
//! state knows what is done), `cancelling` finishes the cancel.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::objects::{now_s, Batch, BatchError, BatchErrors, BatchStatus, BatchUsage, FileObject, RequestCounts};
use super::validate::validate;
use super::{ids, lock, BatchRun, BatchRunner, Point, RunEnd, Running, Shared};
use crate::output::errors_path;

/// Points kept for the chart: ten minutes at one a second.
const HISTORY: usize = 600;

/// Runs batches until `shared.shutdown`.
pub async fn work(shared: &Arc<Shared>, runner: &dyn BatchRunner) {
    loop {
        if shared.shutdown.is_cancelled() {
            return;
        }
        let next = match shared.meta.queue() {
            Ok(queue) => queue.into_iter().next(),
            Err(e) => {
                tracing::error!("serve: cannot read the queue: {e}");
                tokio::select! { _ = tokio::time::sleep(Duration::from_secs(1)) => continue, _ = shared.shutdown.cancelled() => return }
            }
        };
        let Some(batch) = next else {
            tokio::select! { _ = shared.wake.notified() => continue, _ = shared.shutdown.cancelled() => return }
        };
        let stop = shared.shutdown.child_token();
        *lock(&shared.running) =
            Some(Running { id: batch.id.clone(), stop: stop.clone(), view: None, history: VecDeque::new() });
        let sampling = CancellationToken::new();
        tokio::spawn(sample(shared.clone(), batch.id.clone(), stop.clone(), sampling.clone()));
        if let Err(e) = drive(shared, runner, &batch.id, stop).await {
            tracing::error!(batch = %batch.id, "serve: {e}");
            // The metadata failed under the batch: wait before trying it again.
            tokio::select! { _ = tokio::time::sleep(Duration::from_secs(1)) => {}, _ = shared.shutdown.cancelled() => {} }
        }
        sampling.cancel();
        shared.retire();
    }
}

/// Every second while a batch runs: a point of its history, and a cancel that raced its start applied.
async fn sample(shared: Arc<Shared>, id: String, stop: CancellationToken, done: CancellationToken) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! { _ = tick.tick() => {}, _ = done.cancelled() => return }
        if let Ok(Some(owner)) = shared.meta.batch_owner(&id) {
            if let Ok(Some(b)) = shared.meta.batch(&owner, &id) {
                if b.status == BatchStatus::Cancelling {
                    stop.cancel();
                }
            }
        }
        let mut running = lock(&shared.running);
        let Some(r) = running.as_mut().filter(|r| r.id == id) else { return };
        let Some(view) = &r.view else { continue };
        let s = view.stats.snapshot();
        let (in_flight, limit) =
            view.servers.iter().fold((0, 0), |(f, l), g| (f + g.limiter.in_flight(), l + g.limiter.limit()));
        let point = Point {
            t: started.elapsed().as_secs_f64(),
            done: view.before.done + s.done,
            failed: view.before.failed + s.failed,
            tokens: s.completion_tokens,
            in_flight,
            limit,
        };
        if r.history.len() == HISTORY {
            r.history.pop_front();
        }
        r.history.push_back(point);
    }
}

type Result<T> = std::result::Result<T, rusqlite::Error>;

fn update(shared: &Shared, id: &str, change: impl FnOnce(&mut Batch)) -> Result<Option<Batch>> {
    shared.meta.update_batch(id, change)
}

fn fail(shared: &Shared, id: &str, errors: Vec<BatchError>) -> Result<()> {
    let now = now_s();
    update(shared, id, |b| {
        if !b.status.is_final() {
            b.status = BatchStatus::Failed;
            b.failed_at = Some(now);
            b.errors = Some(BatchErrors::new(errors));
        }
    })?;
    Ok(())
}

/// Takes batch `id` as far as it goes: to a final status, or (on shutdown) to where the next start resumes it.
async fn drive(shared: &Arc<Shared>, runner: &dyn BatchRunner, id: &str, stop: CancellationToken) -> Result<()> {
    let Some(owner) = shared.meta.batch_owner(id)? else { return Ok(()) };
    let Some(batch) = shared.meta.batch(&owner, id)? else { return Ok(()) };
    let (Some(dir), Some(input)) = (shared.batch_dir(id), shared.file_path(&batch.input_file_id)) else {
        return fail(shared, id, vec![error("invalid_id", "the batch or its input file has a malformed id")]);
    };
    let batch = match batch.status {
        BatchStatus::Validating => match start(shared, &owner, &batch, &input)? {
            Some(b) => b,
            None => return Ok(()),
        },
        BatchStatus::Cancelling if batch.in_progress_at.is_none() => {
            let now = now_s();
            update(shared, id, |b| {
                b.status = BatchStatus::Cancelled;
                b.cancelled_at = Some(now);
            })?;
            return Ok(());
        }
        _ => batch,
    };
    if batch.status == BatchStatus::Cancelling {
        stop.cancel();
    }
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return fail(shared, id, vec![error("data_directory", &format!("cannot make {}: {e}", dir.display()))]);
    }
    let output = dir.join("output.jsonl");
    let watcher = shared.clone();
    let watched = id.to_owned();
    let watch = Box::new(move |view: crate::report::RunView| {
        if let Some(r) = lock(&watcher.running).as_mut().filter(|r| r.id == watched) {
            *lock(&watcher.servers) = view.servers.clone();
            r.view = Some(view);
        }
    });
    let ended = runner.run(BatchRun { input, output: output.clone(), stop: stop.clone(), watch }).await;
    let cancelled = shared.meta.batch(&owner, id)?.is_some_and(|b| b.cancelling_at.is_some());
    match ended {
        _ if shared.shutdown.is_cancelled() && !cancelled => Ok(()),
        Err(message) => fail(shared, id, vec![error("run_failed", &message)]),
        Ok(RunEnd { interrupted: true, .. }) if !cancelled => Ok(()),
        Ok(RunEnd { counts, .. }) => finalize(shared, id, &output, counts),
    }
}

fn error(code: &str, message: &str) -> BatchError {
    BatchError { code: code.into(), message: message.into(), param: None, line: None }
}

/// Validates a `validating` batch: `failed` with its errors, or `in_progress` with its total. The batch, when it
/// goes on.
fn start(shared: &Shared, owner: &str, batch: &Batch, input: &std::path::Path) -> Result<Option<Batch>> {
    let checked = match shared.meta.file(owner, &batch.input_file_id)? {
        None => Err(vec![error("input_file_missing", "the input file was deleted")]),
        Some(_) => {
            tokio::task::block_in_place(|| validate(input, &batch.endpoint, &shared.parser, shared.max_line_bytes))
        }
    };
    let total = match checked {
        Ok(n) => n,
        Err(errors) => {
            fail(shared, &batch.id, errors)?;
            return Ok(None);
        }
    };
    let now = now_s();
    let b = update(shared, &batch.id, |b| {
        if b.status == BatchStatus::Validating {
            b.status = BatchStatus::InProgress;
            b.in_progress_at = Some(now);
            b.request_counts.total = total;
        }
    })?;
    Ok(b.filter(|b| matches!(b.status, BatchStatus::InProgress | BatchStatus::Cancelling)))
}

/// The output file `path` as a new file object, moved under its id; `None` when it holds nothing.
fn adopt(shared: &Shared, batch: &str, path: &std::path::Path, kind: &str) -> std::io::Result<Option<FileObject>> {
    let bytes = match std::fs::metadata(path) {
        Ok(m) if m.len() > 0 => m.len(),
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let id = ids::new(ids::FILE);
    std::fs::rename(path, shared.file_path(&id).expect("a new id is valid"))?;
    Ok(Some(FileObject {
        id,
        object: "file".into(),
        bytes,
        created_at: now_s(),
        filename: format!("{batch}_{kind}.jsonl"),
        purpose: "batch_output".into(),
        status: "processed".into(),
    }))
}

/// Makes the batch's output files file objects and ends it `completed` (or `cancelled`), in one transaction.
fn finalize(shared: &Shared, id: &str, output: &std::path::Path, counts: crate::store::Counts) -> Result<()> {
    let now = now_s();
    update(shared, id, |b| {
        b.status = BatchStatus::Finalizing;
        b.finalizing_at.get_or_insert(now);
    })?;
    let files = match (adopt(shared, id, output, "output"), adopt(shared, id, &errors_path(output), "error")) {
        (Ok(out), Ok(err)) => (out, err),
        (Err(e), _) | (_, Err(e)) => {
            return fail(shared, id, vec![error("data_directory", &format!("cannot keep the output files: {e}"))]);
        }
    };
    let (out, err) = files;
    let new: Vec<FileObject> = out.iter().chain(err.iter()).cloned().collect();
    shared.meta.update_with_files(id, &new, |b| {
        b.request_counts = RequestCounts {
            total: counts.total() + counts.bad_lines,
            completed: counts.done,
            failed: counts.failed + counts.bad_lines,
        };
        b.usage = Some(BatchUsage::new(counts.prompt_tokens, counts.completion_tokens));
        b.output_file_id = out.map(|f| f.id);
        b.error_file_id = err.map(|f| f.id);
        if b.cancelling_at.is_some() {
            b.status = BatchStatus::Cancelled;
            b.cancelled_at = Some(now);
        } else {
            b.status = BatchStatus::Completed;
            b.completed_at = Some(now);
        }
    })?;
    Ok(())
}
