-- The command name of a process whose connect the kernel refused (its exe is often unreadable
-- by the time the daemon looks).
ALTER TABLE sessions ADD COLUMN comm TEXT;
