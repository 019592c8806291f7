-- A user erased on request (`devcycle users erase`): the row stays as a tombstone without
-- personal data (email replaced, no password, no second factor, disabled), so that the erasure
-- can be run again for records written after it (tasks still on their way through Kafka).
ALTER TABLE users ADD COLUMN erased_at timestamptz;

-- task_events stays append-only, except for the events of an erased user's tasks: the
-- erasure's transaction (db::users::privacy::erase) sets `devcycle.erasure` to 'on' for itself
-- (set_config(..., true)), and only then may it delete. Updates stay refused.
CREATE OR REPLACE FUNCTION task_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('devcycle.erasure', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'task_events is append-only';
END;
$$;
