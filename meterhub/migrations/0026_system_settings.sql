-- System settings (参数配置): typed key/value parameters (company name, logo, contact, menu names and
-- order, kiosk limits), print templates for receipts and invoices, and the self-service kiosk's PINs
-- and attempts (触摸屏查询).

-- A key with no row has its default (meterhub.system_settings.DEFINITIONS); changes are written by the
-- console, which records each in the operation log.
CREATE TABLE system_setting (
    key          text PRIMARY KEY CHECK (key ~ '^[a-z_]+(\.[a-z_]+)+$'),
    type         text NOT NULL CHECK (type IN ('text', 'int', 'bool', 'json', 'image')),
    value        jsonb NOT NULL DEFAULT 'null',
    blob         bytea CHECK (blob IS NULL OR octet_length(blob) <= 524288),
    content_type text,
    updated_by   text NOT NULL DEFAULT meterhub_actor(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (type <> 'image' OR (blob IS NULL) = (value = 'null'::jsonb)),
    CHECK (type <> 'int' OR jsonb_typeof(value) = 'number'),
    CHECK (type <> 'bool' OR jsonb_typeof(value) = 'boolean'),
    CHECK (type <> 'text' OR jsonb_typeof(value) = 'string')
);

-- Print templates (打印模板): paper size, font size, target printer and the fields placed in mm.
-- fields: [{"field": "receipt_no", "x": 10.0, "y": 20.0, "w": 60.0, "size": 10.5}, …]
CREATE TABLE print_template (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('receipt', 'invoice')),
    name            text NOT NULL CHECK (length(trim(name)) BETWEEN 1 AND 100),
    paper_width_mm  numeric(6, 1) NOT NULL CHECK (paper_width_mm BETWEEN 20 AND 1000),
    paper_height_mm numeric(6, 1) NOT NULL CHECK (paper_height_mm BETWEEN 20 AND 1000),
    font_size_pt    numeric(4, 1) NOT NULL DEFAULT 10.5 CHECK (font_size_pt BETWEEN 4 AND 72),
    printer_name    text NOT NULL DEFAULT '',
    fields          jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(fields) = 'array'),
    is_default      boolean NOT NULL DEFAULT false,
    updated_by      text NOT NULL DEFAULT meterhub_actor(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kind, name)
);
CREATE UNIQUE INDEX print_template_default_idx ON print_template (kind) WHERE is_default;

-- The shipped templates: a receipt on 241 × 140 mm continuous paper (a third of 241 × 279 mm
-- fan-fold) and a value-added tax invoice form of 240 × 140 mm. Re-run by tests after emptying tables.
CREATE FUNCTION meterhub_print_template_defaults() RETURNS void LANGUAGE sql AS $$
INSERT INTO print_template (kind, name, paper_width_mm, paper_height_mm, font_size_pt, printer_name, fields,
                            is_default, updated_by)
VALUES
    ('receipt', '收费收据 241×140', 241, 140, 10.5, '', '[
        {"field": "company_name", "x": 70, "y": 8, "w": 100, "size": 16},
        {"field": "title", "x": 95, "y": 18, "w": 50, "size": 14},
        {"field": "receipt_no", "x": 170, "y": 26, "w": 60, "size": null},
        {"field": "paid_at", "x": 15, "y": 26, "w": 60, "size": null},
        {"field": "account_no", "x": 15, "y": 40, "w": 70, "size": null},
        {"field": "customer_name", "x": 95, "y": 40, "w": 70, "size": null},
        {"field": "address", "x": 15, "y": 50, "w": 150, "size": null},
        {"field": "amount", "x": 15, "y": 64, "w": 60, "size": 12},
        {"field": "amount_words", "x": 85, "y": 64, "w": 140, "size": null},
        {"field": "method", "x": 15, "y": 76, "w": 60, "size": null},
        {"field": "cashier", "x": 85, "y": 76, "w": 60, "size": null},
        {"field": "reprint_mark", "x": 170, "y": 76, "w": 60, "size": null},
        {"field": "hotline", "x": 15, "y": 120, "w": 120, "size": 9}
    ]', true, 'system'),
    ('invoice', '增值税普通发票 240×140', 240, 140, 10, '', '[
        {"field": "invoice_no", "x": 180, "y": 12, "w": 55, "size": null},
        {"field": "issued_on", "x": 180, "y": 20, "w": 55, "size": null},
        {"field": "customer_name", "x": 35, "y": 30, "w": 100, "size": null},
        {"field": "account_no", "x": 35, "y": 38, "w": 100, "size": null},
        {"field": "address", "x": 35, "y": 46, "w": 150, "size": null},
        {"field": "item", "x": 15, "y": 66, "w": 80, "size": null},
        {"field": "amount", "x": 190, "y": 66, "w": 40, "size": null},
        {"field": "amount_words", "x": 45, "y": 104, "w": 120, "size": null},
        {"field": "amount", "x": 190, "y": 104, "w": 40, "size": null},
        {"field": "company_name", "x": 35, "y": 118, "w": 120, "size": null},
        {"field": "cashier", "x": 190, "y": 130, "w": 40, "size": 9}
    ]', true, 'system')
ON CONFLICT DO NOTHING;
$$;
SELECT meterhub_print_template_defaults();

-- Self-service kiosk PINs: one per account, only the argon2id hash kept.
CREATE TABLE kiosk_pin (
    account_id bigint PRIMARY KEY REFERENCES account (id) ON DELETE CASCADE,
    pin_hash   text NOT NULL,
    set_by     text NOT NULL DEFAULT meterhub_actor(),
    set_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Every kiosk query, for the lockout per account number and per address, and for the record.
CREATE TABLE kiosk_attempt (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    account_no text NOT NULL,
    ip         inet,
    ok         boolean NOT NULL
);
CREATE INDEX kiosk_attempt_account_idx ON kiosk_attempt (account_no, at);
CREATE INDEX kiosk_attempt_ip_idx ON kiosk_attempt (ip, at);
