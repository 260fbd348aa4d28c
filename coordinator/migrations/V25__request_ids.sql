-- Client-chosen request ids of mutating calls (RetryJob, CancelJob, ...): a call repeated
-- after a lost response returns the first call's result instead of acting twice.
-- A row is claimed (response NULL) before the call acts and filled in when it succeeds;
-- a failed call deletes its claim. Rows older than request_id_retention are deleted by
-- the retention pass.
CREATE TABLE request_ids (
    caller      text NOT NULL,
    method      text NOT NULL,
    request_id  text NOT NULL,
    -- SHA-256 (hex) of the request without its request_id.
    fingerprint text NOT NULL,
    -- The encoded response message; NULL while the first call is still running.
    response    bytea,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (caller, method, request_id)
);
CREATE INDEX request_ids_created_at ON request_ids (created_at);
