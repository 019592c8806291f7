-- The write path pays for every index on every task transition. No query reads tasks by status,
-- creation or finish time or submitter, nor task_events by time (tasks are read by id, events
-- by task), so those indexes only cost: each task insert updated six indexes and each status
-- change, being a non-HOT update, all six again. tasks_agent_idx stays (agent renames cascade
-- and agent deletion checks use it). Free space on each page lets the finishing update stay
-- on the row's page (a HOT update: no index touched at all).
DROP INDEX tasks_status_idx;
DROP INDEX tasks_finished_at_idx;
DROP INDEX tasks_created_at_idx;
DROP INDEX tasks_submitted_by_idx;
DROP INDEX task_events_at_idx;
ALTER TABLE tasks SET (fillfactor = 80);
