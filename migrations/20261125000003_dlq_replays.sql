-- Dead letters already re-published by `devcycle dlq replay`, so a replay never repeats one.
CREATE TABLE dlq_replays (
    dlq_topic     text NOT NULL,
    dlq_partition integer NOT NULL,
    dlq_offset    bigint NOT NULL,
    source_topic  text NOT NULL,
    task_id       uuid,
    replayed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dlq_topic, dlq_partition, dlq_offset)
);
CREATE INDEX dlq_replays_task_id_idx ON dlq_replays (task_id);
