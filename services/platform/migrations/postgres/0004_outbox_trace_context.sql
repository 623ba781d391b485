-- The trace context of the call that wrote each event (agora_platform::telemetry),
-- for the consumer's span to link to; empty for untraced calls and for the
-- events written before it was kept. An added column with a default: old
-- replicas keep writing during a rolling update.
ALTER TABLE outbox_events ADD COLUMN trace_context TEXT NOT NULL DEFAULT '';
