-- Repairs (维修管理): repair requests registered from a customer's call or from a meter alarm, dispatched to
-- an engineer, started, completed with the materials drawn from the warehouse (a stock-out document of kind
-- 'repair' written in the same transaction) or cancelled; the engineer's commission; scanned documents and
-- photos kept in the database. Every change of state is in the append-only `repair_log`.

-- Kinds of repair and the commission an engineer earns for one (the dispatcher may set another amount).
CREATE TABLE repair_kind (
    code       text PRIMARY KEY CHECK (code ~ '^[A-Za-z0-9_.-]{1,32}$'),
    name_zh    text NOT NULL,
    name_en    text NOT NULL,
    commission numeric(14, 2) NOT NULL DEFAULT 0 CHECK (commission >= 0),
    active     boolean NOT NULL DEFAULT true
);

CREATE OR REPLACE FUNCTION meterhub_repair_defaults() RETURNS void LANGUAGE sql AS $$
INSERT INTO repair_kind (code, name_zh, name_en, commission) VALUES
    ('leak', '漏气检修', 'Gas leak', 80.00),
    ('meter', '表具故障', 'Meter fault', 50.00),
    ('valve', '阀门故障', 'Valve fault', 60.00),
    ('pipe', '管道维修', 'Pipe repair', 100.00),
    ('appliance', '燃气具维修', 'Appliance repair', 40.00),
    ('other', '其他', 'Other', 30.00)
ON CONFLICT DO NOTHING;
$$;
SELECT meterhub_repair_defaults();

CREATE SEQUENCE repair_no_seq;

CREATE TABLE repair (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    repair_no      text NOT NULL UNIQUE,
    source         text NOT NULL CHECK (source IN ('call', 'alarm')),
    kind           text NOT NULL REFERENCES repair_kind (code),
    account_id     bigint REFERENCES account (id),
    meter_id       bigint REFERENCES meter (id),
    meter_event_id bigint UNIQUE REFERENCES meter_event (id),  -- one repair per alarm
    caller         text NOT NULL DEFAULT '',
    phone          text NOT NULL DEFAULT '',
    address        text NOT NULL DEFAULT '',
    description    text NOT NULL CHECK (length(description) BETWEEN 1 AND 2000),
    status         text NOT NULL DEFAULT 'registered'
        CHECK (status IN ('registered', 'dispatched', 'in_progress', 'completed', 'cancelled')),
    engineer_id    bigint REFERENCES staff_user (id),
    commission     numeric(14, 2) CHECK (commission IS NULL OR commission >= 0),
    registered_at  timestamptz NOT NULL DEFAULT now(),
    registered_by  text NOT NULL DEFAULT meterhub_actor(),
    dispatched_at  timestamptz,
    dispatched_by  text,
    started_at     timestamptz,
    completed_at   timestamptz,
    completed_by   text,
    result         text NOT NULL DEFAULT '',
    cancelled_at   timestamptz,
    cancel_reason  text NOT NULL DEFAULT '',
    stock_doc_id   bigint REFERENCES stock_doc (id),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (source <> 'alarm' OR meter_event_id IS NOT NULL),
    CHECK (status IN ('registered', 'cancelled') OR engineer_id IS NOT NULL),
    CHECK ((status = 'completed') = (completed_at IS NOT NULL))
);
CREATE INDEX repair_status_idx ON repair (status, registered_at);
CREATE INDEX repair_engineer_idx ON repair (engineer_id, completed_at);
CREATE INDEX repair_account_idx ON repair (account_id);
CREATE TRIGGER repair_touch BEFORE UPDATE ON repair FOR EACH ROW EXECUTE FUNCTION meterhub_touch_updated_at();

ALTER TABLE stock_doc ADD CONSTRAINT stock_doc_repair_fk FOREIGN KEY (repair_id) REFERENCES repair (id);

CREATE TABLE repair_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    repair_id   bigint NOT NULL REFERENCES repair (id),
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL DEFAULT meterhub_actor(),
    action      text NOT NULL CHECK (action IN ('register', 'dispatch', 'start', 'complete', 'cancel', 'attach')),
    from_status text,
    to_status   text NOT NULL,
    note        text NOT NULL DEFAULT '',
    detail      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX repair_log_repair_idx ON repair_log (repair_id, id);
CREATE TRIGGER repair_log_append_only BEFORE UPDATE OR DELETE ON repair_log
    FOR EACH ROW EXECUTE FUNCTION meterhub_forbid_change();

-- Scanned documents and photos: at most 5 MiB each, images and PDF only.
CREATE TABLE repair_attachment (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    repair_id    bigint NOT NULL REFERENCES repair (id),
    filename     text NOT NULL CHECK (length(filename) BETWEEN 1 AND 200),
    content_type text NOT NULL CHECK (content_type IN ('image/jpeg', 'image/png', 'image/gif', 'image/webp',
                                                        'application/pdf')),
    size         integer NOT NULL CHECK (size > 0 AND size <= 5242880),
    data         bytea NOT NULL CHECK (octet_length(data) <= 5242880),
    uploaded_by  text NOT NULL DEFAULT meterhub_actor(),
    uploaded_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (octet_length(data) = size)
);
CREATE INDEX repair_attachment_repair_idx ON repair_attachment (repair_id);
CREATE TRIGGER repair_attachment_append_only BEFORE UPDATE OR DELETE ON repair_attachment
    FOR EACH ROW EXECUTE FUNCTION meterhub_forbid_change();
