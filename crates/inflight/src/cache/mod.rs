//! The response cache: every successful answer kept under the fingerprint of its exact request, so a later
//! run (of any input file) answers an identical request without sending it.
//!
//! The key is SHA-256 over a canonical JSON of (endpoint, the server's model identity where it reports one,
//! the full request body after templating and defaults): object keys sorted, so the same request hashes the
//! same whatever order a line wrote its fields in. The cache is its own SQLite file in the user's cache
//! directory, in WAL mode with a busy timeout, so several runs share it at once; writes go through one thread
//! per run, in groups. A cache that cannot be read or written costs only its hits: the run goes on and says so
//! in the log, because the run's own state (not the cache) is what keeps results.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::backend::Answer;
use crate::job::Endpoint;
use crate::store::now_ms;

const SCHEMA: &str = include_str!("schema.sql");
/// Writes per transaction, at most.
const WRITE_GROUP: usize = 512;

/// Which answers are cached and reused (`--cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    /// Requests whose answer does not depend on chance: temperature 0, a seed given, or embeddings.
    Deterministic,
    /// Every request (a sampled answer is then reused as it first came).
    Always,
    /// No cache.
    Off,
}

/// Whether a request of `endpoint` with `body` is cached under `mode`.
pub fn cacheable(mode: CacheMode, endpoint: Endpoint, body: &Value) -> bool {
    match mode {
        CacheMode::Off => false,
        CacheMode::Always => true,
        CacheMode::Deterministic => {
            endpoint == Endpoint::Embedding
                || body["temperature"].as_f64() == Some(0.0)
                || !body.get("seed").unwrap_or(&Value::Null).is_null()
        }
    }
}

/// The cache key of a request.
pub fn key(endpoint: Endpoint, identity: Option<&str>, body: &Value) -> [u8; 32] {
    // serde_json's maps are sorted by key: this text is the same for the same request.
    let canonical = serde_json::json!([endpoint.path(), identity, body]).to_string();
    Sha256::digest(canonical.as_bytes()).into()
}

/// The default place: `inflight/responses.db` in the user's cache directory.
pub fn default_path() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("inflight").join("responses.db")
}

/// Why the cache cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The directory or file cannot be created or opened.
    #[error("cannot open the response cache {}: {source}", path.display())]
    Open {
        /// The cache file.
        path: PathBuf,
        /// What failed.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A query failed.
    #[error("response cache: {0}")]
    Sql(#[from] rusqlite::Error),
}

fn connect(path: &Path) -> Result<Connection, CacheError> {
    let open_err =
        |source: Box<dyn std::error::Error + Send + Sync>| CacheError::Open { path: path.to_owned(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| open_err(Box::new(e)))?;
    }
    let conn = Connection::open(path).map_err(|e| open_err(Box::new(e)))?;
    // Several runs at once: readers never block the writer (WAL), writers wait their turn.
    conn.busy_timeout(Duration::from_secs(30)).map_err(|e| open_err(Box::new(e)))?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| open_err(Box::new(e)))?;
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(|e| open_err(Box::new(e)))?;
    conn.execute_batch(SCHEMA).map_err(|e| open_err(Box::new(e)))?;
    Ok(conn)
}

enum Write {
    Put { key: [u8; 32], endpoint: Endpoint, model: Option<String>, answer: Box<Answer> },
    Touch([u8; 32]),
}

/// What a run did with the cache, for its summary.
#[derive(Debug, Clone, Serialize)]
pub struct CacheReport {
    /// The mode.
    pub mode: CacheMode,
    /// The cache file.
    pub path: String,
    /// Jobs answered from the cache, not sent.
    pub hits: u64,
    /// Answers added to the cache.
    pub stored: u64,
}

impl CacheReport {
    /// The summary line.
    pub fn render(&self) -> String {
        format!(
            "  cache: {} answered from the response cache, {} answers added ({})",
            self.hits, self.stored, self.path
        )
    }
}

