//! The session store: sqlx over `SQLite` (WAL mode) under the state dir by default.
//! Migrations are managed by sqlx (`migrations/`). The `PostgreSQL` backend for fleets arrives
//! with the recording issue; the URL scheme is already part of the contract (`--store`).

use std::{collections::BTreeMap, str::FromStr as _, time::Duration};

use sqlx::{
    QueryBuilder, Row as _, Sqlite, SqlitePool,
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
    },
};

use crate::session::{Destination, Event, Identity, Outcome, Protocol, Session, Tls};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "unsupported store URL {0:?}: use sqlite://PATH (postgres:// is not available in this build yet)"
    )]
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
    #[error("stored session {0} is corrupt: {1}")]
    Corrupt(String, String),
}

/// One write to the store, queued by the recorder.
#[derive(Debug, Clone)]
pub enum Write {
    /// Insert or update the whole session row (on start and again on end).
    Session(Box<Session>),
    /// Append an event to a session.
    Event {
        session: String,
        seq: u32,
        event: Event,
    },
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

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating if needed) and migrates the store.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::connect(url, true).await
    }

    /// Opens an existing store for reading (CLI).
    pub async fn open_existing(url: &str) -> Result<Self, StoreError> {
        Self::connect(url, false).await
    }

    async fn connect(url: &str, create: bool) -> Result<Self, StoreError> {
        let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        else {
            return Err(StoreError::Scheme(url.to_string()));
        };
        if !create && !std::path::Path::new(path).exists() {
            return Err(StoreError::Missing(path.to_string()));
        }
        let open_err = |source| StoreError::Open {
            url: url.to_string(),
            source,
        };
        let options = SqliteConnectOptions::from_str(url)
            .map_err(open_err)?
            .create_if_missing(create)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(open_err)?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self { pool })
    }

    /// Applies a batch of writes in one transaction.
    pub async fn apply(&self, batch: &[Write]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for write in batch {
            match write {
                Write::Session(s) => upsert_session(&mut tx, s).await?,
                Write::Event {
                    session,
                    seq,
                    event,
                } => {
                    sqlx::query("INSERT OR REPLACE INTO events (session_id, seq, at, kind, data) VALUES (?, ?, ?, ?, ?)")
                        .bind(session)
                        .bind(i64::from(*seq))
                        .bind(&event.at)
                        .bind(&event.kind)
                        .bind(serde_json::Value::Object(event.data.clone()).to_string())
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<Session>, StoreError> {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT * FROM sessions WHERE 1=1");
        if let Some(identity) = &filter.identity {
            if let Some(uid) = identity
                .strip_prefix("uid:")
                .and_then(|v| v.parse::<i64>().ok())
            {
                q.push(" AND uid = ").push_bind(uid);
            } else if let Some(pid) = identity
                .strip_prefix("pid:")
                .and_then(|v| v.parse::<i64>().ok())
            {
                q.push(" AND pid = ").push_bind(pid);
            } else {
                let subtree = format!("{}/%", identity.trim_end_matches('/'));
                q.push(" AND (cgroup = ").push_bind(identity.clone());
                q.push(" OR cgroup LIKE ").push_bind(subtree);
                q.push(" OR exe = ").push_bind(identity.clone()).push(")");
            }
        }
        if let Some(target) = &filter.target {
            q.push(" AND target = ").push_bind(target.clone());
        }
        if let Some(since) = &filter.since {
            q.push(" AND started_at >= ").push_bind(since.clone());
        }
        if let Some(outcome) = filter.outcome {
            q.push(" AND outcome = ").push_bind(outcome.as_str());
        }
        q.push(" ORDER BY id DESC");
        if let Some(limit) = filter.limit {
            q.push(" LIMIT ").push_bind(i64::from(limit));
        }
        let rows = q.build().fetch_all(&self.pool).await?;
        let mut sessions = rows
            .iter()
            .map(session_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        sessions.reverse(); // newest `limit`, shown oldest first
        Ok(sessions)
    }

    pub async fn show(&self, id: &str) -> Result<Option<(Session, Vec<Event>)>, StoreError> {
        let Some(row) = sqlx::query("SELECT * FROM sessions WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let session = session_from_row(&row)?;
        let rows =
            sqlx::query("SELECT at, kind, data FROM events WHERE session_id = ? ORDER BY seq")
                .bind(id)
                .fetch_all(&self.pool)
                .await?;
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            let data: String = row.try_get("data")?;
            let data = match serde_json::from_str(&data) {
                Ok(serde_json::Value::Object(map)) => map,
                _ => {
                    return Err(StoreError::Corrupt(
                        id.to_string(),
                        "event data is not a JSON object".into(),
                    ));
                }
            };
            events.push(Event {
                at: row.try_get("at")?,
                kind: row.try_get("kind")?,
                data,
            });
        }
        Ok(Some((session, events)))
    }

    /// Closes sessions a previous daemon left open (it crashed or was killed): they end as
    /// `error`, so no session stays "running" forever. Returns how many were closed.
    pub async fn close_orphans(&self, ended_at: &str) -> Result<u64, StoreError> {
        let result = sqlx::query("UPDATE sessions SET ended_at = ?, outcome = 'error', error = 'the daemon stopped before the session ended (crash or kill); bytes are as last recorded' WHERE ended_at IS NULL")
            .bind(ended_at)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

async fn upsert_session(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    s: &Session,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO sessions (id, started_at, ended_at, cgroup, pid, uid, gid, exe, dst_ip, dst_port, dst_host, \
         target, protocol, tls, bytes_up, bytes_down, outcome, error, rules, masked, policy_version, comm) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT(id) DO UPDATE SET ended_at = excluded.ended_at, exe = excluded.exe, \
         dst_host = excluded.dst_host, target = excluded.target, protocol = excluded.protocol, \
         tls = excluded.tls, bytes_up = excluded.bytes_up, bytes_down = excluded.bytes_down, \
         outcome = excluded.outcome, error = excluded.error, rules = excluded.rules, masked = excluded.masked",
    )
    .bind(&s.id)
    .bind(&s.started_at)
    .bind(&s.ended_at)
    .bind(&s.identity.cgroup)
    .bind(s.identity.pid.map(i64::from))
    .bind(s.identity.uid.map(i64::from))
    .bind(s.identity.gid.map(i64::from))
    .bind(&s.identity.exe)
    .bind(s.destination.ip.to_string())
    .bind(i64::from(s.destination.port))
    .bind(&s.destination.host)
    .bind(&s.target)
    .bind(s.protocol.as_str())
    .bind(s.tls.as_ref().map(|t| serde_json::to_string(t).unwrap_or_default()))
    .bind(i64::try_from(s.bytes_up).unwrap_or(i64::MAX))
    .bind(i64::try_from(s.bytes_down).unwrap_or(i64::MAX))
    .bind(s.outcome.map(Outcome::as_str))
    .bind(&s.error)
    .bind(serde_json::to_string(&s.rules).unwrap_or_else(|_| "[]".into()))
    .bind(serde_json::to_string(&s.masked).unwrap_or_else(|_| "{}".into()))
    .bind(&s.policy_version)
    .bind(&s.identity.comm)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn session_from_row(row: &SqliteRow) -> Result<Session, StoreError> {
    let id: String = row.try_get("id")?;
    let corrupt = |what: &str| StoreError::Corrupt(id.clone(), what.to_string());
    let u32_of = |col: &str| -> Result<Option<u32>, StoreError> {
        let v: Option<i64> = row.try_get(col)?;
        Ok(v.and_then(|v| u32::try_from(v).ok()))
    };
    let protocol: String = row.try_get("protocol")?;
    let protocol: Protocol = serde_json::from_value(serde_json::Value::String(protocol))
        .map_err(|_| corrupt("protocol"))?;
    let outcome: Option<String> = row.try_get("outcome")?;
    let tls: Option<String> = row.try_get("tls")?;
    let tls: Option<Tls> = tls
        .map(|t| serde_json::from_str(&t))
        .transpose()
        .map_err(|_| corrupt("tls"))?;
    let rules: String = row.try_get("rules")?;
    let masked: String = row.try_get("masked")?;
    let dst_ip: String = row.try_get("dst_ip")?;
    let dst_port: i64 = row.try_get("dst_port")?;
    let bytes_up: i64 = row.try_get("bytes_up")?;
    let bytes_down: i64 = row.try_get("bytes_down")?;
    Ok(Session {
        started_at: row.try_get("started_at")?,
        ended_at: row.try_get("ended_at")?,
        identity: Identity {
            cgroup: row.try_get("cgroup")?,
            pid: u32_of("pid")?,
            uid: u32_of("uid")?,
            gid: u32_of("gid")?,
            exe: row.try_get("exe")?,
            comm: row.try_get("comm")?,
        },
        destination: Destination {
            ip: dst_ip.parse().map_err(|_| corrupt("dst_ip"))?,
            port: u16::try_from(dst_port).map_err(|_| corrupt("dst_port"))?,
            host: row.try_get("dst_host")?,
        },
        target: row.try_get("target")?,
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
        error: row.try_get("error")?,
        policy_version: row.try_get("policy_version")?,
        id,
    })
}
