//! The session store, over sqlx `Any`: `SQLite` (WAL mode) under the state dir by default,
//! PostgreSQL (`--store postgres://…`) for a fleet of nodes writing to one central database.
//! One set of migrations (`migrations/`, portable SQL) serves both, and so does every query
//! (`$N` placeholders, which both drivers accept; statements built at run time use `?` for
//! `SQLite`, see [`Sql::bind`]). On `SQLite`, reads of every row (`audit verify`, exports,
//! `sessions list`) go through [`bulk`] and the recorder's writes through [`write`], both
//! rusqlite on a blocking thread.

pub(crate) mod block;
mod bulk;
mod write;

pub use block::EventBlock;

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use futures_util::TryStreamExt as _;
use sqlx::{
    Any, AnyPool, Executor as _, Row as _,
    any::{AnyPoolOptions, AnyRow},
    query::Query,
};

use crate::{
    audit::{self, Checkpoint, Hash, LedgerEntry, StoredEvent, hex},
    session::{Destination, Event, Identity, Outcome, Protocol, Record, Session, Tls},
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported store URL {0:?}: use sqlite://PATH or postgres://USER@HOST/DB")]
    Scheme(String),
    #[error("no store at {0}: has a daemon run with this --state-dir? (or pass --store)")]
    Missing(String),
    #[error("cannot open store {url}: {source}")]
    Open {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("store migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("store query failed: {0}")]
    Query(#[from] sqlx::Error),
    #[error("store read failed: {0}")]
    Read(#[from] rusqlite::Error),
    #[error("store write failed: {0}")]
    Write(String),
    #[error("stored session {0} is corrupt: {1}")]
    Corrupt(String, String),
}

/// One write to the store, queued by the recorder.
#[derive(Debug, Clone)]
pub enum Write {
    /// Insert or update the whole session row (on start and again on end).
    Session(Box<Session>),
    /// Append an event to a session (its place in the session is the order of arrival).
    Event { session: String, event: Record },
}

/// What the recorder writes in one transaction: rows prepared (and chained) once, so a retry
/// after a store failure writes exactly the same thing.
#[derive(Debug, Default)]
pub struct Batch {
    pub node: String,
    /// The latest state of each session touched, in first-touched order.
    pub sessions: Vec<Session>,
    /// Each session's events of this batch, as one block per session.
    pub blocks: Vec<EventBlock>,
    pub ledger: Vec<LedgerEntry>,
    pub head: Option<Checkpoint>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty() && self.blocks.is_empty() && self.ledger.is_empty()
    }

    pub fn rows(&self) -> usize {
        self.sessions.len() + self.blocks.len() + self.ledger.len()
    }
}

/// Filters of `sessions list`.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// `uid:N`, `pid:N`, a cgroup path (`/react-gateway/agent-1`, matches the subtree) or an
    /// executable path.
    pub identity: Option<String>,
    pub target: Option<String>,
    /// RFC 3339 lower bound on `started_at`.
    pub since: Option<String>,
    pub outcome: Option<Outcome>,
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// The database file of a `SQLite` store, for bulk reads ([`bulk`]).
    sqlite_path: Option<PathBuf>,
    /// The recorder's connection to a `SQLite` store ([`write`]).
    writer: Option<write::Writer>,
}

/// SQL text with the backend's placeholders, built alongside its bound values.
struct Sql<'a> {
    text: String,
    binds: Vec<Bind<'a>>,
    backend: Backend,
}

enum Bind<'a> {
    Text(std::borrow::Cow<'a, str>),
    Int(i64),
    /// A NULL of a text column. `PostgreSQL` takes a bound parameter's type as given, so a
    /// NULL bound as text into a `BIGINT` column is an error: nulls carry their column type.
    NullText,
    NullInt,
}

impl<'a> Bind<'a> {
    fn text(text: &'a str) -> Self {
        Self::Text(std::borrow::Cow::Borrowed(text))
    }

    fn opt_text(text: Option<&'a str>) -> Self {
        text.map_or(Self::NullText, Self::text)
    }

    fn opt_int(value: Option<impl Into<i64>>) -> Self {
        value.map_or(Self::NullInt, |v| Self::Int(v.into()))
    }

    fn owned(text: String) -> Self {
        Self::Text(std::borrow::Cow::Owned(text))
    }

    /// The value on its own, for a statement run on another thread ([`bulk`]).
    fn to_static(&self) -> Bind<'static> {
        match self {
            Self::Text(t) => Bind::owned(t.to_string()),
            Self::Int(i) => Bind::Int(*i),
            Self::NullText => Bind::NullText,
            Self::NullInt => Bind::NullInt,
        }
    }
}

/// For the rusqlite paths ([`bulk`], [`write`]).
impl rusqlite::ToSql for Bind<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{Null, ToSqlOutput};
        Ok(match self {
            Self::Text(t) => ToSqlOutput::from(t.as_ref()),
            Self::Int(i) => ToSqlOutput::from(*i),
            Self::NullText | Self::NullInt => ToSqlOutput::from(Null),
        })
    }
}

