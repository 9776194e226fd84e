-- Master data (基础信息): change history on the reference tables, deactivation instead of deletion, meter
-- categories, buildings (楼栋), installers (安装人员), installation dispatch (分配安装派工), the history of
-- payment groups (关联用户) and the record of bulk creations (批量建档). See meterhub.masterdata and
-- meterhub.bulk_create.

-- Reference rows are deactivated, never deleted: an inactive row stays valid for the records that name it
-- and is no longer offered for new ones.
ALTER TABLE area ADD COLUMN active boolean NOT NULL DEFAULT true;
ALTER TABLE community ADD COLUMN active boolean NOT NULL DEFAULT true;
ALTER TABLE usage_type ADD COLUMN active boolean NOT NULL DEFAULT true;
ALTER TABLE manufacturer ADD COLUMN active boolean NOT NULL DEFAULT true;
ALTER TABLE manufacturer ADD COLUMN contact text NOT NULL DEFAULT '';
ALTER TABLE meter_model ADD COLUMN active boolean NOT NULL DEFAULT true;

-- 表具类别: e.g. 民用膜式表, IC 卡表, 物联网表, 工业流量计.
CREATE TABLE meter_category (
    id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code   text NOT NULL UNIQUE,
    name   text NOT NULL,
    active boolean NOT NULL DEFAULT true
);
ALTER TABLE meter_model ADD COLUMN category_id bigint REFERENCES meter_category (id);

-- 楼栋: a building of a community; accounts may name theirs.
CREATE TABLE building (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    community_id bigint NOT NULL REFERENCES community (id),
    code         text NOT NULL,
    name         text NOT NULL,
    floors       integer CHECK (floors IS NULL OR floors BETWEEN 1 AND 200),
    units        integer CHECK (units IS NULL OR units BETWEEN 1 AND 100),
    active       boolean NOT NULL DEFAULT true,
    UNIQUE (community_id, code)
);
ALTER TABLE account ADD COLUMN building_id bigint REFERENCES building (id);
CREATE INDEX account_building_idx ON account (building_id) WHERE building_id IS NOT NULL;

-- 安装人员: a person or crew that installs meters; may be a staff user of the console.
CREATE TABLE installer (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code          text NOT NULL UNIQUE,
    name          text NOT NULL,
    phone         text NOT NULL DEFAULT '',
    company       text NOT NULL DEFAULT '',
    staff_user_id bigint REFERENCES staff_user (id),
    active        boolean NOT NULL DEFAULT true
);

-- 分配安装派工: an account waiting for its meter, given to an installer. assigned → installed | cancelled;
-- reassignment keeps the order assigned and changes its installer. At most one open order per account.
CREATE TABLE install_order (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id    bigint NOT NULL REFERENCES account (id),
    installer_id  bigint NOT NULL REFERENCES installer (id),
    status        text NOT NULL DEFAULT 'assigned' CHECK (status IN ('assigned', 'installed', 'cancelled')),
    planned_on    date,
    note          text NOT NULL DEFAULT '',
    meter_id      bigint REFERENCES meter (id),
    created_by    text NOT NULL DEFAULT meterhub_actor(),
    created_at    timestamptz NOT NULL DEFAULT now(),
    closed_at     timestamptz,
    cancel_reason text NOT NULL DEFAULT '',
    CHECK ((status = 'assigned') = (closed_at IS NULL)),
    CHECK (status <> 'installed' OR meter_id IS NOT NULL),
    CHECK (status <> 'cancelled' OR length(trim(cancel_reason)) > 0)
);
CREATE UNIQUE INDEX install_order_open_idx ON install_order (account_id) WHERE status = 'assigned';
CREATE INDEX install_order_installer_idx ON install_order (installer_id, status);

