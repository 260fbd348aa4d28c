-- Alerts and notification delivery (docs/notifications.md).

-- Folding windows of event rules: events of one rule with one key within the window
-- become one message when the window closes.
CREATE TABLE alert_windows (
    rule       text NOT NULL,
    key        text NOT NULL,
    opened_at  timestamptz NOT NULL DEFAULT now(),
    closes_at  timestamptz NOT NULL,
    count      bigint NOT NULL DEFAULT 0,
    sample     text NOT NULL DEFAULT '',
    examples   jsonb NOT NULL DEFAULT '[]',
    PRIMARY KEY (rule, key)
);
CREATE INDEX alert_windows_closes_idx ON alert_windows (closes_at);

-- Conditions of condition rules that are firing now; a row gone = resolved message sent.
CREATE TABLE alert_conditions (
    rule     text NOT NULL,
    key      text NOT NULL,
    detail   text NOT NULL,
    since    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rule, key)
);

CREATE TABLE notifications (
    id              bigserial PRIMARY KEY,
    idempotency_key uuid NOT NULL UNIQUE,
    channel         text NOT NULL,
    rule            text NOT NULL DEFAULT '',
    subject         text NOT NULL,
    body            text NOT NULL,
    state           text NOT NULL DEFAULT 'pending'
                      CHECK (state IN ('pending', 'delivered', 'dead')),
    tries           integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);
CREATE INDEX notifications_due_idx ON notifications (next_attempt_at) WHERE state = 'pending';
CREATE INDEX notifications_created_idx ON notifications (created_at DESC, id DESC);

CREATE TABLE notification_attempts (
    notification_id bigint NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    try             integer NOT NULL,
    at              timestamptz NOT NULL DEFAULT now(),
    coordinator_id  text NOT NULL,
    outcome         text NOT NULL CHECK (outcome IN ('delivered', 'transient', 'permanent')),
    detail          text NOT NULL DEFAULT '',
    PRIMARY KEY (notification_id, try)
);

-- Outbox rows the alert evaluator has read get delivered_at set (processed); outbox rows
-- and finished notifications are deleted after alerts.retention_hours.
