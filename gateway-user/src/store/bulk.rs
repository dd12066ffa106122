//! Bulk reads of a `SQLite` store: `audit verify`, `audit export`, `sessions verify --all`
//! and `sessions list` read many rows. sqlx's `SQLite` driver steps statements on a worker
//! thread and hands each row to the task through a channel, a thread wake-up per row (about
//! 12 µs a row measured on a 1,000,000-session store, most of it in the scheduler). Here one
//! blocking thread steps the statement with rusqlite (the same `SQLite` library) and hands
//! over batches, so reading and verifying run side by side on two cores.

use std::path::{Path, PathBuf};

use rusqlite::OpenFlags;
use tokio::sync::mpsc;

use super::{Bind, Columns, Sql, StoreError};

/// Rows per hand-over.
const BATCH: usize = 1024;

impl Columns for rusqlite::Row<'_> {
    fn text(&self, column: &str) -> Result<Option<String>, StoreError> {
        Ok(self.get(column)?)
    }

    fn int(&self, column: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.get(column)?)
    }
}

/// Runs `sql` read-only against the database at `path` on a blocking thread; the rows come
/// back mapped by `map`, in batches, in the statement's order. An error ends the stream.
pub(super) fn stream<T, F>(
    path: &Path,
    sql: &Sql<'_>,
    map: F,
) -> mpsc::Receiver<Result<Vec<T>, StoreError>>
where
    T: Send + 'static,
    F: Fn(&rusqlite::Row<'_>) -> Result<T, StoreError> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(4);
    let path: PathBuf = path.to_owned();
    let text = sql.text.clone();
    let params: Vec<Bind<'static>> = sql.binds.iter().map(Bind::to_static).collect();
    tokio::task::spawn_blocking(move || {
        let read = || -> Result<(), StoreError> {
            let conn = rusqlite::Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            let mut statement = conn.prepare(&text)?;
            let mut rows = statement.query(rusqlite::params_from_iter(params.iter()))?;
            let mut batch = Vec::with_capacity(BATCH);
            while let Some(row) = rows.next()? {
                batch.push(map(row)?);
                if batch.len() == BATCH
                    && tx
                        .blocking_send(Ok(std::mem::replace(&mut batch, Vec::with_capacity(BATCH))))
                        .is_err()
                {
                    return Ok(()); // the reader stopped listening
                }
            }
            if !batch.is_empty() {
                let _ = tx.blocking_send(Ok(batch));
            }
            Ok(())
        };
        if let Err(error) = read() {
            let _ = tx.blocking_send(Err(error));
        }
    });
    rx
}