/// Binds `values` in order to a sqlx query.
fn bind_all<'q>(
    mut q: Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    values: &'q [Bind<'q>],
) -> Query<'q, Any, sqlx::any::AnyArguments<'q>> {
    for b in values {
        q = match b {
            Bind::Text(t) => q.bind(t.as_ref()),
            Bind::Int(i) => q.bind(*i),
            Bind::NullText => q.bind(None::<&str>),
            Bind::NullInt => q.bind(None::<i64>),
        };
    }
    q
}

impl<'a> Sql<'a> {
    fn new(backend: Backend, text: &str) -> Self {
        Self {
            text: text.to_string(),
            binds: Vec::new(),
            backend,
        }
    }

    fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Appends a placeholder for `value`: `$N` for PostgreSQL; a plain `?` for SQLite, whose
    /// numbered parameters cost a linear name lookup per parameter when sqlx binds them (a
    /// 600-parameter insert spent most of its time there).
    fn bind(&mut self, value: Bind<'a>) -> &mut Self {
        self.binds.push(value);
        match self.backend {
            Backend::Sqlite => self.text.push('?'),
            Backend::Postgres => {
                use std::fmt::Write as _;
                let _ = write!(self.text, "${}", self.binds.len());
            }
        }
        self
    }

    fn query(&self) -> Query<'_, Any, sqlx::any::AnyArguments<'_>> {
        bind_all(sqlx::query(&self.text), &self.binds)
    }
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
    /// Opens (creating a `SQLite` file if needed) and migrates the store.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::connect(url, true).await
    }

    /// Opens an existing store (CLI).
    pub async fn open_existing(url: &str) -> Result<Self, StoreError> {
        Self::connect(url, false).await
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    async fn connect(url: &str, create: bool) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let open_err = |source| StoreError::Open {
            url: redact_url(url),
            source,
        };
        let mut sqlite_path = None;
        let (backend, url) = if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            let path = path.split('?').next().unwrap_or(path);
            if !create && !std::path::Path::new(path).exists() {
                return Err(StoreError::Missing(path.to_string()));
            }
            sqlite_path = Some(PathBuf::from(path));
            let mode = if create { "rwc" } else { "rw" };
            (Backend::Sqlite, format!("sqlite://{path}?mode={mode}"))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_string())
        } else {
            return Err(StoreError::Scheme(url.to_string()));
        };
        let options = AnyPoolOptions::new()
            .acquire_timeout(Duration::from_secs(5))
            .max_connections(if backend == Backend::Sqlite { 4 } else { 8 });
        let options = if backend == Backend::Sqlite {
            options.after_connect(|conn, _| {
                Box::pin(async move {
                    // WAL: readers never block the recorder; NORMAL: a committed transaction
                    // survives a crash of the daemon (only power loss may cost the last one).
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    conn.execute("PRAGMA busy_timeout = 5000").await?;
                    Ok(())
                })
            })
        } else {
            options
        };
        let pool = options.connect(&url).await.map_err(open_err)?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self {
            pool,
            backend,
            writer: sqlite_path.as_deref().map(write::Writer::new),
            sqlite_path,
        })
    }

    /// Registers a node's public key (first start), or checks it is the one registered.
    pub async fn register_node(&self, node: &str, public_key: &[u8]) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO nodes (node, public_key, registered_at) VALUES ($1, $2, $3) ON CONFLICT (node) DO NOTHING")
            .bind(node)
            .bind(hex(public_key))
            .bind(crate::session::now())
            .execute(&self.pool)
            .await?;
        let stored: String = sqlx::query_scalar("SELECT public_key FROM nodes WHERE node = $1")
            .bind(node)
            .fetch_one(&self.pool)
            .await?;
        if stored != hex(public_key) {
            return Err(StoreError::Corrupt(
                node.to_string(),
                "the store holds another public key for this node".into(),
            ));
        }
        Ok(())
    }

    /// Where this node's ledger ends: `(seq, hash)` of its last entry, or of the prune
    /// checkpoint, or the genesis.
    pub async fn ledger_tail(&self, node: &str) -> Result<(u64, Hash), StoreError> {
        let last =
            sqlx::query("SELECT seq, hash FROM ledger WHERE node = $1 ORDER BY seq DESC LIMIT 1")
                .bind(node)
                .fetch_optional(&self.pool)
                .await?;
        let row = match last {
            Some(row) => Some(row),
            None => {
                sqlx::query("SELECT seq, hash FROM checkpoints WHERE node = $1 AND kind = 'prune'")
                    .bind(node)
                    .fetch_optional(&self.pool)
                    .await?
            }
        };
        let Some(row) = row else {
            return Ok((0, audit::ledger_genesis(node)));
        };
        let seq: i64 = row.try_get("seq")?;
        let hash: String = row.try_get("hash")?;
        let hash = audit::unhex(&hash)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| StoreError::Corrupt(node.into(), "ledger hash".into()))?;
        Ok((u64::try_from(seq).unwrap_or(0), hash))
    }

    /// Sessions of `node` a previous daemon left open (it crashed or was killed), with the
    /// number and chain head of the events it recorded.
    pub async fn orphans(&self, node: &str) -> Result<Vec<(Session, u64, Hash)>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM sessions WHERE ended_at IS NULL AND (node = $1 OR node IS NULL)",
        )
        .bind(node)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let session = session_from_row(row)?;
            let (count, head) = match self.last_event(&session.id).await? {
                Some((seq, hash)) => {
                    let hash = audit::unhex(&hash)
                        .and_then(|h| h.try_into().ok())
                        .ok_or_else(|| {
                            StoreError::Corrupt(session.id.clone(), "event hash".into())
                        })?;
                    (seq + 1, hash)
                }
                None => (0, audit::session_genesis(&session.id)),
            };
            out.push((session, count, head));
        }
        Ok(out)
    }

    /// The `SQLite` writer, for a caller already on a blocking thread (the recorder prepares
    /// and writes a batch in one go there); `None` for `PostgreSQL`.
    pub(crate) fn writer(&self) -> Option<&write::Writer> {
        self.writer.as_ref()
    }

    /// `seq` and stored hash of a session's last event.
    async fn last_event(&self, id: &str) -> Result<Option<(u64, String)>, StoreError> {
        let block: Option<String> = sqlx::query_scalar(
            "SELECT data FROM event_blocks WHERE session_id = $1 ORDER BY seq DESC LIMIT 1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(block) = block {
            let last = block_events(id, &block)?.pop();
            return Ok(last.map(|e| (e.seq, e.hash)));
        }
        // Recorded before event blocks.
        let row = sqlx::query(
            "SELECT seq, hash FROM events WHERE session_id = $1 ORDER BY seq DESC LIMIT 1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            let seq: i64 = row.try_get("seq")?;
            Ok((u64::try_from(seq).unwrap_or(0), row.try_get("hash")?))
        })
        .transpose()
    }

    /// Writes a prepared batch in one transaction. Idempotent: a retry after a failure whose
    /// commit did land writes nothing twice.
    pub async fn apply(&self, batch: &Arc<Batch>) -> Result<(), StoreError> {
        if let Some(writer) = &self.writer {
            return writer.apply(batch).await;
        }
        let mut tx = self.pool.begin().await?;
        for s in &batch.sessions {
            upsert_session(&mut tx, &batch.node, s).await?;
        }
        // PostgreSQL: multi-row inserts, one statement (round trip) per 100 blocks.
        for chunk in batch.blocks.chunks(100) {
            let mut sql = Sql::new(
                self.backend,
                "INSERT INTO event_blocks (session_id, seq, events, data) VALUES ",
            );
            for (i, b) in chunk.iter().enumerate() {
                sql.push(if i == 0 { "(" } else { ", (" });
                for (j, value) in block_values(b).into_iter().enumerate() {
                    sql.push(if j == 0 { "" } else { ", " }).bind(value);
                }
                sql.push(")");
            }
            sql.push(" ON CONFLICT (session_id, seq) DO NOTHING");
            sql.query().execute(&mut *tx).await?;
        }
        for l in &batch.ledger {
            let values = ledger_values(l);
            bind_all(sqlx::query(INSERT_LEDGER), &values)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(c) = &batch.head {
            upsert_checkpoint(&mut tx, c).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<Session>, StoreError> {
        let mut q = Sql::new(self.backend, "SELECT * FROM sessions WHERE 1=1");
        if let Some(identity) = &filter.identity {
            if let Some(uid) = identity
                .strip_prefix("uid:")
                .and_then(|v| v.parse::<i64>().ok())
            {
                q.push(" AND uid = ").bind(Bind::Int(uid));
            } else if let Some(pid) = identity
                .strip_prefix("pid:")
                .and_then(|v| v.parse::<i64>().ok())
            {
                q.push(" AND pid = ").bind(Bind::Int(pid));
            } else {
                // A cgroup, its subtree, or an executable. Every branch is an index lookup, so
                // the planner can answer the OR from three indexes instead of a table scan.
                let cgroup = identity.trim_end_matches('/');
                q.push(" AND (cgroup = ").bind(Bind::text(identity));
                match self.backend {
                    Backend::Sqlite => {
                        // The subtree as a range: BINARY collation orders bytes, '0' follows '/'.
                        q.push(" OR (cgroup >= ")
                            .bind(Bind::Text(format!("{cgroup}/").into()));
                        q.push(" AND cgroup < ")
                            .bind(Bind::Text(format!("{cgroup}0").into()))
                            .push(")");
                    }
                    Backend::Postgres => {
                        // Locale collations do not order '/' before '0'; LIKE (default escape
                        // `\`) with the pattern characters of the path escaped.
                        let mut pattern = String::with_capacity(cgroup.len() + 2);
                        for c in cgroup.chars() {
                            if matches!(c, '\\' | '%' | '_') {
                                pattern.push('\\');
                            }
                            pattern.push(c);
                        }
                        pattern.push_str("/%");
                        q.push(" OR cgroup LIKE ").bind(Bind::Text(pattern.into()));
                    }
                }
                q.push(" OR exe = ").bind(Bind::text(identity)).push(")");
            }
        }
        if let Some(target) = &filter.target {
            q.push(" AND target = ").bind(Bind::text(target));
        }
        if let Some(since) = &filter.since {
            q.push(" AND started_at >= ").bind(Bind::text(since));
        }
        if let Some(outcome) = filter.outcome {
            q.push(" AND outcome = ").bind(Bind::text(outcome.as_str()));
        }
        // Newest first by start time, the second column of every filter's index, so the
        // planner walks the index backwards and stops at the limit (ordering by id instead
        // sorted every match: 0.7 s for 20,000 matches of one uid).
        q.push(" ORDER BY started_at DESC, id DESC");
        if let Some(limit) = filter.limit {
            q.push(" LIMIT ").bind(Bind::Int(i64::from(limit)));
        }
        // `--json` lists every match: the same bulk read as the audit passes.
        let mut sessions = Vec::new();
        self.each_row(&q, session_from_row, &mut |s| {
            sessions.push(s);
            Ok(())
        })
        .await?;
        sessions.reverse(); // newest `limit`, shown oldest first
        Ok(sessions)
    }

    /// Resolves a session id, or a unique prefix of one (ids are long).
    pub async fn resolve(&self, id: &str) -> Result<Option<String>, StoreError> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM sessions WHERE id >= $1 AND id < $2 ORDER BY id LIMIT 2",
        )
        .bind(id)
        .bind(format!("{id}\u{7f}"))
        .fetch_all(&self.pool)
        .await?;
        Ok(match rows.as_slice() {
            [one] => Some(one.clone()),
            _ => rows.iter().find(|r| *r == id).cloned(),
        })
    }

    pub async fn show(&self, id: &str) -> Result<Option<(Session, Vec<Event>)>, StoreError> {
        let Some(row) = sqlx::query("SELECT * FROM sessions WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let session = session_from_row(&row)?;
        // Recorded before event blocks.
        let rows =
            sqlx::query("SELECT at, kind, data FROM events WHERE session_id = $1 ORDER BY seq")
                .bind(id)
                .fetch_all(&self.pool)
                .await?;
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            let data: String = row.try_get("data")?;
            events.push(Event {
                at: row.try_get("at")?,
                kind: row.try_get("kind")?,
                data: event_data(id, &data)?,
            });
        }
        let blocks: Vec<String> =
            sqlx::query_scalar("SELECT data FROM event_blocks WHERE session_id = $1 ORDER BY seq")
                .bind(id)
                .fetch_all(&self.pool)
                .await?;
        for block in blocks {
            for e in block_events(id, &block)? {
                events.push(Event {
                    data: event_data(id, &e.data)?,
                    at: e.at,
                    kind: e.kind,
                });
            }
        }
        Ok(Some((session, events)))
    }

    /// Streams every session (oldest first) into `each`.
    pub async fn each_session(
        &self,
        since: Option<&str>,
        mut each: impl FnMut(Session) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut q = Sql::new(self.backend, "SELECT * FROM sessions");
        if let Some(since) = since {
            q.push(" WHERE started_at >= ").bind(Bind::text(since));
        }
        q.push(" ORDER BY id");
        self.each_row(&q, session_from_row, &mut each).await
    }

    /// Streams every event, by session and in order, into `each`.
    pub async fn each_event(
        &self,
        since: Option<&str>,
        mut each: impl FnMut(StoredEvent) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let query = |select: &'static str| {
            let mut q = Sql::new(self.backend, select);
            if let Some(since) = since {
                q.push(" WHERE session_id IN (SELECT id FROM sessions WHERE started_at >= ")
                    .bind(Bind::text(since))
                    .push(")");
            }
            q.push(" ORDER BY session_id, seq");
            q
        };
        // Events recorded before event blocks first: a session has its events in one table
        // or the other, and each session's come in order.
        let rows = query("SELECT session_id, seq, at, kind, data, hash FROM events");
        self.each_row(&rows, event_from_row, &mut each).await?;
        let blocks = query("SELECT session_id, seq, data FROM event_blocks");
        self.each_row(&blocks, block_from_row, &mut |events| {
            events.into_iter().try_for_each(&mut each)
        })
        .await
    }

    /// Runs a query and hands each row, mapped, to `each`: through [`bulk`] for `SQLite`,
    /// streamed by sqlx for PostgreSQL.
    async fn each_row<T: Send + 'static>(
        &self,
        q: &Sql<'_>,
        map: fn(&dyn Columns) -> Result<T, StoreError>,
        each: &mut impl FnMut(T) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        if let Some(path) = &self.sqlite_path {
            let mut batches = bulk::stream(path, q, move |row| map(row));
            while let Some(batch) = batches.recv().await {
                for item in batch? {
                    each(item)?;
                }
            }
            return Ok(());
        }
        let mut rows = q.query().fetch(&self.pool);
        while let Some(row) = rows.try_next().await? {
            each(map(&row)?)?;
        }
        Ok(())
    }

    pub async fn count_events(&self) -> Result<u64, StoreError> {
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
            .fetch_one(&self.pool)
            .await?;
        let in_blocks: i64 =
            sqlx::query_scalar("SELECT CAST(COALESCE(SUM(events), 0) AS BIGINT) FROM event_blocks")
                .fetch_one(&self.pool)
                .await?;
        Ok(u64::try_from(rows + in_blocks).unwrap_or(0))
    }

    /// Every node with its registered public key (hex).
    pub async fn nodes(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query("SELECT node, public_key FROM nodes ORDER BY node")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    pub async fn checkpoints(&self, node: &str) -> Result<Vec<Checkpoint>, StoreError> {
        let rows = sqlx::query(
            "SELECT node, kind, seq, hash, at, signature FROM checkpoints WHERE node = $1",
        )
        .bind(node)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let seq: i64 = r.try_get(2)?;
                Ok(Checkpoint {
                    node: r.try_get(0)?,
                    kind: r.try_get(1)?,
                    seq: u64::try_from(seq).unwrap_or(0),
                    hash: r.try_get(3)?,
                    at: r.try_get(4)?,
                    signature: r.try_get(5)?,
                })
            })
            .collect()
    }

    /// Streams a node's ledger in `seq` order into `each`.
    pub async fn each_ledger_entry(
        &self,
        node: &str,
        mut each: impl FnMut(LedgerEntry),
    ) -> Result<(), StoreError> {
        let mut q = Sql::new(
            self.backend,
            "SELECT node, seq, session_id, ended_at, digest, head, events, hash FROM ledger WHERE node = ",
        );
        q.bind(Bind::text(node)).push(" ORDER BY seq");
        self.each_row(&q, ledger_from_row, &mut |entry| {
            each(entry);
            Ok(())
        })
        .await
    }

    /// Retention: removes the sessions of `node`'s ledger that ended before `cutoff`, as a
    /// prefix of the ledger, and leaves a prune checkpoint signed by `signer` so the rest of
    /// the ledger still verifies. Returns how many sessions were removed.
    pub async fn prune(&self, signer: &audit::Signer, cutoff: &str) -> Result<u64, StoreError> {
        let node = signer.node();
        // The prefix ends before the first entry that is still young.
        let first_young: Option<i64> =
            sqlx::query_scalar("SELECT MIN(seq) FROM ledger WHERE node = $1 AND ended_at >= $2")
                .bind(node)
                .bind(cutoff)
                .fetch_one(&self.pool)
                .await?;
        let bound = match first_young {
            Some(seq) => seq - 1,
            None => {
                sqlx::query_scalar::<_, Option<i64>>("SELECT MAX(seq) FROM ledger WHERE node = $1")
                    .bind(node)
                    .fetch_one(&self.pool)
                    .await?
                    .unwrap_or(0)
            }
        };
        let Some(last) = sqlx::query("SELECT seq, hash FROM ledger WHERE node = $1 AND seq = $2")
            .bind(node)
            .bind(bound)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(0);
        };
        let hash: String = last.try_get(1)?;
        let hash: Hash = audit::unhex(&hash)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| StoreError::Corrupt(node.into(), "ledger hash".into()))?;
        let checkpoint = signer.checkpoint(
            "prune",
            u64::try_from(bound).unwrap_or(0),
            &hash,
            &crate::session::now(),
        );
        let mut tx = self.pool.begin().await?;
        let select = "SELECT session_id FROM ledger WHERE node = $1 AND seq <= $2";
        for table in ["events", "event_blocks"] {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE session_id IN ({select})"
            ))
            .bind(node)
            .bind(bound)
            .execute(&mut *tx)
            .await?;
        }
        let removed = sqlx::query(&format!("DELETE FROM sessions WHERE id IN ({select})"))
            .bind(node)
            .bind(bound)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM ledger WHERE node = $1 AND seq <= $2")
            .bind(node)
            .bind(bound)
            .execute(&mut *tx)
            .await?;
        upsert_checkpoint(&mut tx, &checkpoint).await?;
        tx.commit().await?;
        Ok(removed)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

