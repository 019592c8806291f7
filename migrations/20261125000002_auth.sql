-- Authentication: users, password history, sessions (refresh-token families), service tokens
-- and the append-only audit log.

CREATE TABLE users (
    id                  uuid PRIMARY KEY,
    email               text NOT NULL,
    password_hash       text NOT NULL,
    role                text NOT NULL CHECK (role IN ('admin', 'developer', 'viewer', 'service')),
    totp_secret         text,
    totp_enabled        boolean NOT NULL DEFAULT false,
    disabled            boolean NOT NULL DEFAULT false,
    password_changed_at timestamptz NOT NULL DEFAULT now(),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
-- Emails are compared case-insensitively.
CREATE UNIQUE INDEX users_email_idx ON users (lower(email));

CREATE TABLE password_history (
    id            bigserial PRIMARY KEY,
    user_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX password_history_user_idx ON password_history (user_id, created_at DESC);

-- One row per login; `family` groups the rotated refresh tokens of one login.
CREATE TABLE sessions (
    id                 uuid PRIMARY KEY,
    user_id            uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family             uuid NOT NULL,
    refresh_token_hash text NOT NULL UNIQUE,
    access_jti         text,
    access_exp         timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    last_used_at       timestamptz NOT NULL DEFAULT now(),
    expires_at         timestamptz NOT NULL,
    rotated_at         timestamptz,
    revoked_at         timestamptz,
    revoked_reason     text
);
CREATE INDEX sessions_user_idx ON sessions (user_id);
CREATE INDEX sessions_family_idx ON sessions (family);
CREATE INDEX sessions_access_jti_idx ON sessions (access_jti);

CREATE TABLE service_tokens (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    token_hash  text NOT NULL UNIQUE,
    permissions text[] NOT NULL,
    created_by  uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    last_used_at timestamptz,
    revoked_at  timestamptz
);

CREATE TABLE audit_log (
    id         bigserial PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    actor      text,
    action     text NOT NULL,
    outcome    text NOT NULL,
    target     text,
    ip         text,
    request_id text,
    details    jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_at_idx ON audit_log (at);
CREATE INDEX audit_log_actor_idx ON audit_log (actor);
CREATE INDEX audit_log_action_idx ON audit_log (action);

-- audit_log is append-only.
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
