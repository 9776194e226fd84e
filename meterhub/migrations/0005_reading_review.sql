-- Reading management: meter assignments (换表), reading books (抄表本) and readers (抄表员), reading
-- periods and schedules, manual readings and their imports, validation runs with their flags, and the
-- review queue (抄表审核) whose decisions become `billing_reading` versions.

-- Which meter measured an account's gas when. A replacement closes the old meter's row with its final
-- register and opens the new meter's row with its first register (换表结算). Meters with an account and
-- no row here count as assigned to that account since installation.
CREATE TABLE meter_assignment (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id  bigint NOT NULL REFERENCES account (id),
    meter_id    bigint NOT NULL REFERENCES meter (id),
    valid_from  timestamptz NOT NULL,
    valid_to    timestamptz,                   -- null while installed
    first_value numeric(14, 3),                -- register when installed
    final_value numeric(14, 3),                -- register when removed
    note        text NOT NULL DEFAULT '',
    CHECK (valid_to IS NULL OR valid_to > valid_from),
    CHECK (final_value IS NULL OR valid_to IS NOT NULL)
);
CREATE INDEX meter_assignment_meter_idx ON meter_assignment (meter_id, valid_from);
CREATE INDEX meter_assignment_account_idx ON meter_assignment (account_id, valid_from);

-- 抄表员: a person who reads meters on site; may be a staff user of the console.
CREATE TABLE meter_reader (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code          text NOT NULL UNIQUE,
    name          text NOT NULL,
    staff_user_id bigint REFERENCES staff_user (id),
    phone         text NOT NULL DEFAULT '',
    active        boolean NOT NULL DEFAULT true
);

