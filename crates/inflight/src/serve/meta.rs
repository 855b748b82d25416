//! serve's metadata: which files and batches exist, whose they are, and each batch's object, in one SQLite file
//! (`DIR/serve.db`, WAL). A batch's jobs are not here: each batch is a run with its own state file. Every
//! change is one statement or one `BEGIN IMMEDIATE` transaction, so a killed `serve` leaves it consistent.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::objects::{Batch, FileObject};

/// The metadata store. Its connection is used for one short statement at a time.
pub struct Meta {
    conn: Mutex<Connection>,
}

type Result<T> = std::result::Result<T, rusqlite::Error>;

fn decode<T: serde::de::DeserializeOwned>(body: String) -> Result<T> {
    serde_json::from_str(&body)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into()))
}

fn encode<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("objects serialize")
}

impl Meta {
    /// Opens (or makes) `path`.
    pub fn open(path: &Path) -> Result<Meta> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version < 1 {
            conn.execute_batch(include_str!("sql/001_init.sql"))?;
            conn.pragma_update(None, "user_version", 1)?;
        }
        Ok(Meta { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a stored file of `owner`.
    pub fn insert_file(&self, owner: &str, file: &FileObject) -> Result<()> {
        self.conn().execute(
            "INSERT INTO files (id, owner, purpose, body) VALUES (?1, ?2, ?3, ?4)",
            params![file.id, owner, file.purpose, encode(file)],
        )?;
        Ok(())
    }

    /// `owner`'s file `id`.
    pub fn file(&self, owner: &str, id: &str) -> Result<Option<FileObject>> {
        let body: Option<String> = self
            .conn()
            .query_row("SELECT body FROM files WHERE id = ?1 AND owner = ?2", params![id, owner], |r| r.get(0))
            .optional()?;
        body.map(decode).transpose()
    }

    /// A page of `owner`'s files (one more than `limit` when there are more).
    pub fn files(
        &self,
        owner: &str,
        after: Option<&str>,
        purpose: Option<&str>,
        limit: u64,
    ) -> Result<Vec<FileObject>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(include_str!("sql/list_files.sql"))?;
        let rows = stmt.query_map(params![owner, after, purpose, limit as i64], |r| r.get::<_, String>(0))?;
        rows.map(|r| r.and_then(decode)).collect()
    }

    /// Removes `owner`'s file `id`; whether it was there.
    pub fn delete_file(&self, owner: &str, id: &str) -> Result<bool> {
        Ok(self.conn().execute("DELETE FROM files WHERE id = ?1 AND owner = ?2", params![id, owner])? > 0)
    }

    /// Records a new batch of `owner`.
    pub fn insert_batch(&self, owner: &str, batch: &Batch) -> Result<()> {
        self.conn().execute(
            "INSERT INTO batches (id, owner, status, body) VALUES (?1, ?2, ?3, ?4)",
            params![batch.id, owner, batch.status.name(), encode(batch)],
        )?;
        Ok(())
    }

    /// `owner`'s batch `id`.
    pub fn batch(&self, owner: &str, id: &str) -> Result<Option<Batch>> {
        let body: Option<String> = self
            .conn()
            .query_row("SELECT body FROM batches WHERE id = ?1 AND owner = ?2", params![id, owner], |r| r.get(0))
            .optional()?;
        body.map(decode).transpose()
    }

    /// The owner of batch `id`.
    pub fn batch_owner(&self, id: &str) -> Result<Option<String>> {
        self.conn().query_row("SELECT owner FROM batches WHERE id = ?1", [id], |r| r.get(0)).optional()
    }

    /// A page of `owner`'s batches (one more than `limit` when there are more).
    pub fn batches(&self, owner: &str, after: Option<&str>, limit: u64) -> Result<Vec<Batch>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(include_str!("sql/list_batches.sql"))?;
        let rows = stmt.query_map(params![owner, after, limit as i64], |r| r.get::<_, String>(0))?;
        rows.map(|r| r.and_then(decode)).collect()
    }

    /// Changes batch `id` with `change` in one transaction (a cancel and the queue cannot overwrite each other);
    /// the batch as it is after, or `None` when there is no such batch.
    pub fn update_batch(&self, id: &str, change: impl FnOnce(&mut Batch)) -> Result<Option<Batch>> {
        self.update_with_files(id, &[], change)
    }

    /// [`Meta::update_batch`], recording `files` (of the batch's owner) in the same transaction.
    pub fn update_with_files(
        &self,
        id: &str,
        files: &[FileObject],
        change: impl FnOnce(&mut Batch),
    ) -> Result<Option<Batch>> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let row: Option<(String, String)> = tx
            .query_row("SELECT owner, body FROM batches WHERE id = ?1", [id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let Some((owner, body)) = row else { return Ok(None) };
        let mut batch: Batch = decode(body)?;
        change(&mut batch);
        tx.execute(
            "UPDATE batches SET status = ?2, body = ?3 WHERE id = ?1",
            params![id, batch.status.name(), encode(&batch)],
        )?;
        for f in files {
            tx.execute(
                "INSERT INTO files (id, owner, purpose, body) VALUES (?1, ?2, ?3, ?4)",
                params![f.id, owner, f.purpose, encode(f)],
            )?;
        }
        tx.commit()?;
        Ok(Some(batch))
    }

    /// Batches still to run or to finish, oldest first.
    pub fn queue(&self) -> Result<Vec<Batch>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(include_str!("sql/queue.sql"))?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.map(|r| r.and_then(decode)).collect()
    }

    /// The `limit` newest batches of every owner (the dashboard).
    pub fn recent_batches(&self, limit: u64) -> Result<Vec<Batch>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(include_str!("sql/recent_batches.sql"))?;
        let rows = stmt.query_map([limit as i64], |r| r.get::<_, String>(0))?;
        rows.map(|r| r.and_then(decode)).collect()
    }

    /// How many batches there are in each status.
    pub fn status_counts(&self) -> Result<Vec<(String, u64)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT status, COUNT(*) FROM batches GROUP BY status")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?;
        rows.collect()
    }
}
