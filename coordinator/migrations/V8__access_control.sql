-- Access control: API tokens (only their SHA-256 is stored) and the audit log.
CREATE TABLE api_tokens (
    id             uuid PRIMARY KEY,
    name           text NOT NULL,
    -- viewer, operator, admin or worker
    role           text NOT NULL,
    -- Operator tokens: the queues they may act on; empty means every queue.
    queues         text[] NOT NULL DEFAULT '{}',
    -- Worker tokens: the worker id, or a pattern with '*', they may connect as.
    worker_pattern text NOT NULL DEFAULT '',
    -- SHA-256 of the secret; the secret itself is shown once and never stored.
    token_hash     bytea NOT NULL UNIQUE,
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz,
    last_used_at   timestamptz,
    revoked_at     timestamptz
);
-- A name identifies one live token in the audit log.
CREATE UNIQUE INDEX api_tokens_live_name ON api_tokens (name) WHERE revoked_at IS NULL;

CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    -- Token name, or '' when access control is off.
    actor       text NOT NULL,
    role        text NOT NULL,
    -- gRPC method (e.g. /drover.v1.JobService/CancelJob) or HTTP route.
    method      text NOT NULL,
    -- The job or token acted on, when there is one.
    target      text NOT NULL DEFAULT '',
    peer        text NOT NULL DEFAULT '',
    -- "ok", or the status code and message of the refusal.
    outcome     text NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at);
