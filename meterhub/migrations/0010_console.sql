-- Access to the console and the API: roles and permissions as data, sessions, login throttling, API
-- tokens, engineers' areas. The operation log is the audit log of 0008 (hash-chained, append-only).

-- The permissions meterhub knows; code is what routes and services check.
CREATE TABLE permission (
    code    text PRIMARY KEY CHECK (code ~ '^[a-z_]+\.[a-z_]+$'),
    name_zh text NOT NULL,
    name_en text NOT NULL
);

CREATE TABLE role (
    code        text PRIMARY KEY CHECK (code ~ '^[a-z_]{1,32}$'),
    name_zh     text NOT NULL,
    name_en     text NOT NULL,
    builtin     boolean NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One table for every grant; the command service and the billing permission hook read it too.
CREATE TABLE role_permission (
    role       text NOT NULL,
    permission text NOT NULL,
    PRIMARY KEY (role, permission)
);
INSERT INTO role_permission (role, permission)
    SELECT role, 'command.' || permission FROM command_permission
    UNION SELECT role, permission FROM billing_role_permission;
DROP TABLE command_permission;
DROP TABLE billing_role_permission;

CREATE OR REPLACE FUNCTION meterhub_command_defaults() RETURNS void LANGUAGE sql AS $$
INSERT INTO role_permission (role, permission) VALUES
    ('engineer', 'command.request'), ('engineer', 'command.cancel'),
    ('supervisor', 'command.request'), ('supervisor', 'command.cancel'), ('supervisor', 'command.emergency'),
    ('supervisor', 'command.bulk'), ('supervisor', 'command.approve'),
    ('admin', 'command.request'), ('admin', 'command.cancel'), ('admin', 'command.emergency'),
    ('admin', 'command.bulk'), ('admin', 'command.approve') ON CONFLICT DO NOTHING;
INSERT INTO command_rate_limit VALUES ('*', 60, 3600) ON CONFLICT DO NOTHING;
INSERT INTO command_rule (code, params, description) VALUES
    ('holiday', '{"kinds": ["valve_close"]}', 'No disconnection on public holidays (command_calendar).'),
    ('weekend', '{"kinds": ["valve_close"]}',
        'No disconnection on Saturdays and Sundays, unless command_calendar makes the day a working day.'),
    ('disconnect_hours', '{"kinds": ["valve_close"], "from": "08:00", "until": "16:00"}',
        'Disconnect only between from and until local time, so that re-opening is possible before night.'),
    ('notice_period', '{"kinds": ["valve_close"], "hours": 48, "purposes": ["arrears", "planned_stop", "construction"]}',
        'A planned stop needs a notice served at least `hours` before.'),
    ('protected_customer', '{"kinds": ["valve_close"]}', 'No remote disconnection of protected customers.'),
    ('disputed_bill', '{"kinds": ["valve_close"], "purposes": ["arrears", "prepaid_exhausted"]}',
        'No disconnection for arrears while a bill of the account is disputed.')
    ON CONFLICT DO NOTHING;
$$;

-- Engineers (and anyone else) limited to areas: a user with rows here acts only on meters and accounts
-- in those areas (and their sub-areas); a user with none is not limited.
CREATE TABLE staff_area (
    user_id bigint NOT NULL REFERENCES staff_user (id) ON DELETE CASCADE,
    area_id bigint NOT NULL REFERENCES area (id) ON DELETE CASCADE,
    PRIMARY KEY (user_id, area_id)
);

ALTER TABLE staff_user ADD COLUMN password_changed_at timestamptz;
ALTER TABLE staff_user ADD COLUMN language text CHECK (language IN ('zh', 'en'));

-- Server-side sessions. The cookie holds a random token; only its SHA-256 is stored.
CREATE TABLE web_session (
    token_hash  text PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES staff_user (id) ON DELETE CASCADE,
    csrf_token  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now(),
    ip          inet,
    user_agent  text NOT NULL DEFAULT '',
    ended_at    timestamptz,
    end_reason  text CHECK (end_reason IN ('logout', 'logout_all', 'idle', 'expired', 'disabled', 'password'))
);
CREATE INDEX web_session_user_idx ON web_session (user_id) WHERE ended_at IS NULL;

-- Every login attempt, for lockout and slow-down and for the record.
CREATE TABLE login_attempt (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    username text NOT NULL,
    ip       inet,
    ok       boolean NOT NULL
);
CREATE INDEX login_attempt_user_idx ON login_attempt (username, at);
CREATE INDEX login_attempt_ip_idx ON login_attempt (ip, at);

-- Tokens for programs: `Authorization: Bearer <token>`; the user's permissions apply.
CREATE TABLE api_token (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id      bigint NOT NULL REFERENCES staff_user (id) ON DELETE CASCADE,
    name         text NOT NULL,
    prefix       text NOT NULL,
    token_hash   text NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    last_used_at timestamptz,
    revoked_at   timestamptz
);

CREATE INDEX audit_log_at_idx ON audit_log (at);

-- The shipped roles, permissions and grants; also re-run by tests after emptying the tables.
CREATE FUNCTION meterhub_access_defaults() RETURNS void LANGUAGE sql AS $$
INSERT INTO permission (code, name_zh, name_en) VALUES
    ('customers.view', '查看客户与户号', 'View customers and accounts'),
    ('customers.edit', '开户、修改、过户、更名、改用气性质', 'Open, edit, transfer and rename accounts'),
    ('customers.lock', '用户锁定/解锁', 'Lock and unlock accounts'),
    ('meters.view', '查看表具与读数', 'View meters and readings'),
    ('meters.edit', '装表、换表、报停、拆表', 'Install, replace, suspend and remove meters'),
    ('commands.view', '查看阀控与充值指令', 'View valve and credit commands'),
    ('command.request', '下发阀控指令', 'Issue valve and credit commands'),
    ('command.emergency', '紧急关阀', 'Emergency close'),
    ('command.bulk', '批量指令', 'Bulk commands'),
    ('command.approve', '审批指令', 'Approve commands'),
    ('command.cancel', '撤销指令', 'Cancel commands'),
    ('readings.view', '查看抄表审核', 'View the reading review'),
    ('readings.review', '抄表审核', 'Accept, correct and estimate readings'),
    ('readings.manual', '录入抄表读数', 'Enter manual readings'),
    ('billing.view', '查看账单与台账', 'View bills, runs and ledgers'),
    ('billing.run', '执行账单计算', 'Run bills'),
    ('billing.pay', '收费', 'Take payments'),
    ('billing.reverse', '冲账', 'Reverse payments'),
    ('billing.waive', '减免', 'Waive charges and late fees'),
    ('billing.invoice_stock', '发票领用', 'Issue invoice stock'),
    ('billing.invoice_void', '发票作废', 'Void invoices'),
    ('admin.users', '用户管理', 'Manage staff users'),
    ('admin.roles', '角色权限管理', 'Edit roles and permissions'),
    ('admin.tokens', '管理 API 令牌', 'Manage API tokens'),
    ('oplog.view', '查看操作日志', 'Search the operation log')
ON CONFLICT DO NOTHING;
INSERT INTO role (code, name_zh, name_en, builtin) VALUES
    ('admin', '系统管理员', 'Administrator', true),
    ('cashier', '收费员', 'Cashier', true),
    ('billing_clerk', '营业员', 'Billing clerk', true),
    ('meter_reader', '抄表员', 'Meter reader', true),
    ('engineer', '现场工程师', 'Field engineer', true),
    ('auditor', '审计员', 'Auditor', true),
    ('supervisor', '主管', 'Supervisor', true)
ON CONFLICT DO NOTHING;
INSERT INTO role_permission (role, permission)
    SELECT 'admin', code FROM permission
    UNION ALL SELECT 'cashier', p FROM unnest(ARRAY['customers.view', 'meters.view', 'billing.view', 'billing.pay']) p
    UNION ALL SELECT 'billing_clerk', p FROM unnest(ARRAY['customers.view', 'customers.edit', 'customers.lock',
        'meters.view', 'readings.view', 'readings.review', 'billing.view', 'billing.run', 'commands.view']) p
    UNION ALL SELECT 'meter_reader', p FROM unnest(ARRAY['customers.view', 'meters.view', 'readings.view',
        'readings.manual']) p
    UNION ALL SELECT 'engineer', p FROM unnest(ARRAY['customers.view', 'meters.view', 'meters.edit',
        'commands.view', 'command.request', 'command.cancel', 'command.emergency']) p
    UNION ALL SELECT 'auditor', p FROM unnest(ARRAY['customers.view', 'meters.view', 'commands.view',
        'readings.view', 'billing.view', 'oplog.view']) p
    UNION ALL SELECT 'supervisor', p FROM unnest(ARRAY['customers.view', 'customers.edit', 'customers.lock',
        'meters.view', 'meters.edit', 'commands.view', 'command.request', 'command.cancel', 'command.emergency',
        'command.bulk', 'command.approve', 'readings.view', 'readings.review', 'billing.view', 'billing.run',
        'billing.pay', 'billing.reverse', 'billing.waive', 'billing.invoice_stock', 'billing.invoice_void',
        'oplog.view']) p
ON CONFLICT DO NOTHING;
$$;
SELECT meterhub_access_defaults();
