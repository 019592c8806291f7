-- apply_task_transitions_v2: apply_task_transitions (20261126000004) plus finishes that include
-- their start. A task that ends within the processor's `running_after_ms` is written once: its
-- `running` (attempt + 1, started_at, source) and its final state in one upsert, with both
-- events, `running` first (p_started_at not null: the time the attempt started, and
-- p_start_event_id the `running` event's id). Everything else is as in the first version.
-- The first version stays for processors of the previous release during a rolling upgrade.
-- Final statuses here must match TaskStatus::TERMINAL_SQL (a unit test compares them).
CREATE FUNCTION apply_task_transitions_v2(
    p_id uuid[], p_start bool[], p_agent text[], p_priority int4[], p_input jsonb[],
    p_submitted_by text[], p_request_id text[], p_traceparent text[], p_deadline timestamptz[],
    p_created_at timestamptz[], p_topic text[], p_part int4[], p_off int8[],
    p_status text[], p_finished bool[], p_output jsonb[], p_error text[], p_error_class text[],
    p_event_id uuid[], p_event_at timestamptz[], p_started_at timestamptz[], p_start_event_id uuid[])
RETURNS TABLE (
    changed boolean, prior_status text,
    task_id uuid, agent text, status text, attempts integer, priority integer, input jsonb,
    output jsonb, error text, error_class text, submitted_by text, request_id text,
    traceparent text, deadline timestamptz, created_at timestamptz, started_at timestamptz,
    finished_at timestamptz, updated_at timestamptz, source_topic text, source_partition integer,
    source_offset bigint)
LANGUAGE plpgsql
-- Every lookup here is by primary key for at most a batch of ids: no sequential scans, and one
-- generic plan per statement and session (see 20261126000006).
SET enable_seqscan = off
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    v_prior_ids uuid[];
    v_prior_status text[];
    v_changed uuid[];
    v_more uuid[];
BEGIN
    SELECT coalesce(array_agg(l.task_id), '{}'), coalesce(array_agg(l.status), '{}')
      INTO v_prior_ids, v_prior_status
      FROM (SELECT t.task_id, t.status FROM tasks t WHERE t.task_id = ANY(p_id)
            ORDER BY t.task_id FOR UPDATE) l;

    WITH up AS (
        INSERT INTO tasks (task_id, agent, status, attempts, priority, input, submitted_by, request_id,
                           traceparent, deadline, created_at, started_at, source_topic, source_partition,
                           source_offset)
        SELECT r.id, r.agent, 'running', 1, r.priority, r.input, r.submitted_by, r.request_id, r.traceparent,
               r.deadline, r.created_at, now(), r.topic, r.part, r.off
          FROM UNNEST(p_id, p_start, p_agent, p_priority, p_input, p_submitted_by, p_request_id, p_traceparent,
                      p_deadline, p_created_at, p_topic, p_part, p_off)
               AS r(id, is_start, agent, priority, input, submitted_by, request_id, traceparent, deadline,
                    created_at, topic, part, off)
         WHERE r.is_start
        ON CONFLICT (task_id) DO UPDATE SET status = 'running', attempts = tasks.attempts + 1, started_at = now(),
            updated_at = now(), source_topic = EXCLUDED.source_topic,
            source_partition = EXCLUDED.source_partition, source_offset = EXCLUDED.source_offset
          WHERE tasks.status NOT IN ('succeeded','failed','dead_lettered','cancelled','expired')
        RETURNING tasks.task_id, tasks.status, tasks.attempts, tasks.request_id),
    -- One event per changed row, from its prior status (a new task's: `queued`).
    ev AS (
        INSERT INTO task_events (event_id, task_id, from_status, to_status, attempt, message, request_id, at)
        SELECT e.event_id, up.task_id, coalesce(p.status, 'queued'), up.status, up.attempts, NULL,
               up.request_id, e.event_at
          FROM up
          JOIN UNNEST(p_id, p_event_id, p_event_at) AS e(id, event_id, event_at) ON e.id = up.task_id
          LEFT JOIN UNNEST(v_prior_ids, v_prior_status) AS p(id, status) ON p.id = up.task_id)
    SELECT coalesce(array_agg(up.task_id), '{}') INTO v_changed FROM up;

    -- Finishes; one that includes its start counts the attempt (EXCLUDED.attempts is 1) and
    -- records where and when it started.
    WITH up AS (
        INSERT INTO tasks (task_id, agent, status, attempts, priority, input, output, error, error_class,
                           submitted_by, request_id, traceparent, deadline, created_at, started_at, finished_at,
                           source_topic, source_partition, source_offset)
        SELECT r.id, r.agent, r.status, CASE WHEN r.started_at IS NULL THEN 0 ELSE 1 END, r.priority, r.input,
               r.output, r.error, r.error_class, r.submitted_by, r.request_id, r.traceparent, r.deadline,
               r.created_at, r.started_at, CASE WHEN r.finished THEN now() END, r.topic, r.part, r.off
          FROM UNNEST(p_id, p_start, p_agent, p_priority, p_input, p_submitted_by, p_request_id, p_traceparent,
                      p_deadline, p_created_at, p_topic, p_part, p_off, p_status, p_finished, p_output, p_error,
                      p_error_class, p_started_at)
               AS r(id, is_start, agent, priority, input, submitted_by, request_id, traceparent, deadline,
                    created_at, topic, part, off, status, finished, output, error, error_class, started_at)
         WHERE NOT r.is_start
        ON CONFLICT (task_id) DO UPDATE SET status = EXCLUDED.status, output = EXCLUDED.output,
            error = EXCLUDED.error, error_class = EXCLUDED.error_class, finished_at = EXCLUDED.finished_at,
            updated_at = now(), attempts = tasks.attempts + EXCLUDED.attempts,
            started_at = coalesce(EXCLUDED.started_at, tasks.started_at),
            source_topic = CASE WHEN EXCLUDED.started_at IS NULL THEN tasks.source_topic
                                ELSE EXCLUDED.source_topic END,
            source_partition = CASE WHEN EXCLUDED.started_at IS NULL THEN tasks.source_partition
                                    ELSE EXCLUDED.source_partition END,
            source_offset = CASE WHEN EXCLUDED.started_at IS NULL THEN tasks.source_offset
                                 ELSE EXCLUDED.source_offset END
          WHERE tasks.status NOT IN ('succeeded','failed','dead_lettered','cancelled','expired')
        RETURNING tasks.task_id, tasks.status, tasks.attempts, tasks.request_id, tasks.error),
    -- Per changed row: its `running` event when the finish includes its start, then its final
    -- event; inserted in that order, so event ids (the order events are read back in) follow it.
    ev AS (
        INSERT INTO task_events (event_id, task_id, from_status, to_status, attempt, message, request_id, at)
        SELECT x.event_id, x.task_id, x.from_status, x.to_status, x.attempt, x.message, x.request_id, x.at
          FROM (SELECT e.start_event_id AS event_id, up.task_id, coalesce(p.status, 'queued') AS from_status,
                       'running'::text AS to_status, up.attempts AS attempt, NULL::text AS message, up.request_id,
                       e.started_at AS at, 0 AS seq
                  FROM up
                  JOIN UNNEST(p_id, p_started_at, p_start_event_id) AS e(id, started_at, start_event_id)
                    ON e.id = up.task_id
                  LEFT JOIN UNNEST(v_prior_ids, v_prior_status) AS p(id, status) ON p.id = up.task_id
                 WHERE e.started_at IS NOT NULL
                UNION ALL
                SELECT e.event_id, up.task_id, CASE WHEN e.started_at IS NULL THEN p.status ELSE 'running' END,
                       up.status, up.attempts, up.error, up.request_id, e.event_at, 1
                  FROM up
                  JOIN UNNEST(p_id, p_event_id, p_event_at, p_started_at) AS e(id, event_id, event_at, started_at)
                    ON e.id = up.task_id
                  LEFT JOIN UNNEST(v_prior_ids, v_prior_status) AS p(id, status) ON p.id = up.task_id) x
         ORDER BY x.task_id, x.seq)
    SELECT coalesce(array_agg(up.task_id), '{}') INTO v_more FROM up;
    v_changed := v_changed || v_more;

    RETURN QUERY
    SELECT t.task_id = ANY(v_changed), p.status,
           t.task_id, t.agent, t.status, t.attempts, t.priority, t.input, t.output, t.error, t.error_class,
           t.submitted_by, t.request_id, t.traceparent, t.deadline, t.created_at, t.started_at, t.finished_at,
           t.updated_at, t.source_topic, t.source_partition, t.source_offset
      FROM tasks t
      LEFT JOIN UNNEST(v_prior_ids, v_prior_status) AS p(id, status) ON p.id = t.task_id
     WHERE t.task_id = ANY(p_id);
END;
$$;
