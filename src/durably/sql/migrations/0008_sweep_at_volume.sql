-- The sweeper and event waits at volume: each reads what is due, not the tables' history.

-- A key's events from a point in time on: a run receives only events pushed since it was
-- created, so its waits (and the sweeper's wake-up backstop) start reading there instead of at
-- the key's first event; a key reused for years would otherwise be read whole on every check.
-- With `id`, whether such an event exists is answered from the index alone.
CREATE INDEX events_key_created ON {schema}.events (key, created_at, id);

-- Whether a run already took a given event: probed once per candidate event, so a run with a
-- long log does not read the whole log for each. Only entries that took an event enter it.
CREATE INDEX event_log_event ON {schema}.event_log (run_id, event_id) WHERE event_id IS NOT NULL;
