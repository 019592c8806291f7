-- apply_task_transitions (the first version, kept for processors of the previous release during
-- a rolling upgrade) now runs apply_task_transitions_v2 with no finish that includes its start
-- (empty arrays: UNNEST pads them with NULLs), so both signatures share one implementation.
CREATE OR REPLACE FUNCTION apply_task_transitions(
    p_id uuid[], p_start bool[], p_agent text[], p_priority int4[], p_input jsonb[],
    p_submitted_by text[], p_request_id text[], p_traceparent text[], p_deadline timestamptz[],
    p_created_at timestamptz[], p_topic text[], p_part int4[], p_off int8[],
    p_status text[], p_finished bool[], p_output jsonb[], p_error text[], p_error_class text[],
    p_event_id uuid[], p_event_at timestamptz[])
RETURNS TABLE (
    changed boolean, prior_status text,
    task_id uuid, agent text, status text, attempts integer, priority integer, input jsonb,
    output jsonb, error text, error_class text, submitted_by text, request_id text,
    traceparent text, deadline timestamptz, created_at timestamptz, started_at timestamptz,
    finished_at timestamptz, updated_at timestamptz, source_topic text, source_partition integer,
    source_offset bigint)
LANGUAGE sql
AS $$
    SELECT * FROM apply_task_transitions_v2(p_id, p_start, p_agent, p_priority, p_input, p_submitted_by,
        p_request_id, p_traceparent, p_deadline, p_created_at, p_topic, p_part, p_off, p_status, p_finished,
        p_output, p_error, p_error_class, p_event_id, p_event_at, '{}'::timestamptz[], '{}'::uuid[]);
$$;
