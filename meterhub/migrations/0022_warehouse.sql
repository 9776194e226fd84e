-- Warehouse (仓库管理): warehouses, item categories, suppliers, items (meters are items tracked by serial
-- number), stock-in and stock-out documents with their lines, stock levels per warehouse and item, the
-- serial numbers in stock and the append-only movement history.
--
-- Stock never goes negative: `stock.quantity` carries a CHECK (quantity >= 0) and every document updates
-- the stock rows it touches in its own transaction with a conditional UPDATE (a row lock), so two
-- concurrent stock-outs of the last unit cannot both succeed. Documents, their lines and the movements
-- are append-only; a mistake is corrected by another document (a return, a stock-in).

CREATE TABLE warehouse (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code       text NOT NULL UNIQUE CHECK (code ~ '^[A-Za-z0-9_.-]{1,32}$'),
    name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    address    text NOT NULL DEFAULT '',
    keeper     text NOT NULL DEFAULT '',
    active     boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE item_category (
    id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code text NOT NULL UNIQUE CHECK (code ~ '^[A-Za-z0-9_.-]{1,32}$'),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 100)
);

CREATE TABLE supplier (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code       text NOT NULL UNIQUE CHECK (code ~ '^[A-Za-z0-9_.-]{1,32}$'),
    name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    contact    text NOT NULL DEFAULT '',
    phone      text NOT NULL DEFAULT '',
    address    text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now()
);

-- An item: a material, a spare part, or a meter model. `serial_tracked` items (meters) are counted one
-- unit per serial number; `meter_model_id` makes a stock-in of a new serial create the meter (in stock).
CREATE TABLE item (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code           text NOT NULL UNIQUE CHECK (code ~ '^[A-Za-z0-9_.-]{1,32}$'),
    name           text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    category_id    bigint REFERENCES item_category (id),
    unit           text NOT NULL DEFAULT '个' CHECK (length(unit) BETWEEN 1 AND 16),
    spec           text NOT NULL DEFAULT '',
    serial_tracked boolean NOT NULL DEFAULT false,
    meter_model_id bigint REFERENCES meter_model (id),
    price          numeric(14, 2) CHECK (price IS NULL OR price >= 0),
    active         boolean NOT NULL DEFAULT true,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (meter_model_id IS NULL OR serial_tracked)
);
CREATE INDEX item_category_idx ON item (category_id);

-- Stock level per warehouse and item, exact.
CREATE TABLE stock (
    warehouse_id bigint NOT NULL REFERENCES warehouse (id),
    item_id      bigint NOT NULL REFERENCES item (id),
    quantity     numeric(14, 3) NOT NULL DEFAULT 0 CHECK (quantity >= 0),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (warehouse_id, item_id)
);
CREATE INDEX stock_item_idx ON stock (item_id);

CREATE TABLE stock_doc (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    doc_no          text NOT NULL UNIQUE,
    direction       text NOT NULL CHECK (direction IN ('in', 'out')),
    kind            text NOT NULL CHECK (kind IN ('purchase', 'return', 'install', 'repair', 'transfer', 'scrap')),
    warehouse_id    bigint NOT NULL REFERENCES warehouse (id),
    to_warehouse_id bigint REFERENCES warehouse (id),
    supplier_id     bigint REFERENCES supplier (id),
    account_id      bigint REFERENCES account (id),
    meter_id        bigint REFERENCES meter (id),
    repair_id       bigint,                      -- a repair's materials (the repairs module)
    doc_date        date NOT NULL,
    reference       text NOT NULL DEFAULT '',    -- the supplier's delivery note, a work order …
    note            text NOT NULL DEFAULT '',
    created_by      text NOT NULL DEFAULT meterhub_actor(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((direction = 'in') = (kind IN ('purchase', 'return'))),
    CHECK ((kind = 'transfer') = (to_warehouse_id IS NOT NULL)),
    CHECK (to_warehouse_id IS NULL OR to_warehouse_id <> warehouse_id),
    CHECK (kind <> 'purchase' OR supplier_id IS NOT NULL)
);
CREATE INDEX stock_doc_date_idx ON stock_doc (doc_date, id);
CREATE INDEX stock_doc_repair_idx ON stock_doc (repair_id) WHERE repair_id IS NOT NULL;

CREATE TABLE stock_doc_line (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    doc_id     bigint NOT NULL REFERENCES stock_doc (id),
    line_no    integer NOT NULL CHECK (line_no > 0),
    item_id    bigint NOT NULL REFERENCES item (id),
    serial_no  text,
    quantity   numeric(14, 3) NOT NULL CHECK (quantity > 0),
    unit_price numeric(14, 2) CHECK (unit_price IS NULL OR unit_price >= 0),
    amount     numeric(14, 2),
    UNIQUE (doc_id, line_no),
    CHECK (serial_no IS NULL OR quantity = 1)
);
CREATE INDEX stock_doc_line_item_idx ON stock_doc_line (item_id);
CREATE INDEX stock_doc_line_serial_idx ON stock_doc_line (serial_no) WHERE serial_no IS NOT NULL;

-- Serial numbers known to the warehouse: where each one is (warehouse_id NULL once it left the stock).
CREATE TABLE stock_serial (
    serial_no    text PRIMARY KEY CHECK (serial_no ~ '^[A-Za-z0-9_.-]{1,64}$'),
    item_id      bigint NOT NULL REFERENCES item (id),
    warehouse_id bigint REFERENCES warehouse (id),
    status       text NOT NULL CHECK (status IN ('in_stock', 'issued', 'scrapped')),
    last_doc_id  bigint NOT NULL REFERENCES stock_doc (id),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'in_stock') = (warehouse_id IS NOT NULL))
);
CREATE INDEX stock_serial_item_idx ON stock_serial (item_id, warehouse_id);

-- Every change of a stock level, signed (+ in, − out), with the level after it.
CREATE TABLE stock_movement (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    doc_id        bigint NOT NULL REFERENCES stock_doc (id),
    line_id       bigint NOT NULL REFERENCES stock_doc_line (id),
    warehouse_id  bigint NOT NULL REFERENCES warehouse (id),
    item_id       bigint NOT NULL REFERENCES item (id),
    serial_no     text,
    quantity      numeric(14, 3) NOT NULL CHECK (quantity <> 0),
    balance_after numeric(14, 3) NOT NULL CHECK (balance_after >= 0),
    actor         text NOT NULL DEFAULT meterhub_actor()
);
CREATE INDEX stock_movement_item_idx ON stock_movement (item_id, warehouse_id, id);
CREATE INDEX stock_movement_serial_idx ON stock_movement (serial_no, id) WHERE serial_no IS NOT NULL;
CREATE INDEX stock_movement_doc_idx ON stock_movement (doc_id);

CREATE TRIGGER stock_doc_append_only BEFORE UPDATE OR DELETE ON stock_doc
    FOR EACH ROW EXECUTE FUNCTION meterhub_forbid_change();
CREATE TRIGGER stock_doc_line_append_only BEFORE UPDATE OR DELETE ON stock_doc_line
    FOR EACH ROW EXECUTE FUNCTION meterhub_forbid_change();
CREATE TRIGGER stock_movement_append_only BEFORE UPDATE OR DELETE ON stock_movement
    FOR EACH ROW EXECUTE FUNCTION meterhub_forbid_change();

-- Document numbers: RK (入库) / CK (出库) + the document's day + a running number, e.g. RK20261128-000001.
CREATE SEQUENCE stock_doc_no_seq;
