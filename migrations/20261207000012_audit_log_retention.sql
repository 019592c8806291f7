-- The spec keeps audit logs for one year. audit_log stays append-only for everything younger:
-- UPDATE is always refused, and DELETE only of rows older than 365 days, which
-- `devcycle retention apply` removes (db::retention). No setting, bug or hand-written statement
-- can shorten the year: the floor is here, not in the configuration.
CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND OLD.at < now() - interval '365 days' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only (rows younger than 365 days are never deleted)';
END;
$$;
-- Finding expired sessions without reading every row.
CREATE INDEX IF NOT EXISTS sessions_expires_at_idx ON sessions (expires_at);
