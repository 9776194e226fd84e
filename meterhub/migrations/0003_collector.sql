-- Each running collector reports its counters here every few seconds, so that anyone can check that
-- nothing was lost: received = stored + duplicates + rejected + in flight.
CREATE TABLE collector_status (
    collector_id text PRIMARY KEY,
    host         text NOT NULL,
    pid          integer NOT NULL,
    started_at   timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    stopped_at   timestamptz,
    counters     jsonb NOT NULL DEFAULT '{}'
);
