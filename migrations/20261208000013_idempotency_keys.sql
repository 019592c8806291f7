-- Idempotency-Key records of the API's writes (POST /v1/tasks, POST /v1/topics/{topic}/records),
-- kept here rather than in Redis so that a Redis restart or eviction forgets none (db::idempotency).
-- id is '<scope>:<caller>:<key>'. A row without status is a reservation: its request is running,
-- until expires_at (the request's timeout and a margin). A row with status holds the answer to
-- replay, until expires_at (gateway.idempotency_ttl_secs). A row past expires_at counts as absent:
-- the next request with its key takes it over, and `devcycle retention apply` deletes it.
CREATE TABLE idempotency_keys (
    id text PRIMARY KEY,
    hash text NOT NULL,
    status smallint,
    body text,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX idempotency_keys_expires_at_idx ON idempotency_keys (expires_at);
