//! The recorder's writes to a `SQLite` store. sqlx's `SQLite` driver turns every bound value
//! into an owned argument, hands each statement to its worker thread and the result back, and
//! a 600-value multi-row insert spends most of its time in that plumbing: about 20 µs of CPU
//! per recorded HTTP exchange, as much as relaying the exchange itself. Here one connection,
//! opened on first use and kept, writes a batch on a blocking thread with prepared statements
//! (cached on the connection) executed row by row in one transaction. Same `SQLite` library,
//! same statements and values as the sqlx path (see [`super::Store::apply`]).

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use super::{
    Batch, INSERT_BLOCK, INSERT_LEDGER, StoreError, UPSERT_CHECKPOINT, UPSERT_SESSION,
    block_values, checkpoint_values, ledger_values, session_values,
};

/// `wal_autocheckpoint`, in pages (4 KiB): 32 MiB.
const WAL_CHECKPOINT_PAGES: i64 = 8_192;

#[derive(Clone)]
pub(crate) struct Writer {
    path: PathBuf,
    /// `None` until the first write, and again after a failed one (the next write reopens).
    conn: Arc<Mutex<Option<Connection>>>,
}

impl Writer {
    pub(super) fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            conn: Arc::default(),
        }
    }

    /// Writes `batch` in one transaction (idempotent, like the sqlx path).
    pub(super) async fn apply(&self, batch: &Arc<Batch>) -> Result<(), StoreError> {
        let this = self.clone();
        let batch = Arc::clone(batch);
        tokio::task::spawn_blocking(move || this.apply_blocking(&batch))
            .await
            .map_err(|e| StoreError::Write(format!("writer thread: {e}")))?
    }

    /// [`Self::apply`] for a caller already on a blocking thread.
    pub(crate) fn apply_blocking(&self, batch: &Batch) -> Result<(), StoreError> {
        let mut conn = crate::lock(&self.conn);
        if conn.is_none() {
            *conn = Some(open(&self.path).map_err(write_error)?);
        }
        let result = conn
            .as_mut()
            .map_or(Ok(()), |c| write(c, batch))
            .map_err(write_error);
        if result.is_err() {
            // Start afresh next time (the file may have been replaced or repaired).
            *conn = None;
        }
        result
    }
}

#[allow(clippy::needless_pass_by_value)] // the shape `map_err` wants
fn write_error(error: rusqlite::Error) -> StoreError {
    StoreError::Write(error.to_string())
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    // As the sqlx connections (see `Store::connect`): WAL, and a committed transaction
    // survives a crash of the daemon.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // Checkpoint (copy the WAL into the database, with an fsync of each) every 32 MiB of WAL
    // instead of SQLite's 4 MiB: a page the recorder rewrites commit after commit (the end of
    // the event blocks table and its index) is copied once per checkpoint, and the fsyncs are an
    // eighth as many. The WAL file stays at most that size plus one batch.
    conn.pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES)?;
    Ok(conn)
}

fn write(conn: &mut Connection, batch: &Batch) -> rusqlite::Result<()> {
    // IMMEDIATE: take the write lock up front, so a concurrent writer (retention pruning)
    // makes this wait at BEGIN (busy timeout) instead of failing the batch mid-way.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut session = tx.prepare_cached(UPSERT_SESSION)?;
        for s in &batch.sessions {
            session.execute(rusqlite::params_from_iter(session_values(&batch.node, s)))?;
        }
        let mut block = tx.prepare_cached(INSERT_BLOCK)?;
        for b in &batch.blocks {
            block.execute(rusqlite::params_from_iter(block_values(b)))?;
        }
        let mut ledger = tx.prepare_cached(INSERT_LEDGER)?;
        for l in &batch.ledger {
            ledger.execute(rusqlite::params_from_iter(ledger_values(l)))?;
        }
        if let Some(c) = &batch.head {
            tx.prepare_cached(UPSERT_CHECKPOINT)?
                .execute(rusqlite::params_from_iter(checkpoint_values(c)))?;
        }
    }
    tx.commit()
}
