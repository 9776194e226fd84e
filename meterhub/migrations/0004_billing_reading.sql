-- Approved billing readings: the contract between reading review and billing. Reading review
-- writes them; bill runs read `approved_consumption`. Never changed in place: a correction is a
-- new version that supersedes the old one.

CREATE TABLE billing_reading (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id     bigint NOT NULL REFERENCES account (id),
    meter_id       bigint NOT NULL REFERENCES meter (id),
    period         text NOT NULL CHECK (period ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'),  -- YYYY-MM
    period_start   date NOT NULL,                 -- inclusive, local days
    period_end     date NOT NULL,                 -- exclusive
    start_value    numeric(14, 3),                -- register at the start (null for a first reading)
    end_value      numeric(14, 3) NOT NULL,       -- register at the end
    end_ts         timestamptz NOT NULL,          -- when the end value was read
    consumption_m3 numeric(14, 3) NOT NULL,       -- after rollover and meter-replacement handling
    kind           text NOT NULL CHECK (kind IN ('automatic', 'manual', 'estimated', 'corrected')),
    version        integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    supersedes_id  bigint REFERENCES billing_reading (id),
    reason         text NOT NULL DEFAULT '',      -- why it was corrected or estimated
    approved_by    text NOT NULL,
    approved_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (period_end > period_start),
    UNIQUE (account_id, meter_id, period, version)
);
CREATE INDEX billing_reading_period_idx ON billing_reading (period, account_id);
CREATE TRIGGER billing_reading_append_only BEFORE UPDATE OR DELETE ON billing_reading
    FOR EACH ROW EXECUTE FUNCTION meterhub_forbid_change();

-- The reading billing uses: the latest version for each account, meter and period.
CREATE VIEW approved_consumption AS
SELECT DISTINCT ON (account_id, meter_id, period)
       id, account_id, meter_id, period, period_start, period_end, start_value, end_value, end_ts,
       consumption_m3, kind, version, approved_by, approved_at
  FROM billing_reading
 ORDER BY account_id, meter_id, period, version DESC;
