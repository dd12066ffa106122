-- `sessions list --identity /path` matches a cgroup, its subtree or an executable: with this
-- index every branch of that filter is an index lookup.
CREATE INDEX sessions_exe ON sessions (exe, started_at);
