-- W3C traceparent of the span that submitted the job, so leasing and running continue it.
ALTER TABLE jobs ADD COLUMN trace_parent text;