-- What happened to an order, in order: assign, reassign, installed, cancel. Append-only.
CREATE TABLE install_order_event (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id          bigint NOT NULL REFERENCES install_order (id),
    kind              text NOT NULL CHECK (kind IN ('assign', 'reassign', 'installed', 'cancel')),
    from_installer_id bigint REFERENCES installer (id),
    to_installer_id   bigint REFERENCES installer (id),
    note              text NOT NULL DEFAULT '',
    actor             text NOT NULL DEFAULT meterhub_actor(),
    at                timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX install_order_event_order_idx ON install_order_event (order_id, at);
CREATE TRIGGER install_order_event_append_only BEFORE UPDATE OR DELETE ON install_order_event
    FOR EACH ROW EXECUTE FUNCTION meterhub_forbid_change();

-- A meter installed on an account (through the meter pages, a replacement or a bulk creation) completes
-- the account's open installation order in the same transaction.
CREATE FUNCTION meterhub_install_order_done() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    done_id bigint;
BEGIN
    IF NEW.status = 'installed' AND NEW.account_id IS NOT NULL
       AND (TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM NEW.status
            OR OLD.account_id IS DISTINCT FROM NEW.account_id) THEN
        UPDATE install_order SET status = 'installed', meter_id = NEW.id, closed_at = now()
         WHERE account_id = NEW.account_id AND status = 'assigned'
        RETURNING id INTO done_id;
        IF done_id IS NOT NULL THEN
            INSERT INTO install_order_event (order_id, kind, note)
            VALUES (done_id, 'installed', NEW.meter_no);
        END IF;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER meter_install_order_done AFTER INSERT OR UPDATE OF status, account_id ON meter
    FOR EACH ROW EXECUTE FUNCTION meterhub_install_order_done();

-- 关联用户: who put which account into which group, and took it out. Members have no id of their own, so
-- their changes are recorded under the group's id with table_name 'account_group_member'.
CREATE FUNCTION meterhub_record_group_member() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO change_history (table_name, row_id, op, changed_by, old_values, new_values)
        VALUES ('account_group_member', NEW.group_id, 'insert', meterhub_actor(), NULL,
                jsonb_build_object('account_id', NEW.account_id));
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO change_history (table_name, row_id, op, changed_by, old_values, new_values)
        VALUES ('account_group_member', OLD.group_id, 'delete', meterhub_actor(),
                jsonb_build_object('account_id', OLD.account_id), NULL);
    ELSE
        INSERT INTO change_history (table_name, row_id, op, changed_by, old_values, new_values)
        VALUES ('account_group_member', NEW.group_id, 'update', meterhub_actor(),
                jsonb_build_object('group_id', OLD.group_id, 'account_id', OLD.account_id),
                jsonb_build_object('group_id', NEW.group_id, 'account_id', NEW.account_id));
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER account_group_member_history AFTER INSERT OR UPDATE OR DELETE ON account_group_member
    FOR EACH ROW EXECUTE FUNCTION meterhub_record_group_member();
ALTER TABLE account_group ADD COLUMN note text NOT NULL DEFAULT '';

-- 批量建档: one row per accepted file (a refused file creates nothing, its refusal is in the operation log).
CREATE TABLE bulk_import (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    filename   text NOT NULL,
    sha256     text NOT NULL,
    rows       integer NOT NULL CHECK (rows >= 0),
    customers  integer NOT NULL DEFAULT 0,
    accounts   integer NOT NULL DEFAULT 0,
    meters     integer NOT NULL DEFAULT 0,
    orders     integer NOT NULL DEFAULT 0,
    created_by text NOT NULL DEFAULT meterhub_actor(),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER bulk_import_append_only BEFORE UPDATE OR DELETE ON bulk_import
    FOR EACH ROW EXECUTE FUNCTION meterhub_forbid_change();

-- The change history the customer, account and meter tables have, for the reference tables too.
CREATE TRIGGER area_history AFTER INSERT OR UPDATE OR DELETE ON area
    FOR EACH ROW EXECUTE FUNCTION meterhub_record_history();
CREATE TRIGGER community_history AFTER INSERT OR UPDATE OR DELETE ON community
    FOR EACH ROW EXECUTE FUNCTION meterhub_record_history();
CREATE TRIGGER usage_type_history AFTER INSERT OR UPDATE OR DELETE ON usage_type
    FOR EACH ROW EXECUTE FUNCTION meterhub_record_history();
CREATE TRIGGER manufacturer_history AFTER INSERT OR UPDATE OR DELETE ON manufacturer
    FOR EACH ROW EXECUTE FUNCTION meterhub_record_history();
CREATE TRIGGER meter_model_history AFTER INSERT OR UPDATE OR DELETE ON meter_model
    FOR EACH ROW EXECUTE FUNCTION meterhub_record_history();
CREATE TRIGGER meter_category_history AFTER INSERT OR UPDATE OR DELETE ON meter_category
    FOR EACH ROW EXECUTE FUNCTION meterhub_record_history();
CREATE TRIGGER building_history AFTER INSERT OR UPDATE OR DELETE ON building
    FOR EACH ROW EXECUTE FUNCTION meterhub_record_history();
CREATE TRIGGER installer_history AFTER INSERT OR UPDATE OR DELETE ON installer
    FOR EACH ROW EXECUTE FUNCTION meterhub_record_history();
CREATE TRIGGER install_order_history AFTER INSERT OR UPDATE OR DELETE ON install_order
    FOR EACH ROW EXECUTE FUNCTION meterhub_record_history();
CREATE TRIGGER account_group_history AFTER INSERT OR UPDATE OR DELETE ON account_group
    FOR EACH ROW EXECUTE FUNCTION meterhub_record_history();