async fn upsert_checkpoint(
    tx: &mut sqlx::Transaction<'_, Any>,
    c: &Checkpoint,
) -> Result<(), StoreError> {
    let values = checkpoint_values(c);
    bind_all(sqlx::query(UPSERT_CHECKPOINT), &values)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The URL without its password, for errors and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

fn event_data(
    id: &str,
    data: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, StoreError> {
    match serde_json::from_str(data) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        _ => Err(StoreError::Corrupt(
            id.to_string(),
            "event data is not a JSON object".into(),
        )),
    }
}

async fn upsert_session(
    tx: &mut sqlx::Transaction<'_, Any>,
    node: &str,
    s: &Session,
) -> Result<(), StoreError> {
    let values = session_values(node, s);
    bind_all(sqlx::query(UPSERT_SESSION), &values)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Inserts or updates a session row. Every column is updated on conflict: the ledger's digest
/// is of the whole final row. (`$N` placeholders: both drivers and `SQLite` bind them in
/// order.)
const UPSERT_SESSION: &str = "INSERT INTO sessions (id, started_at, ended_at, cgroup, pid, uid, gid, exe, dst_ip, dst_port, dst_host, \
     target, protocol, tls, bytes_up, bytes_down, outcome, error, rules, masked, policy_version, comm, node) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23) \
     ON CONFLICT (id) DO UPDATE SET started_at = excluded.started_at, ended_at = excluded.ended_at, \
     cgroup = excluded.cgroup, pid = excluded.pid, uid = excluded.uid, gid = excluded.gid, exe = excluded.exe, \
     dst_ip = excluded.dst_ip, dst_port = excluded.dst_port, dst_host = excluded.dst_host, \
     target = excluded.target, protocol = excluded.protocol, tls = excluded.tls, \
     bytes_up = excluded.bytes_up, bytes_down = excluded.bytes_down, outcome = excluded.outcome, \
     error = excluded.error, rules = excluded.rules, masked = excluded.masked, \
     policy_version = excluded.policy_version, comm = excluded.comm, node = excluded.node";

/// The values of [`UPSERT_SESSION`], in order.
fn session_values<'a>(node: &'a str, s: &'a Session) -> [Bind<'a>; 23] {
    [
        Bind::text(&s.id),
        Bind::text(&s.started_at),
        Bind::opt_text(s.ended_at.as_deref()),
        Bind::opt_text(s.identity.cgroup.as_deref()),
        Bind::opt_int(s.identity.pid),
        Bind::opt_int(s.identity.uid),
        Bind::opt_int(s.identity.gid),
        Bind::opt_text(s.identity.exe.as_deref()),
        Bind::owned(s.destination.ip.to_string()),
        Bind::Int(i64::from(s.destination.port)),
        Bind::opt_text(s.destination.host.as_deref()),
        Bind::opt_text(s.target.as_deref()),
        Bind::text(s.protocol.as_str()),
        s.tls.as_ref().map_or(Bind::NullText, |t| {
            Bind::owned(serde_json::to_string(t).unwrap_or_default())
        }),
        Bind::Int(int(s.bytes_up)),
        Bind::Int(int(s.bytes_down)),
        Bind::opt_text(s.outcome.map(Outcome::as_str)),
        Bind::opt_text(s.error.as_deref()),
        Bind::owned(serde_json::to_string(&s.rules).unwrap_or_else(|_| "[]".into())),
        Bind::owned(serde_json::to_string(&s.masked).unwrap_or_else(|_| "{}".into())),
        Bind::opt_text(s.policy_version.as_deref()),
        Bind::opt_text(s.identity.comm.as_deref()),
        Bind::text(node),
    ]
}

const INSERT_BLOCK: &str = "INSERT INTO event_blocks (session_id, seq, events, data) VALUES ($1, $2, $3, $4) ON CONFLICT (session_id, seq) DO NOTHING";

fn block_values(b: &EventBlock) -> [Bind<'_>; 4] {
    [
        Bind::text(&b.session),
        Bind::Int(int(b.seq)),
        Bind::Int(int(b.events)),
        Bind::text(&b.data),
    ]
}

const INSERT_LEDGER: &str = "INSERT INTO ledger (node, seq, session_id, ended_at, digest, head, events, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (node, seq) DO NOTHING";

fn ledger_values(l: &LedgerEntry) -> [Bind<'_>; 8] {
    [
        Bind::text(&l.node),
        Bind::Int(int(l.seq)),
        Bind::text(&l.session),
        Bind::text(&l.ended_at),
        Bind::owned(hex(&l.digest)),
        Bind::owned(hex(&l.head)),
        Bind::Int(int(l.events)),
        Bind::owned(hex(&l.hash)),
    ]
}

const UPSERT_CHECKPOINT: &str = "INSERT INTO checkpoints (node, kind, seq, hash, at, signature) VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (node, kind) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, at = excluded.at, signature = excluded.signature";

fn checkpoint_values(c: &Checkpoint) -> [Bind<'_>; 6] {
    [
        Bind::text(&c.node),
        Bind::text(&c.kind),
        Bind::Int(int(c.seq)),
        Bind::text(&c.hash),
        Bind::text(&c.at),
        Bind::text(&c.signature),
    ]
}

/// A row of either driver, read by column name.
trait Columns {
    fn text(&self, column: &str) -> Result<Option<String>, StoreError>;
    fn int(&self, column: &str) -> Result<Option<i64>, StoreError>;

    fn need_text(&self, column: &str) -> Result<String, StoreError> {
        self.text(column)?
            .ok_or_else(|| StoreError::Corrupt("row".into(), format!("{column} is NULL")))
    }

    fn need_int(&self, column: &str) -> Result<i64, StoreError> {
        self.int(column)?
            .ok_or_else(|| StoreError::Corrupt("row".into(), format!("{column} is NULL")))
    }
}

impl Columns for AnyRow {
    fn text(&self, column: &str) -> Result<Option<String>, StoreError> {
        Ok(self.try_get(column)?)
    }

    fn int(&self, column: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.try_get(column)?)
    }
}

