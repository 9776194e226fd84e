-- Core master data of a gas utility, change history, meter events and the dead-letter table.

-- Who changed what: change_history rows are written by triggers; meterhub sets meterhub.actor
-- (SET LOCAL) in every transaction a person causes, so the row names the person, not the pool user.
CREATE FUNCTION meterhub_actor() RETURNS text LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('meterhub.actor', true), ''), session_user::text)
$$;

CREATE FUNCTION meterhub_touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END $$;

CREATE FUNCTION meterhub_forbid_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TABLE staff_user (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username      text NOT NULL UNIQUE CHECK (username ~ '^[A-Za-z0-9_.@-]{1,64}$'),
    display_name  text NOT NULL,
    role          text NOT NULL DEFAULT 'clerk',
    phone         text,
    email         text,
    password_hash text,
    active        boolean NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE area (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code      text NOT NULL UNIQUE,
    name      text NOT NULL,
    parent_id bigint REFERENCES area (id)
);

-- A residential estate or business park (小区).
CREATE TABLE community (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    area_id bigint NOT NULL REFERENCES area (id),
    code    text NOT NULL UNIQUE,
    name    text NOT NULL,
    address text NOT NULL DEFAULT ''
);
CREATE INDEX community_area_idx ON community (area_id);

-- 用气性质: residential, commercial, industrial, heating …; tariffs hang off it.
CREATE TABLE usage_type (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code     text NOT NULL UNIQUE,
    name     text NOT NULL,
    name_en  text NOT NULL DEFAULT '',
    category text NOT NULL DEFAULT 'residential'
        CHECK (category IN ('residential', 'commercial', 'industrial', 'public', 'heating'))
);

CREATE TABLE manufacturer (
    id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code text NOT NULL UNIQUE,
    name text NOT NULL
);

CREATE TABLE meter_model (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    manufacturer_id bigint NOT NULL REFERENCES manufacturer (id),
    name            text NOT NULL,
    driver_key      text NOT NULL,            -- the driver registry key, e.g. cjt188, native_json, modbus
    profile         text NOT NULL DEFAULT '', -- driver-specific profile, e.g. a Modbus device profile name
    has_valve       boolean NOT NULL DEFAULT false,
    prepaid_capable boolean NOT NULL DEFAULT false,
    register_max    numeric(14, 3),           -- where the volume register rolls over, e.g. 99999.999
    UNIQUE (manufacturer_id, name)
);

CREATE TABLE customer (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_no    text NOT NULL UNIQUE,
    name           text NOT NULL,
    kind           text NOT NULL DEFAULT 'person' CHECK (kind IN ('person', 'organisation')),
    phone          text NOT NULL DEFAULT '',
    id_number      text NOT NULL DEFAULT '',
    address        text NOT NULL DEFAULT '',
    household_size integer NOT NULL DEFAULT 3 CHECK (household_size BETWEEN 1 AND 99),
    protected      boolean NOT NULL DEFAULT false, -- e.g. medical equipment at home: no remote shut-off
    note           text NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- 户号: the billing unit. One customer may hold several accounts.
CREATE TABLE account (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_no    text NOT NULL UNIQUE,
    customer_id   bigint NOT NULL REFERENCES customer (id),
    community_id  bigint REFERENCES community (id),
    address       text NOT NULL DEFAULT '',
    usage_type_id bigint NOT NULL REFERENCES usage_type (id),
    billing_mode  text NOT NULL DEFAULT 'postpaid'
        CHECK (billing_mode IN ('postpaid', 'prepaid_account', 'prepaid_meter')),
    card_no       text UNIQUE,
    status        text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'locked', 'suspended', 'closed')),
    opened_on     date NOT NULL DEFAULT current_date,
    closed_on     date CHECK (closed_on IS NULL OR closed_on >= opened_on),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX account_customer_idx ON account (customer_id);
CREATE INDEX account_community_idx ON account (community_id);

CREATE TABLE meter (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    meter_no         text NOT NULL UNIQUE,
    model_id         bigint REFERENCES meter_model (id),
    driver_key       text NOT NULL,
    protocol_address text NOT NULL DEFAULT '', -- CJ/T 188 address, Modbus unit, M-Bus address …
    usage_type_id    bigint REFERENCES usage_type (id),
    account_id       bigint REFERENCES account (id),
    prepaid          boolean NOT NULL DEFAULT false,
    valve_state      text NOT NULL DEFAULT 'unknown'
        CHECK (valve_state IN ('unknown', 'open', 'closed', 'armed', 'abnormal')),
    status           text NOT NULL DEFAULT 'in_stock'
        CHECK (status IN ('in_stock', 'installed', 'suspended', 'removed')),
    install_date     date,
    remove_date      date CHECK (remove_date IS NULL OR install_date IS NULL OR remove_date >= install_date),
    initial_reading  numeric(14, 3) NOT NULL DEFAULT 0,
    register_max     numeric(14, 3),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX meter_account_idx ON meter (account_id);
CREATE INDEX meter_address_idx ON meter (driver_key, protocol_address);

-- What meters last reported, kept current by the collector once per batch. Apart from `meter` so
-- that telemetry neither rewrites master data rows nor floods the change history.
CREATE TABLE meter_state (
    meter_id          bigint PRIMARY KEY REFERENCES meter (id) ON DELETE CASCADE,
    last_seen_at      timestamptz NOT NULL,
    last_reading_at   timestamptz,
    last_volume_m3    numeric,
    valve_reported    text CHECK (valve_reported IN ('open', 'closed', 'armed', 'abnormal', 'unknown')),
    valve_reported_at timestamptz,
    battery_v         numeric(5, 2),
    rssi_dbm          smallint
);

CREATE TABLE change_history (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_name text NOT NULL,
    row_id     bigint NOT NULL,
    op         text NOT NULL CHECK (op IN ('insert', 'update', 'delete')),
    changed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    changed_by text NOT NULL,
    old_values jsonb, -- only the columns that changed
    new_values jsonb
);
CREATE INDEX change_history_row_idx ON change_history (table_name, row_id, changed_at);
CREATE TRIGGER change_history_append_only BEFORE UPDATE OR DELETE ON change_history
    FOR EACH ROW EXECUTE FUNCTION meterhub_forbid_change();

CREATE FUNCTION meterhub_record_history() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    skip     text[] := ARRAY['updated_at'];
    old_doc  jsonb;
    new_doc  jsonb;
    old_diff jsonb;
    new_diff jsonb;
    row_key  bigint;
BEGIN
    IF TG_OP <> 'INSERT' THEN old_doc := to_jsonb(OLD) - skip; row_key := OLD.id; END IF;
    IF TG_OP <> 'DELETE' THEN new_doc := to_jsonb(NEW) - skip; row_key := NEW.id; END IF;
    IF TG_OP = 'UPDATE' THEN
        SELECT jsonb_object_agg(o.key, o.value), jsonb_object_agg(o.key, new_doc -> o.key)
          INTO old_diff, new_diff
          FROM jsonb_each(old_doc) AS o
         WHERE o.value IS DISTINCT FROM new_doc -> o.key;
        IF old_diff IS NULL THEN
            RETURN NULL; -- only skipped columns changed
        END IF;
    ELSE
        old_diff := old_doc;
        new_diff := new_doc;
    END IF;
    INSERT INTO change_history (table_name, row_id, op, changed_by, old_values, new_values)
    VALUES (TG_TABLE_NAME, row_key, lower(TG_OP), meterhub_actor(), old_diff, new_diff);
    RETURN NULL;
END $$;

CREATE TRIGGER customer_history AFTER INSERT OR UPDATE OR DELETE ON customer
    FOR EACH ROW EXECUTE FUNCTION meterhub_record_history();
CREATE TRIGGER account_history AFTER INSERT OR UPDATE OR DELETE ON account
    FOR EACH ROW EXECUTE FUNCTION meterhub_record_history();
CREATE TRIGGER meter_history AFTER INSERT OR UPDATE OR DELETE ON meter
    FOR EACH ROW EXECUTE FUNCTION meterhub_record_history();

CREATE TRIGGER staff_user_touch BEFORE UPDATE ON staff_user
    FOR EACH ROW EXECUTE FUNCTION meterhub_touch_updated_at();
CREATE TRIGGER customer_touch BEFORE UPDATE ON customer
    FOR EACH ROW EXECUTE FUNCTION meterhub_touch_updated_at();
CREATE TRIGGER account_touch BEFORE UPDATE ON account
    FOR EACH ROW EXECUTE FUNCTION meterhub_touch_updated_at();
CREATE TRIGGER meter_touch BEFORE UPDATE ON meter
    FOR EACH ROW EXECUTE FUNCTION meterhub_touch_updated_at();

-- Alarms and status changes reported by meters or raised by meterhub (offline, low credit).
CREATE TABLE meter_event (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    meter_id    bigint NOT NULL REFERENCES meter (id),
    ts          timestamptz NOT NULL,
    kind        text NOT NULL CHECK (kind IN (
                    'battery_low', 'tamper', 'leak', 'valve_state', 'valve_abnormal', 'offline',
                    'low_credit', 'magnetic', 'overflow', 'device_alarm', 'credit_mismatch')),
    severity    text NOT NULL DEFAULT 'warning' CHECK (severity IN ('info', 'warning', 'critical')),
    detail      jsonb NOT NULL DEFAULT '{}',
    source      text NOT NULL DEFAULT '',
    received_at timestamptz NOT NULL DEFAULT now(),
    cleared_at  timestamptz,
    UNIQUE (meter_id, kind, ts) -- a re-delivered event is stored once
);
CREATE INDEX meter_event_ts_idx ON meter_event (ts);
CREATE INDEX meter_event_open_idx ON meter_event (meter_id) WHERE cleared_at IS NULL;

-- The dead-letter table every transport and driver uses: nothing received is ever dropped silently.
CREATE TABLE rejected_frame (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now(),
    source      text NOT NULL,          -- mqtt, serial:/dev/ttyUSB0, modbus:10.0.0.5:502/1 …
    topic       text,
    driver_key  text,
    meter_no    text,
    raw         bytea NOT NULL,
    reason      text NOT NULL,          -- short code: bad_checksum, bad_json, unknown_meter …
    detail      text NOT NULL DEFAULT ''
);
CREATE INDEX rejected_frame_received_idx ON rejected_frame (received_at);
CREATE INDEX rejected_frame_reason_idx ON rejected_frame (reason, received_at);
