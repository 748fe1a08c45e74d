-- The trace context of the code that enqueued a run (W3C trace context headers, as JSON), so
-- that its attempts continue that trace. NULL when the enqueuer was not tracing.
ALTER TABLE {schema}.runs ADD COLUMN trace_context jsonb;
