-- DevCycle's durable record: agents, tasks and the append-only task event log.

CREATE TABLE agents (
    name        text PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,62}$'),
    executor    text NOT NULL CHECK (executor IN ('builtin', 'http', 'command')),
    config      jsonb NOT NULL DEFAULT '{}'::jsonb,
    description text NOT NULL DEFAULT '',
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    search      tsvector GENERATED ALWAYS AS (
        to_tsvector('simple', name || ' ' || description || ' ' || executor)
    ) STORED
);
CREATE INDEX agents_search_idx ON agents USING gin (search);
CREATE INDEX agents_created_at_idx ON agents (created_at);

CREATE TABLE tasks (
    task_id          uuid PRIMARY KEY,
    agent            text NOT NULL REFERENCES agents (name) ON UPDATE CASCADE,
    status           text NOT NULL CHECK (status IN ('queued', 'running', 'retrying', 'succeeded',
                                                     'failed', 'dead_lettered', 'cancelled', 'expired')),
    attempts         integer NOT NULL DEFAULT 0,
    priority         integer NOT NULL DEFAULT 0,
    input            jsonb NOT NULL,
    output           jsonb,
    error            text,
    error_class      text,
    submitted_by     text,
    request_id       text,
    traceparent      text,
    deadline         timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    source_topic     text,
    source_partition integer,
    source_offset    bigint
);
CREATE INDEX tasks_agent_idx ON tasks (agent);
CREATE INDEX tasks_submitted_by_idx ON tasks (submitted_by);
CREATE INDEX tasks_created_at_idx ON tasks (created_at);
CREATE INDEX tasks_finished_at_idx ON tasks (finished_at);
CREATE INDEX tasks_status_idx ON tasks (status);

CREATE TABLE task_events (
    id          bigserial PRIMARY KEY,
    event_id    uuid NOT NULL UNIQUE,
    task_id     uuid NOT NULL REFERENCES tasks (task_id),
    from_status text,
    to_status   text NOT NULL,
    attempt     integer NOT NULL,
    message     text,
    request_id  text,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX task_events_task_id_idx ON task_events (task_id);
CREATE INDEX task_events_at_idx ON task_events (at);

-- task_events is append-only.
CREATE FUNCTION task_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'task_events is append-only';
END;
$$;
CREATE TRIGGER task_events_no_update BEFORE UPDATE OR DELETE ON task_events
    FOR EACH ROW EXECUTE FUNCTION task_events_append_only();

-- Built-in agents, so a fresh install can run tasks at once.
INSERT INTO agents (name, executor, config, description) VALUES
    ('echo',  'builtin', '{"mode": "echo"}', 'Returns its input as its output.'),
    ('sleep', 'builtin', '{"mode": "sleep", "ms": 100}', 'Sleeps for input.ms (default 100) milliseconds, then returns its input.'),
    ('fail',  'builtin', '{"mode": "fail", "error": "the fail agent always fails"}', 'Always fails with input.error or its configured error.');
