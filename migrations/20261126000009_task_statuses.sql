-- task_statuses: the processor's batched status read (before running a task), by primary key
-- whatever plan the session has cached. As a plain prepared statement, a connection that
-- settled on its generic plan while `tasks` held a few pages kept a sequential scan, and read
-- every row for each batch as the table grew (seen in the benchmarks: ~1,000 scans of a
-- growing table within seconds). Same settings as the transition functions (20261126000006).
CREATE FUNCTION task_statuses(p_ids uuid[])
RETURNS TABLE (task_id uuid, status text)
LANGUAGE plpgsql STABLE
SET enable_seqscan = off
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY SELECT t.task_id, t.status FROM tasks t WHERE t.task_id = ANY(p_ids);
END;
$$;
