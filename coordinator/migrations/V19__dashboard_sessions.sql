-- Dashboard sessions: a browser that logged in with a token holds a random secret in an
-- HttpOnly cookie; only its SHA-256 is stored. Revoking the token ends its sessions.
CREATE TABLE dashboard_sessions (
    secret_hash bytea PRIMARY KEY,
    token_id    uuid NOT NULL REFERENCES api_tokens (id) ON DELETE CASCADE,
    -- Sent back in the X-CSRF-Token header of mutating requests.
    csrf        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX dashboard_sessions_expires ON dashboard_sessions (expires_at);

