-- Valve wells (阀井), pressure regulator boxes (调压箱) and relief stacks (放散桩): the station equipment
-- between the mains and the customers' meters. A box links to the wells and stacks around it and to the
-- accounts it feeds; a box may have its own meter, compared with the meters of the accounts it feeds in the
-- supply balance (供销差). Maintenance, repair and replacement records are append-only.

CREATE TABLE facility (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind               text NOT NULL CHECK (kind IN ('well', 'box', 'stack')),
    code               text NOT NULL UNIQUE,
    name               text NOT NULL,
    address            text NOT NULL DEFAULT '',
    area_id            bigint REFERENCES area (id),       -- the community's area when a community is given
    community_id       bigint REFERENCES community (id),
    latitude           numeric(9, 6) CHECK (latitude BETWEEN -90 AND 90),
    longitude          numeric(9, 6) CHECK (longitude BETWEEN -180 AND 180),
    model              text NOT NULL DEFAULT '',
    manufacturer       text NOT NULL DEFAULT '',
    dn                 integer CHECK (dn > 0),           -- nominal diameter, mm
    pressure_in_mpa    numeric(8, 4) CHECK (pressure_in_mpa >= 0),   -- inlet pressure rating
    pressure_out_mpa   numeric(8, 4) CHECK (pressure_out_mpa >= 0),  -- outlet (set) pressure
    flow_m3h           numeric(10, 2) CHECK (flow_m3h >= 0),         -- rated flow of a box
    install_date       date,
    status             text NOT NULL DEFAULT 'in_service'
        CHECK (status IN ('in_service', 'out_of_service', 'removed')),
    note               text NOT NULL DEFAULT '',
    meter_id           bigint UNIQUE REFERENCES meter (id),           -- a box's own meter
    loss_threshold_pct numeric(6, 2) CHECK (loss_threshold_pct >= 0), -- a box's own flag threshold
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CHECK (kind = 'box' OR (meter_id IS NULL AND loss_threshold_pct IS NULL AND flow_m3h IS NULL))
);
CREATE INDEX facility_area_idx ON facility (area_id);
CREATE INDEX facility_community_idx ON facility (community_id);
CREATE TRIGGER facility_history AFTER INSERT OR UPDATE OR DELETE ON facility
    FOR EACH ROW EXECUTE FUNCTION meterhub_record_history();
CREATE TRIGGER facility_touch BEFORE UPDATE ON facility
    FOR EACH ROW EXECUTE FUNCTION meterhub_touch_updated_at();

-- A box and a well or relief stack next to it (well ↔ box, box ↔ relief stack).
CREATE TABLE facility_link (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    box_id    bigint NOT NULL REFERENCES facility (id),
    other_id  bigint NOT NULL REFERENCES facility (id),
    linked_by text NOT NULL DEFAULT meterhub_actor(),
    linked_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (box_id, other_id)
);
CREATE INDEX facility_link_other_idx ON facility_link (other_id);
CREATE FUNCTION meterhub_facility_link_check() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT kind FROM facility WHERE id = NEW.box_id) IS DISTINCT FROM 'box'
       OR (SELECT kind FROM facility WHERE id = NEW.other_id) NOT IN ('well', 'stack') THEN
        RAISE EXCEPTION 'a link joins a regulator box and a valve well or relief stack'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER facility_link_kinds BEFORE INSERT OR UPDATE ON facility_link
    FOR EACH ROW EXECUTE FUNCTION meterhub_facility_link_check();
CREATE TRIGGER facility_link_history AFTER INSERT OR UPDATE OR DELETE ON facility_link
    FOR EACH ROW EXECUTE FUNCTION meterhub_record_history();

-- The accounts a box feeds; an account is fed by at most one box.
CREATE TABLE facility_account (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    box_id     bigint NOT NULL REFERENCES facility (id),
    account_id bigint NOT NULL UNIQUE REFERENCES account (id),
    linked_by  text NOT NULL DEFAULT meterhub_actor(),
    linked_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX facility_account_box_idx ON facility_account (box_id);
CREATE FUNCTION meterhub_facility_account_check() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT kind FROM facility WHERE id = NEW.box_id) IS DISTINCT FROM 'box' THEN
        RAISE EXCEPTION 'only a regulator box feeds accounts' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER facility_account_kind BEFORE INSERT OR UPDATE ON facility_account
    FOR EACH ROW EXECUTE FUNCTION meterhub_facility_account_check();
CREATE TRIGGER facility_account_history AFTER INSERT OR UPDATE OR DELETE ON facility_account
    FOR EACH ROW EXECUTE FUNCTION meterhub_record_history();

-- Inspection, maintenance, repair and replacement done on a well, box or stack. Never changed: a correction
-- is a new record.
CREATE TABLE facility_maintenance (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    facility_id bigint NOT NULL REFERENCES facility (id),
    done_on     date NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('inspection', 'maintenance', 'repair', 'replacement')),
    person      text NOT NULL CHECK (length(trim(person)) > 0),
    findings    text NOT NULL DEFAULT '',
    parts       text NOT NULL DEFAULT '',
    next_due    date CHECK (next_due IS NULL OR next_due > done_on),
    recorded_by text NOT NULL DEFAULT meterhub_actor(),
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX facility_maintenance_facility_idx ON facility_maintenance (facility_id, done_on);
CREATE TRIGGER facility_maintenance_append_only BEFORE UPDATE OR DELETE ON facility_maintenance
    FOR EACH ROW EXECUTE FUNCTION meterhub_forbid_change();

-- The defaults: a box's loss threshold when it has none of its own, and the maintenance interval of a
-- facility whose last record names no next due date.
CREATE TABLE facility_setting (
    id                        boolean PRIMARY KEY DEFAULT true CHECK (id),
    loss_threshold_pct        numeric(6, 2) NOT NULL CHECK (loss_threshold_pct >= 0),
    maintenance_interval_days integer NOT NULL CHECK (maintenance_interval_days > 0),
    updated_by                text NOT NULL DEFAULT meterhub_actor(),
    updated_at                timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER facility_setting_touch BEFORE UPDATE ON facility_setting
    FOR EACH ROW EXECUTE FUNCTION meterhub_touch_updated_at();

CREATE FUNCTION meterhub_facility_defaults() RETURNS void LANGUAGE sql AS $$
INSERT INTO facility_setting (id, loss_threshold_pct, maintenance_interval_days, updated_by)
VALUES (true, 5.00, 180, 'meterhub')
ON CONFLICT DO NOTHING;
$$;
SELECT meterhub_facility_defaults();

-- The utility's time zone (local days of the supply balance and of the demo's box readings).
CREATE FUNCTION meterhub_facility_timezone() RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT '{{timezone}}'::text $$;
