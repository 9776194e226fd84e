-- Telemetry on TimescaleDB: `reading` as a hypertable with compression, and the daily view as a
-- continuous aggregate. Same columns and keys as the native variant, so every query works on both.

CREATE EXTENSION IF NOT EXISTS timescaledb;

CREATE TABLE reading (
    meter_id    bigint NOT NULL,
    channel     text NOT NULL,
    ts          timestamptz NOT NULL,
    value       numeric NOT NULL,
    quality     text NOT NULL DEFAULT 'good' CHECK (quality IN ('good', 'suspect', 'estimated')),
    source      text NOT NULL DEFAULT '',
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (meter_id, channel, ts)
);
SELECT create_hypertable('reading', by_range('ts', INTERVAL '7 days'));

ALTER TABLE reading SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'meter_id, channel',
    timescaledb.compress_orderby = 'ts DESC'
);
SELECT add_compression_policy('reading', INTERVAL '30 days');

-- Chunks are created on demand: nothing to prepare, kept for callers that do not branch.
CREATE FUNCTION meterhub_ensure_reading_partitions(p_from timestamptz, p_to timestamptz)
RETURNS integer LANGUAGE sql AS $$ SELECT 0 $$;

CREATE FUNCTION meterhub_orphan_reading_months() RETURNS TABLE (month timestamptz, readings bigint)
LANGUAGE sql STABLE AS $$ SELECT NULL::timestamptz, NULL::bigint WHERE false $$;

CREATE MATERIALIZED VIEW reading_daily_agg WITH (timescaledb.continuous) AS
SELECT meter_id,
       time_bucket(INTERVAL '1 day', ts, '{{timezone}}') AS bucket,
       first(value, ts)                                 AS first_value,
       last(value, ts)                                  AS last_value,
       min(value)                                       AS min_value,
       max(value)                                       AS max_value,
       min(ts)                                          AS first_ts,
       max(ts)                                          AS last_ts,
       count(*)                                         AS readings
  FROM reading
 WHERE channel = 'volume_m3'
 GROUP BY meter_id, bucket
  WITH NO DATA;

SELECT add_continuous_aggregate_policy('reading_daily_agg',
    start_offset => INTERVAL '7 days', end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '1 hour');

CREATE VIEW reading_daily AS
SELECT meter_id, (bucket AT TIME ZONE '{{timezone}}')::date AS day, first_value, last_value,
       min_value, max_value, first_ts, last_ts, readings
  FROM reading_daily_agg;

CREATE VIEW daily_consumption AS
SELECT meter_id,
       day,
       last_value - coalesce(lag(last_value) OVER w, first_value) AS consumption_m3,
       last_value                                                   AS register_m3,
       readings
  FROM reading_daily
WINDOW w AS (PARTITION BY meter_id ORDER BY day);
