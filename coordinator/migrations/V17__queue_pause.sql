-- Per-queue flow control set by operators. A queue with no row is active.
CREATE TABLE queue_settings (
    queue      text PRIMARY KEY,
    paused     boolean NOT NULL DEFAULT false,
    paused_at  timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);
