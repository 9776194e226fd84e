-- Telemetry on plain PostgreSQL: `reading` range-partitioned by month, a default partition so that
-- no row is ever refused, and a daily materialized view that meterhub refreshes.

CREATE TABLE reading (
    meter_id    bigint NOT NULL,
    channel     text NOT NULL,                    -- volume_m3, flow_m3h, pressure_bar, battery_v …
    ts          timestamptz NOT NULL,
    value       numeric NOT NULL,                 -- exact, as the meter reported it
    quality     text NOT NULL DEFAULT 'good' CHECK (quality IN ('good', 'suspect', 'estimated')),
    source      text NOT NULL DEFAULT '',         -- transport and driver it came through
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (meter_id, channel, ts)           -- a re-delivered reading is a no-op
) PARTITION BY RANGE (ts);

-- Rows of months without a partition (far past, far future) land here, never refused; creating a
-- month's partition later moves its rows out.
CREATE TABLE reading_default PARTITION OF reading DEFAULT;

-- Creates the monthly partitions (UTC month bounds) covering [p_from, p_to], moving any rows of those
-- months out of the default partition. Returns how many partitions it created. Safe to run
-- concurrently and repeatedly.
CREATE FUNCTION meterhub_ensure_reading_partitions(p_from timestamptz, p_to timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    month_start timestamptz := date_trunc('month', p_from AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    month_end   timestamptz;
    part        text;
    created     integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('meterhub_reading_partitions'));
    WHILE month_start <= p_to LOOP
        month_end := (month_start AT TIME ZONE 'UTC' + interval '1 month') AT TIME ZONE 'UTC';
        part := 'reading_p' || to_char(month_start AT TIME ZONE 'UTC', 'YYYYMM');
        IF to_regclass(part) IS NULL THEN
            EXECUTE format('CREATE TABLE %I (LIKE reading INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
            EXECUTE format(
                'WITH moved AS (DELETE FROM reading_default WHERE ts >= %L AND ts < %L RETURNING *) '
                'INSERT INTO %I SELECT * FROM moved', month_start, month_end, part);
            EXECUTE format('ALTER TABLE reading ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                           part, month_start, month_end);
            created := created + 1;
        END IF;
        month_start := month_end;
    END LOOP;
    RETURN created;
END $$;

-- The months that have rows in the default partition (data outside the partitions made ahead).
CREATE FUNCTION meterhub_orphan_reading_months() RETURNS TABLE (month timestamptz, readings bigint)
LANGUAGE sql STABLE AS $$
    SELECT date_trunc('month', ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', count(*)
      FROM reading_default GROUP BY 1 ORDER BY 1
$$;

-- One row per meter and local day for the cumulative volume register.
CREATE MATERIALIZED VIEW reading_daily AS
SELECT meter_id,
       (ts AT TIME ZONE '{{timezone}}')::date    AS day,
       (array_agg(value ORDER BY ts))[1]         AS first_value,
       (array_agg(value ORDER BY ts DESC))[1]    AS last_value,
       min(value)                                AS min_value,
       max(value)                                AS max_value,
       min(ts)                                   AS first_ts,
       max(ts)                                   AS last_ts,
       count(*)                                  AS readings
  FROM reading
 WHERE channel = 'volume_m3'
 GROUP BY meter_id, day
  WITH NO DATA;
CREATE UNIQUE INDEX reading_daily_key ON reading_daily (meter_id, day);

-- Daily use = last register value of the day minus the last value of the previous day with data
-- (the first day counts from its first reading). Raw telemetry: rollovers and meter changes are
-- handled by reading validation, not here.
CREATE VIEW daily_consumption AS
SELECT meter_id,
       day,
       last_value - coalesce(lag(last_value) OVER w, first_value) AS consumption_m3,
       last_value                                                   AS register_m3,
       readings
  FROM reading_daily
WINDOW w AS (PARTITION BY meter_id ORDER BY day);
