-- When a schedule last missed a tick (its catch-up policy dropped ticks after downtime, or
-- its overlap policy skipped one) and why: the `schedule_missed` alert rule reads these.
ALTER TABLE schedules
    ADD COLUMN last_missed_at     timestamptz,
    ADD COLUMN last_missed_reason text NOT NULL DEFAULT '';
