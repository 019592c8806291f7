-- The ingress writes the access-token deny list to Redis again, from Postgres, at start and
-- whenever Redis restarted or evicted keys (ingress::deny_sync): every revoked session whose
-- access token has not expired. Revoked sessions are few next to all sessions kept, and the
-- query runs every time Redis loses keys, so it reads a partial index of them only.
CREATE INDEX IF NOT EXISTS sessions_revoked_access_exp_idx ON sessions (access_exp) WHERE revoked_at IS NOT NULL;