/// An open cache, for one run.
pub struct ResponseCache {
    mode: CacheMode,
    identity: Option<String>,
    path: PathBuf,
    reader: Mutex<Connection>,
    writes: Mutex<Option<Sender<Write>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    hits: AtomicU64,
    stored: std::sync::Arc<AtomicU64>,
    warned: AtomicBool,
}

impl ResponseCache {
    /// Opens (creating) the cache at `path` for requests to a server whose model identity is `identity`.
    pub fn open(path: &Path, mode: CacheMode, identity: Option<String>) -> Result<ResponseCache, CacheError> {
        let reader = connect(path)?;
        let conn = connect(path)?;
        let (tx, rx) = std::sync::mpsc::channel();
        let stored = std::sync::Arc::new(AtomicU64::new(0));
        let counted = stored.clone();
        let writer = std::thread::Builder::new()
            .name("inflight-cache".into())
            .spawn(move || write_loop(conn, rx, &counted))
            .map_err(|e| CacheError::Open { path: path.to_owned(), source: Box::new(e) })?;
        Ok(ResponseCache {
            mode,
            identity,
            path: path.to_owned(),
            reader: Mutex::new(reader),
            writes: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            hits: AtomicU64::new(0),
            stored,
            warned: AtomicBool::new(false),
        })
    }

    /// The key of a request this cache keeps, or `None` for one it does not (by the mode).
    fn key_of(&self, endpoint: Endpoint, body: &str) -> Option<([u8; 32], Value)> {
        if self.mode == CacheMode::Off {
            return None;
        }
        let body: Value = serde_json::from_str(body).ok()?;
        cacheable(self.mode, endpoint, &body).then(|| (key(endpoint, self.identity.as_deref(), &body), body))
    }

    /// The cached answer to this request, if there is one.
    pub fn lookup(&self, endpoint: Endpoint, body: &str) -> Option<Answer> {
        let (key, _) = self.key_of(endpoint, body)?;
        let found = {
            let conn = self.reader.lock().expect("cache reader lock");
            conn.query_row(
                "SELECT status_code, request_id, body, prompt_tokens, completion_tokens, finish_reason \
                 FROM responses WHERE key = ?1",
                params![&key[..]],
                |r| {
                    Ok(Answer {
                        status_code: r.get(0)?,
                        request_id: r.get(1)?,
                        body: r.get(2)?,
                        prompt_tokens: r.get(3)?,
                        completion_tokens: r.get(4)?,
                        cached_tokens: None,
                        finish_reason: r.get(5)?,
                        first_byte: None,
                        load: None,
                    })
                },
            )
            .optional()
        };
        match found {
            Ok(Some(answer)) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                self.send(Write::Touch(key));
                Some(answer)
            }
            Ok(None) => None,
            Err(e) => {
                self.warn(&e);
                None
            }
        }
    }

    /// Keeps `answer` to this request (if the mode caches it).
    pub fn store(&self, endpoint: Endpoint, body: &str, answer: &Answer) {
        let Some((key, body)) = self.key_of(endpoint, body) else { return };
        let model = body["model"].as_str().map(str::to_owned);
        self.send(Write::Put { key, endpoint, model, answer: Box::new(answer.clone()) });
    }

    fn send(&self, write: Write) {
        if let Some(tx) = self.writes.lock().expect("cache writes lock").as_ref() {
            let _ = tx.send(write);
        }
    }

    fn warn(&self, e: &dyn std::fmt::Display) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!("the response cache {} failed ({e}); the run goes on without it", self.path.display());
        }
    }

    /// Writes what is left and reports what the run did with the cache.
    pub fn finish(&self) -> CacheReport {
        drop(self.writes.lock().expect("cache writes lock").take());
        if let Some(writer) = self.writer.lock().expect("cache writer lock").take() {
            let _ = writer.join();
        }
        CacheReport {
            mode: self.mode,
            path: self.path.display().to_string(),
            hits: self.hits.load(Ordering::Relaxed),
            stored: self.stored.load(Ordering::Relaxed),
        }
    }
}