-- 抄表本: a route of meters a reader walks, read on `reading_day` of each month.
CREATE TABLE reading_book (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code        text NOT NULL UNIQUE,
    name        text NOT NULL,
    area_id     bigint REFERENCES area (id),
    reader_id   bigint REFERENCES meter_reader (id),
    reading_day smallint NOT NULL DEFAULT 1 CHECK (reading_day BETWEEN 1 AND 28),
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- A meter's place in a book's route; a meter is in at most one book.
CREATE TABLE reading_book_meter (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    book_id  bigint NOT NULL REFERENCES reading_book (id) ON DELETE CASCADE,
    meter_id bigint NOT NULL UNIQUE REFERENCES meter (id),
    seq      integer NOT NULL CHECK (seq >= 1),
    CONSTRAINT reading_book_meter_seq UNIQUE (book_id, seq) DEFERRABLE INITIALLY DEFERRED
);

-- A billing period of readings: local days [period_start, period_end).
CREATE TABLE reading_period (
    period       text PRIMARY KEY CHECK (period ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'),
    period_start date NOT NULL,
    period_end   date NOT NULL,
    status       text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    CHECK (period_end > period_start)
);

-- When a book is read in a period and by whom (a substitute reader may stand in).
CREATE TABLE reading_schedule (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    book_id      bigint NOT NULL REFERENCES reading_book (id) ON DELETE CASCADE,
    period       text NOT NULL REFERENCES reading_period (period),
    planned_date date NOT NULL,
    reader_id    bigint REFERENCES meter_reader (id),
    status       text NOT NULL DEFAULT 'planned' CHECK (status IN ('planned', 'exported', 'imported', 'done')),
    exported_at  timestamptz,
    imported_at  timestamptz,
    UNIQUE (book_id, period)
);

-- One uploaded handheld (抄表机) result file, applied whole or not at all.
CREATE TABLE reading_import (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    file_name   text NOT NULL,
    format      text NOT NULL CHECK (format IN ('csv', 'xlsx')),
    sha256      text NOT NULL,
    rows        integer NOT NULL,
    readings    integer NOT NULL,
    imported_by text NOT NULL,
    imported_at timestamptz NOT NULL DEFAULT now()
);

-- Readings taken by people: typed in, imported from a handheld, or read off a photo.
CREATE TABLE manual_reading (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    meter_id   bigint NOT NULL REFERENCES meter (id),
    period     text NOT NULL CHECK (period ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'),
    ts         timestamptz NOT NULL,
    value      numeric(14, 3) NOT NULL CHECK (value >= 0),
    source     text NOT NULL CHECK (source IN ('handheld', 'manual', 'photo')),
    book_id    bigint REFERENCES reading_book (id),
    reader_id  bigint REFERENCES meter_reader (id),
    import_id  bigint REFERENCES reading_import (id),
    photo_ref  text NOT NULL DEFAULT '',
    note       text NOT NULL DEFAULT '',
    entered_by text NOT NULL DEFAULT meterhub_actor(),
    entered_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX manual_reading_meter_idx ON manual_reading (meter_id, ts);
CREATE INDEX manual_reading_period_idx ON manual_reading (period);

-- One run of the validation rules over a period.
CREATE TABLE validation_run (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    period           text NOT NULL REFERENCES reading_period (period),
    rule_set_version text NOT NULL,
    run_by           text NOT NULL DEFAULT meterhub_actor(),
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    meters           integer NOT NULL DEFAULT 0,
    readings         bigint NOT NULL DEFAULT 0,
    flags            integer NOT NULL DEFAULT 0,
    queue_rows       integer NOT NULL DEFAULT 0,
    flags_by_rule    jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX validation_run_period_idx ON validation_run (period, id);

-- What a rule found: the rule id and its numbers (observed against threshold, in `unit`).
CREATE TABLE reading_flag (
    run_id    bigint NOT NULL REFERENCES validation_run (id) ON DELETE CASCADE,
    meter_id  bigint NOT NULL,
    rule_id   text NOT NULL,
    severity  text NOT NULL CHECK (severity IN ('info', 'warning', 'error')),
    ts_from   timestamptz,
    ts_to     timestamptz,
    observed  numeric(18, 3),
    threshold numeric(18, 3),
    unit      text NOT NULL
);
CREATE INDEX reading_flag_run_idx ON reading_flag (run_id, meter_id);

-- The review queue: one row per account, meter and period with the billing reading candidate, its
-- consumption, flags and estimate, and the decision. Re-validating a period refreshes pending rows
-- only; a decided row keeps its numbers and decision (its billing reading is the approved one).
CREATE TABLE reading_review (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    period              text NOT NULL,
    account_id          bigint NOT NULL,           -- no foreign keys: rewritten in bulk from master data;
    meter_id            bigint NOT NULL,           -- decisions go to billing_reading, which has them
    run_id              bigint NOT NULL,
    bound_start         timestamptz NOT NULL,  -- the part of the period this meter served the account
    bound_end           timestamptz NOT NULL,
    candidate_source    text CHECK (candidate_source IN ('automatic', 'manual')),
    start_ts            timestamptz,
    start_value         numeric(14, 3),
    end_ts              timestamptz,
    end_value           numeric(14, 3),
    consumption_m3      numeric(14, 3),
    read_in_period      boolean NOT NULL,
    rollover_count      integer NOT NULL DEFAULT 0,
    reset_count         integer NOT NULL DEFAULT 0,
    flag_count          integer NOT NULL DEFAULT 0,
    flag_rules          text[] NOT NULL DEFAULT '{}',
    worst_severity      text CHECK (worst_severity IN ('info', 'warning', 'error')),
    estimation_needed   boolean NOT NULL DEFAULT false,
    estimation_reason   text,
    estimate_m3         numeric(14, 3),
    estimate_method     text,
    status              text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'accepted', 'corrected', 'estimated')),
    billing_reading_id  bigint REFERENCES billing_reading (id),
    decided_by          text,
    decided_at          timestamptz,
    decision_reason     text NOT NULL DEFAULT '',
    UNIQUE (period, account_id, meter_id),
    CHECK ((status = 'pending') = (billing_reading_id IS NULL))
);
CREATE INDEX reading_review_pending_idx ON reading_review (period, status, worst_severity);

-- Every decision on the queue, append-only: who, when, why, and the values before and after.
CREATE TABLE reading_review_log (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    review_id          bigint NOT NULL REFERENCES reading_review (id),
    action             text NOT NULL CHECK (action IN ('accept', 'correct', 'estimate')),
    billing_reading_id bigint NOT NULL REFERENCES billing_reading (id),
    supersedes_id      bigint REFERENCES billing_reading (id),
    old_values         jsonb,
    new_values         jsonb NOT NULL,
    reason             text NOT NULL DEFAULT '',
    actor              text NOT NULL DEFAULT meterhub_actor(),
    at                 timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX reading_review_log_review_idx ON reading_review_log (review_id, at);
CREATE TRIGGER reading_review_log_append_only BEFORE UPDATE OR DELETE ON reading_review_log
    FOR EACH ROW EXECUTE FUNCTION meterhub_forbid_change();

CREATE TRIGGER meter_assignment_history AFTER INSERT OR UPDATE OR DELETE ON meter_assignment
    FOR EACH ROW EXECUTE FUNCTION meterhub_record_history();
CREATE TRIGGER meter_reader_history AFTER INSERT OR UPDATE OR DELETE ON meter_reader
    FOR EACH ROW EXECUTE FUNCTION meterhub_record_history();
CREATE TRIGGER reading_book_history AFTER INSERT OR UPDATE OR DELETE ON reading_book
    FOR EACH ROW EXECUTE FUNCTION meterhub_record_history();
CREATE TRIGGER reading_book_meter_history AFTER INSERT OR UPDATE OR DELETE ON reading_book_meter
    FOR EACH ROW EXECUTE FUNCTION meterhub_record_history();
CREATE TRIGGER manual_reading_history AFTER INSERT OR UPDATE OR DELETE ON manual_reading
    FOR EACH ROW EXECUTE FUNCTION meterhub_record_history();
CREATE TRIGGER reading_book_touch BEFORE UPDATE ON reading_book
    FOR EACH ROW EXECUTE FUNCTION meterhub_touch_updated_at();
