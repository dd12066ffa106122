-- Tamper evidence (gateway-user/src/audit.rs). Portable to SQLite and PostgreSQL.
-- Each event's hash chains to the previous event of its session.
ALTER TABLE events ADD COLUMN hash TEXT NOT NULL DEFAULT '';
-- The node (daemon) that recorded a session; sessions of a fleet share one PostgreSQL store.
ALTER TABLE sessions ADD COLUMN node TEXT;
CREATE INDEX sessions_node_open ON sessions (node, ended_at);
CREATE INDEX sessions_uid ON sessions (uid, started_at);

-- Each node's Ed25519 public key (hex), registered on its first start.
CREATE TABLE nodes (
    node          TEXT PRIMARY KEY NOT NULL,
    public_key    TEXT NOT NULL,
    registered_at TEXT NOT NULL
);

-- Each closed session, chained into its node's ledger.
CREATE TABLE ledger (
    node       TEXT NOT NULL,
    seq        BIGINT NOT NULL,
    session_id TEXT NOT NULL,
    ended_at   TEXT NOT NULL,
    digest     TEXT NOT NULL,
    head       TEXT NOT NULL,
    events     BIGINT NOT NULL,
    hash       TEXT NOT NULL,
    PRIMARY KEY (node, seq)
);
CREATE INDEX ledger_session ON ledger (session_id);
CREATE INDEX ledger_ended_at ON ledger (node, ended_at);

-- Signed statements about a ledger: the latest head, and where retention pruned it.
CREATE TABLE checkpoints (
    node      TEXT NOT NULL,
    kind      TEXT NOT NULL,
    seq       BIGINT NOT NULL,
    hash      TEXT NOT NULL,
    at        TEXT NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (node, kind)
);