fn event_from_row(row: &dyn Columns) -> Result<StoredEvent, StoreError> {
    Ok(StoredEvent {
        session: row.need_text("session_id")?,
        seq: u64::try_from(row.need_int("seq")?).unwrap_or(u64::MAX),
        at: row.need_text("at")?,
        kind: row.need_text("kind")?,
        data: row.need_text("data")?,
        hash: row.need_text("hash")?,
    })
}

/// A stored block's events; one that does not read as a block makes the session corrupt.
fn block_events(id: &str, block: &str) -> Result<Vec<StoredEvent>, StoreError> {
    block::events(id, block).map_err(|problem| StoreError::Corrupt(id.to_string(), problem))
}

fn block_from_row(row: &dyn Columns) -> Result<Vec<StoredEvent>, StoreError> {
    let session = row.need_text("session_id")?;
    let seq = u64::try_from(row.need_int("seq")?).unwrap_or(u64::MAX);
    Ok(block::events_or_unreadable(
        &session,
        seq,
        row.need_text("data")?,
    ))
}

fn ledger_from_row(row: &dyn Columns) -> Result<LedgerEntry, StoreError> {
    let node = row.need_text("node")?;
    let bad = |what: &str| StoreError::Corrupt(node.clone(), format!("ledger {what}"));
    // A hash column that is not hex was edited; an all-zero hash fails the chain.
    let hash = |column: &str| -> Result<Hash, StoreError> {
        Ok(audit::unhex(&row.need_text(column)?)
            .and_then(|h| h.try_into().ok())
            .unwrap_or_default())
    };
    Ok(LedgerEntry {
        seq: u64::try_from(row.need_int("seq")?).map_err(|_| bad("seq"))?,
        session: row.need_text("session_id")?,
        ended_at: row.need_text("ended_at")?,
        digest: hash("digest")?,
        head: hash("head")?,
        events: u64::try_from(row.need_int("events")?).unwrap_or(0),
        hash: hash("hash")?,
        node,
    })
}

