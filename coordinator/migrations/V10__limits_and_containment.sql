-- Per-job resource limits (drover_core::ResourceLimits as JSON; {} = none), and how each
-- worker contains its attempts (Hello.containment).
ALTER TABLE jobs ADD COLUMN limits jsonb NOT NULL DEFAULT '{}';
ALTER TABLE workers ADD COLUMN containment text NOT NULL DEFAULT '';
