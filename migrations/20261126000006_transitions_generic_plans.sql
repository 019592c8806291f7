-- plpgsql re-planned two of apply_task_transitions's selects on about every other call
-- (custom plans for their array parameters; ~10% of the function's Postgres time in
-- load-tests/RESULTS.md). Every lookup in it is by primary key (see enable_seqscan there), so
-- one generic plan per statement and session serves every batch.
ALTER FUNCTION apply_task_transitions SET plan_cache_mode = force_generic_plan;