fn session_from_row(row: &dyn Columns) -> Result<Session, StoreError> {
    let id: String = row.need_text("id")?;
    let corrupt = |what: &str| StoreError::Corrupt(id.clone(), what.to_string());
    let u32_of = |col: &str| -> Result<Option<u32>, StoreError> {
        Ok(row.int(col)?.and_then(|v| u32::try_from(v).ok()))
    };
    let protocol: String = row.need_text("protocol")?;
    let protocol: Protocol = serde_json::from_value(serde_json::Value::String(protocol))
        .map_err(|_| corrupt("protocol"))?;
    let outcome = row.text("outcome")?;
    let tls = row.text("tls")?;
    let tls: Option<Tls> = tls
        .map(|t| serde_json::from_str(&t))
        .transpose()
        .map_err(|_| corrupt("tls"))?;
    let rules = row.need_text("rules")?;
    let masked = row.need_text("masked")?;
    let dst_ip = row.need_text("dst_ip")?;
    let dst_port = row.need_int("dst_port")?;
    let bytes_up = row.need_int("bytes_up")?;
    let bytes_down = row.need_int("bytes_down")?;
    Ok(Session {
        started_at: row.need_text("started_at")?,
        ended_at: row.text("ended_at")?,
        identity: Identity {
            cgroup: row.text("cgroup")?,
            pid: u32_of("pid")?,
            uid: u32_of("uid")?,
            gid: u32_of("gid")?,
            exe: row.text("exe")?,
            comm: row.text("comm")?,
        },
        destination: Destination {
            ip: dst_ip.parse().map_err(|_| corrupt("dst_ip"))?,
            port: u16::try_from(dst_port).map_err(|_| corrupt("dst_port"))?,
            host: row.text("dst_host")?,
        },
        target: row.text("target")?,
        protocol,
        tls,
        bytes_up: u64::try_from(bytes_up).unwrap_or(0),
        bytes_down: u64::try_from(bytes_down).unwrap_or(0),
        outcome: outcome
            .as_deref()
            .map(|o| Outcome::parse(o).ok_or_else(|| corrupt("outcome")))
            .transpose()?,
        rules: serde_json::from_str(&rules).map_err(|_| corrupt("rules"))?,
        masked: serde_json::from_str::<BTreeMap<String, u64>>(&masked)
            .map_err(|_| corrupt("masked"))?,
        error: row.text("error")?,
        policy_version: row.text("policy_version")?,
        id,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://gw:s3cret@127.0.0.1:5432/audit"),
            "postgres://gw:***@127.0.0.1:5432/audit"
        );
        assert_eq!(redact_url("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
    }

    /// A session without identity, TLS or outcome: every NULL carries its column's type
    /// (`PostgreSQL` refuses a NULL bound as text into a `BIGINT` column).
    fn bare_session() -> Session {
        Session::open(
            Identity::default(),
            "127.0.0.1:9".parse().unwrap(),
            &crate::policy::Policy::record_only(),
        )
    }

    #[test]
    fn int_columns_get_int_nulls() {
        let s = bare_session();
        let values = session_values("n", &s);
        for i in [4, 5, 6] {
            assert!(matches!(values[i], Bind::NullInt), "pid/uid/gid at {i}");
        }
        assert!(matches!(values[2], Bind::NullText), "ended_at");
    }

    #[tokio::test]
    async fn a_session_without_identity_is_written_sqlite() {
        let dir = std::env::temp_dir().join(format!("rg-store-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}", dir.join("t.db").display());
        let store = Store::open(&url).await.unwrap();
        let session = bare_session();
        let batch = Arc::new(Batch {
            node: "test-node".into(),
            sessions: vec![session.clone()],
            ..Batch::default()
        });
        store.apply(&batch).await.unwrap();
        let got = store.list(&ListFilter::default()).await.unwrap();
        assert_eq!(got, vec![session]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Events of a store recorded before event blocks (rows of `events`), events in blocks,
    /// and a block edited into something else, side by side.
    #[tokio::test]
    async fn rows_of_older_stores_and_blocks_read_alike() {
        let dir = std::env::temp_dir().join(format!("rg-store-blocks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.join("t.db").display()))
            .await
            .unwrap();
        let (old, new, edited) = (bare_session(), bare_session(), bare_session());
        let at = "2026-11-22T06:52:31.123Z";
        let data = [r#"{"method":"GET"}"#, r#"{"status":200}"#];
        let mut hashes = HashMap::new();
        let mut block = EventBlock::new(new.id.clone(), 0);
        for id in [&old.id, &new.id] {
            let mut hash = audit::session_genesis(id);
            for (seq, data) in (0..).zip(data) {
                hash = audit::chain_event(&hash, seq, at, "http", data);
                hashes.insert((id.clone(), seq), hex(&hash));
                if *id == new.id {
                    block.push(seq, at, "http", &hash, data);
                } else {
                    sqlx::query("INSERT INTO events (session_id, seq, at, kind, data, hash) VALUES ($1, $2, $3, 'http', $4, $5)")
                        .bind(id)
                        .bind(int(seq))
                        .bind(at)
                        .bind(data)
                        .bind(hex(&hash))
                        .execute(&store.pool)
                        .await
                        .unwrap();
                }
            }
        }
        block.finish();
        let batch = Arc::new(Batch {
            node: "test-node".into(),
            sessions: vec![old.clone(), new.clone(), edited.clone()],
            blocks: vec![block],
            ..Batch::default()
        });
        store.apply(&batch).await.unwrap();
        sqlx::query("INSERT INTO event_blocks (session_id, seq, events, data) VALUES ($1, 0, 1, '[{\"seq\":0,')")
            .bind(&edited.id)
            .execute(&store.pool)
            .await
            .unwrap();

        for id in [&old.id, &new.id] {
            let (_, events) = store.show(id).await.unwrap().unwrap();
            let fields: Vec<_> = events.iter().map(|e| e.data.len()).collect();
            assert_eq!(fields, [1, 1], "{id}");
            assert_eq!(events[1].data["status"], 200);
            assert_eq!(events[0].at, at);
            assert_eq!(
                store.last_event(id).await.unwrap(),
                Some((1, hashes[&(id.clone(), 1)].clone()))
            );
        }
        assert!(matches!(
            store.show(&edited.id).await,
            Err(StoreError::Corrupt(..))
        ));
        let mut seen = Vec::new();
        store
            .each_event(None, |e| {
                seen.push(e);
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(seen.len(), 5);
        for e in &seen {
            if e.session == edited.id {
                assert!(
                    e.hash.is_empty() && e.kind.starts_with("unreadable"),
                    "{}",
                    e.kind
                );
            } else {
                assert_eq!(e.hash, hashes[&(e.session.clone(), e.seq)]);
                assert_eq!(e.data, data[usize::try_from(e.seq).unwrap()]);
            }
        }
        assert_eq!(store.count_events().await.unwrap(), 5);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
