-- One definition for both backends (SQLite and PostgreSQL): portable types only (TEXT, BIGINT).
-- Sessions and their events. Timestamps are RFC 3339 UTC strings with milliseconds, so they
-- sort lexically; ids are ULIDs, which sort by creation time.
CREATE TABLE sessions (
    id             TEXT PRIMARY KEY NOT NULL,
    started_at     TEXT NOT NULL,
    ended_at       TEXT,
    cgroup         TEXT,
    pid            BIGINT,
    uid            BIGINT,
    gid            BIGINT,
    exe            TEXT,
    dst_ip         TEXT NOT NULL,
    dst_port       BIGINT NOT NULL,
    dst_host       TEXT,
    target         TEXT,
    protocol       TEXT NOT NULL,
    tls            TEXT,
    bytes_up       BIGINT NOT NULL DEFAULT 0,
    bytes_down     BIGINT NOT NULL DEFAULT 0,
    outcome        TEXT,
    error          TEXT,
    rules          TEXT NOT NULL DEFAULT '[]',
    masked         TEXT NOT NULL DEFAULT '{}',
    policy_version TEXT
);

CREATE INDEX sessions_started_at ON sessions (started_at);
CREATE INDEX sessions_outcome ON sessions (outcome, started_at);
CREATE INDEX sessions_target ON sessions (target, started_at);
CREATE INDEX sessions_cgroup ON sessions (cgroup, started_at);

CREATE TABLE events (
    session_id TEXT NOT NULL,
    seq        BIGINT NOT NULL,
    at         TEXT NOT NULL,
    kind       TEXT NOT NULL,
    data       TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
);