impl Drop for ResponseCache {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The writer thread: takes writes in groups of up to [`WRITE_GROUP`], one transaction each.
fn write_loop(mut conn: Connection, rx: Receiver<Write>, stored: &AtomicU64) {
    let mut warned = false;
    loop {
        let first = match rx.recv() {
            Ok(w) => w,
            Err(_) => return,
        };
        let mut group = vec![first];
        while group.len() < WRITE_GROUP {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(w) => group.push(w),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        match write_group(&mut conn, &group) {
            Ok(n) => {
                stored.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) if !warned => {
                warned = true;
                tracing::warn!("cannot write to the response cache ({e}); answers of this run may not be kept there");
            }
            Err(_) => {}
        }
    }
}

fn write_group(conn: &mut Connection, group: &[Write]) -> Result<u64, rusqlite::Error> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now = now_ms();
    let mut added = 0;
    {
        let mut put = tx.prepare_cached(
            "INSERT INTO responses (key, endpoint, model, status_code, request_id, body, prompt_tokens, \
             completion_tokens, finish_reason, created_ms, used_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10) \
             ON CONFLICT (key) DO NOTHING",
        )?;
        let mut touch = tx.prepare_cached("UPDATE responses SET used_ms = ?2 WHERE key = ?1")?;
        for w in group {
            match w {
                Write::Put { key, endpoint, model, answer } => {
                    added += put.execute(params![
                        &key[..],
                        endpoint.path(),
                        model,
                        answer.status_code,
                        answer.request_id,
                        answer.body,
                        answer.prompt_tokens,
                        answer.completion_tokens,
                        answer.finish_reason,
                        now
                    ])? as u64;
                }
                Write::Touch(key) => {
                    touch.execute(params![&key[..], now])?;
                }
            }
        }
    }
    tx.commit()?;
    Ok(added)
}

/// What `inflight cache stats` prints.
#[derive(Debug, Clone, Serialize)]
pub struct CacheStats {
    /// The cache file.
    pub path: String,
    /// Answers kept.
    pub entries: u64,
    /// Bytes of answer bodies.
    pub body_bytes: u64,
    /// Answers per endpoint path.
    pub by_endpoint: Vec<(String, u64)>,
    /// Age of the least recently used answer, seconds.
    pub oldest_use_s: Option<f64>,
    /// SQLite's `PRAGMA integrity_check`: `ok`, or what is wrong.
    pub integrity: String,
}

/// Reads the cache's contents and checks its integrity.
pub fn stats(path: &Path) -> Result<CacheStats, CacheError> {
    let conn = connect(path)?;
    let (entries, body_bytes, oldest): (u64, u64, Option<i64>) =
        conn.query_row("SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0), MIN(used_ms) FROM responses", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    let mut q = conn.prepare("SELECT endpoint, COUNT(*) FROM responses GROUP BY endpoint ORDER BY endpoint")?;
    let by_endpoint = q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<Vec<_>, _>>()?;
    let integrity: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    Ok(CacheStats {
        path: path.display().to_string(),
        entries,
        body_bytes,
        by_endpoint,
        oldest_use_s: oldest.map(|ms| (now_ms() - ms).max(0) as f64 / 1000.0),
        integrity,
    })
}

/// Removes answers no run has used for `older_than`; returns how many.
pub fn prune(path: &Path, older_than: Duration) -> Result<u64, CacheError> {
    let conn = connect(path)?;
    let cutoff = now_ms() - older_than.as_millis() as i64;
    let removed = conn.execute("DELETE FROM responses WHERE used_ms <= ?1", params![cutoff])? as u64;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_key_is_the_request_whatever_the_order_of_its_fields() {
        let a = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0});
        let b: Value =
            serde_json::from_str(r#"{"temperature":0,"messages":[{"content":"hi","role":"user"}],"model":"m"}"#)
                .unwrap();
        assert_eq!(key(Endpoint::Chat, None, &a), key(Endpoint::Chat, None, &b));
        assert_ne!(key(Endpoint::Chat, None, &a), key(Endpoint::Completion, None, &a), "the endpoint counts");
        assert_ne!(key(Endpoint::Chat, None, &a), key(Endpoint::Chat, Some("gguf:x"), &a), "so does the model");
        let c = json!({"model": "m", "messages": [{"role": "user", "content": "hi!"}], "temperature": 0});
        assert_ne!(key(Endpoint::Chat, None, &a), key(Endpoint::Chat, None, &c));
    }

    #[test]
    fn deterministic_means_temperature_0_a_seed_or_embeddings() {
        use CacheMode::*;
        let cases = [
            (Deterministic, Endpoint::Chat, json!({"temperature": 0}), true),
            (Deterministic, Endpoint::Chat, json!({"temperature": 0.0}), true),
            (Deterministic, Endpoint::Chat, json!({"temperature": 0.7, "seed": 3}), true),
            (Deterministic, Endpoint::Chat, json!({"temperature": 0.7}), false),
            (Deterministic, Endpoint::Chat, json!({}), false),
            (Deterministic, Endpoint::Chat, json!({"seed": null}), false),
            (Deterministic, Endpoint::Embedding, json!({"input": "x"}), true),
            (Always, Endpoint::Chat, json!({"temperature": 0.7}), true),
            (Off, Endpoint::Embedding, json!({"input": "x"}), false),
        ];
        for (mode, endpoint, body, want) in cases {
            assert_eq!(cacheable(mode, endpoint, &body), want, "{mode:?} {endpoint:?} {body}");
        }
    }

    fn answer(text: &str) -> Answer {
        Answer {
            status_code: 200,
            request_id: Some("r1".into()),
            body: json!({"choices": [{"message": {"content": text}}]}).to_string(),
            prompt_tokens: Some(3),
            completion_tokens: Some(2),
            cached_tokens: None,
            finish_reason: Some("stop".into()),
            first_byte: None,
            load: None,
        }
    }

    #[test]
    fn an_answer_kept_by_one_run_answers_the_same_request_in_the_next_and_prune_removes_it() {
        let dir = std::env::temp_dir().join(format!("inflight-cache-test-{}", std::process::id()));
        let path = dir.join("responses.db");
        let _ = std::fs::remove_dir_all(&dir);
        let body = json!({"model": "m", "prompt": "2+2", "temperature": 0}).to_string();
        let sampled = json!({"model": "m", "prompt": "2+2", "temperature": 0.9}).to_string();
        let first = ResponseCache::open(&path, CacheMode::Deterministic, None).unwrap();
        assert!(first.lookup(Endpoint::Completion, &body).is_none());
        first.store(Endpoint::Completion, &body, &answer("4"));
        first.store(Endpoint::Completion, &sampled, &answer("five"));
        let report = first.finish();
        assert_eq!((report.hits, report.stored), (0, 1), "the sampled answer is not kept");

        let second = ResponseCache::open(&path, CacheMode::Deterministic, None).unwrap();
        let hit = second.lookup(Endpoint::Completion, &body).expect("kept");
        assert_eq!((hit.body, hit.completion_tokens), (answer("4").body, Some(2)));
        assert!(second.lookup(Endpoint::Completion, &sampled).is_none());
        let other_model = ResponseCache::open(&path, CacheMode::Deterministic, Some("other".into())).unwrap();
        assert!(other_model.lookup(Endpoint::Completion, &body).is_none(), "another model's answer is not this one's");
        assert_eq!(second.finish().hits, 1);
        drop((second, other_model));

        let s = stats(&path).unwrap();
        assert_eq!((s.entries, s.integrity.as_str()), (1, "ok"));
        assert_eq!(prune(&path, Duration::from_secs(3600)).unwrap(), 0, "used just now");
        assert_eq!(prune(&path, Duration::ZERO).unwrap(), 1);
        assert_eq!(stats(&path).unwrap().entries, 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
