-- Valve and credit commands, the audit log they hang off, approvals, rate limits and command rules.

-- The audit log: append-only and hash-chained. Each row's hash covers its content and the previous
-- row's hash; the chain head lives in audit_chain (one row, locked by each insert), so concurrent
-- writers chain in commit order. meterhub_audit_verify() lists the rows that do not add up.
CREATE TABLE audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    seq         bigint NOT NULL UNIQUE,
    at          timestamptz NOT NULL,
    actor       text NOT NULL,           -- a person's username, or system:<what> for automatic actions
    action      text NOT NULL,           -- e.g. command.request, command.approve, login, tariff.update
    object_type text NOT NULL,
    object_id   text,
    detail      jsonb NOT NULL DEFAULT '{}',
    ip          inet,
    prev_hash   text NOT NULL,
    hash        text NOT NULL
);
CREATE INDEX audit_log_object_idx ON audit_log (object_type, object_id);
CREATE INDEX audit_log_actor_idx ON audit_log (actor, at);

CREATE TABLE audit_chain (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    seq       bigint NOT NULL,
    hash      text NOT NULL
);

CREATE FUNCTION meterhub_audit_row_hash(
    p_seq bigint, p_prev text, p_at timestamptz, p_actor text, p_action text, p_object_type text,
    p_object_id text, p_detail jsonb, p_ip inet
) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT encode(sha256(convert_to(concat_ws('|',
        p_seq::text, p_prev, to_char(p_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'), p_actor, p_action,
        p_object_type, coalesce(p_object_id, ''), p_detail::text, coalesce(host(p_ip), '')), 'UTF8')), 'hex')
$$;

CREATE FUNCTION meterhub_audit_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    head audit_chain%ROWTYPE;
BEGIN
    INSERT INTO audit_chain (singleton, seq, hash) VALUES (true, 0, repeat('0', 64)) ON CONFLICT DO NOTHING;
    SELECT * INTO head FROM audit_chain FOR UPDATE;
    NEW.seq := head.seq + 1;
    NEW.prev_hash := head.hash;
    NEW.at := clock_timestamp();
    NEW.hash := meterhub_audit_row_hash(NEW.seq, NEW.prev_hash, NEW.at, NEW.actor, NEW.action, NEW.object_type,
                                        NEW.object_id, NEW.detail, NEW.ip);
    UPDATE audit_chain SET seq = NEW.seq, hash = NEW.hash;
    RETURN NEW;
END $$;

CREATE TRIGGER audit_log_chain BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION meterhub_audit_chain();
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION meterhub_forbid_change();

-- Rows whose hash or link is wrong, and gaps (deleted rows), in chain order.
CREATE FUNCTION meterhub_audit_verify() RETURNS TABLE (seq bigint, id bigint, problem text)
LANGUAGE sql STABLE AS $$
    SELECT s.seq, s.id,
           CASE WHEN s.hash <> s.recomputed THEN 'hash_mismatch'
                WHEN s.seq <> coalesce(s.prev_seq + 1, 1) THEN 'gap'
                ELSE 'broken_link' END
      FROM (SELECT a.seq, a.id, a.hash, a.prev_hash,
                   meterhub_audit_row_hash(a.seq, a.prev_hash, a.at, a.actor, a.action, a.object_type,
                                           a.object_id, a.detail, a.ip) AS recomputed,
                   lag(a.seq) OVER w AS prev_seq, lag(a.hash) OVER w AS prev_row_hash
              FROM audit_log a WINDOW w AS (ORDER BY a.seq)) s
     WHERE s.hash <> s.recomputed
        OR s.seq <> coalesce(s.prev_seq + 1, 1)
        OR s.prev_hash <> coalesce(s.prev_row_hash, repeat('0', 64))
     ORDER BY s.seq
$$;

-- Who may do what with commands. Roles are staff_user.role.
CREATE TABLE command_permission (
    role       text NOT NULL,
    permission text NOT NULL CHECK (permission IN ('request', 'emergency', 'bulk', 'approve', 'cancel')),
    PRIMARY KEY (role, permission)
);

-- Commands per user and window; the row for username '*' applies to everyone without a row of their own.
CREATE TABLE command_rate_limit (
    username     text PRIMARY KEY,
    max_commands integer NOT NULL CHECK (max_commands >= 0),
    window_s     integer NOT NULL CHECK (window_s > 0)
);

-- Command rules as data. Each row is one rule; `params` holds its knobs. Emergency closes skip them all.
CREATE TABLE command_rule (
    code        text PRIMARY KEY,  -- also the reason code of a refusal
    enabled     boolean NOT NULL DEFAULT true,
    params      jsonb NOT NULL DEFAULT '{}',
    description text NOT NULL DEFAULT ''
);

-- The shipped defaults (permissions, rate limit, rules); also re-run by tests after emptying the tables.
CREATE FUNCTION meterhub_command_defaults() RETURNS void LANGUAGE sql AS $$
INSERT INTO command_permission (role, permission) VALUES
    ('engineer', 'request'), ('engineer', 'cancel'),
    ('supervisor', 'request'), ('supervisor', 'cancel'), ('supervisor', 'emergency'), ('supervisor', 'bulk'),
    ('supervisor', 'approve'),
    ('admin', 'request'), ('admin', 'cancel'), ('admin', 'emergency'), ('admin', 'bulk'), ('admin', 'approve') ON CONFLICT DO NOTHING;
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
SELECT meterhub_command_defaults();

CREATE TABLE command_calendar (
    day  date PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('holiday', 'workday')),  -- workday: an adjusted working weekend day
    note text NOT NULL DEFAULT ''
);

-- A notice of a planned stop served to an account (letter, SMS, door tag).
CREATE TABLE command_notice (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id  bigint NOT NULL REFERENCES account (id),
    served_at   timestamptz NOT NULL,
    channel     text NOT NULL DEFAULT 'letter',
    served_by   text NOT NULL,
    note        text NOT NULL DEFAULT ''
);
CREATE INDEX command_notice_account_idx ON command_notice (account_id, served_at);

ALTER TABLE account ADD COLUMN bill_disputed boolean NOT NULL DEFAULT false;
-- NB-IoT meters in power saving: commands wait for their next uplink (the receive window).
ALTER TABLE meter ADD COLUMN sleepy boolean NOT NULL DEFAULT false;

-- A bulk request (a community, a list from arrears): above the configured size a second person approves.
CREATE TABLE command_bulk (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind         text NOT NULL,
    purpose      text NOT NULL,
    reason       text NOT NULL,
    size         integer NOT NULL,
    state        text NOT NULL CHECK (state IN ('awaiting_approval', 'approved', 'rejected', 'released')),
    requested_by text NOT NULL,
    approved_by  text CHECK (approved_by IS NULL OR approved_by <> requested_by),
    requested_at timestamptz NOT NULL DEFAULT now(),
    decided_at   timestamptz,
    audit_id     bigint NOT NULL REFERENCES audit_log (id)
);

CREATE TABLE meter_command (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    meter_id        bigint NOT NULL REFERENCES meter (id),
    kind            text NOT NULL CHECK (kind IN ('valve_close', 'valve_open', 'credit', 'read')),
    sent_kind       text,                   -- what went on the wire: valve_arm where the meter supports it
    state           text NOT NULL DEFAULT 'requested' CHECK (state IN (
                        'requested', 'awaiting_approval', 'queued', 'sent', 'confirmed', 'failed', 'unknown',
                        'reconciled', 'cancelled', 'superseded', 'refused')),
    reason_code     text,                   -- why refused, failed, cancelled, unknown; outcome of a reconcile
    purpose         text NOT NULL DEFAULT 'other',
    reason          text NOT NULL,          -- why the person asked
    requested_by    text NOT NULL,
    approved_by     text CHECK (approved_by IS NULL OR approved_by <> requested_by),
    emergency       boolean NOT NULL DEFAULT false,
    bulk_id         bigint REFERENCES command_bulk (id),
    superseded_by   bigint REFERENCES meter_command (id),
    idempotency_key text NOT NULL UNIQUE,
    correlation_id  text NOT NULL UNIQUE,
    amount          numeric(14, 2) CHECK (amount IS NULL OR amount > 0),
    purchase_seq    integer,
    attempts        integer NOT NULL DEFAULT 0,
    requested_at    timestamptz NOT NULL DEFAULT now(),
    queued_at       timestamptz,
    sent_at         timestamptz,
    deadline_at     timestamptz,            -- when the current wait (reply or read-back) ends
    finished_at     timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    reply           jsonb,
    audit_id        bigint NOT NULL REFERENCES audit_log (id),
    CHECK ((kind = 'credit') = (amount IS NOT NULL))
);
CREATE INDEX meter_command_meter_idx ON meter_command (meter_id, id);
CREATE INDEX meter_command_active_idx ON meter_command (state, deadline_at)
    WHERE state IN ('queued', 'sent', 'unknown');
CREATE INDEX meter_command_user_idx ON meter_command (requested_by, requested_at);
-- One command in flight per meter: replies without a correlation id match it, and nothing overtakes it.
CREATE UNIQUE INDEX meter_command_one_in_flight ON meter_command (meter_id) WHERE state IN ('sent', 'unknown');
CREATE TRIGGER meter_command_touch BEFORE UPDATE ON meter_command
    FOR EACH ROW EXECUTE FUNCTION meterhub_touch_updated_at();

-- The dispatcher LISTENs on meter_command; the payload is "<id>:<state>".
CREATE FUNCTION meterhub_command_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.state IS DISTINCT FROM OLD.state THEN
        PERFORM pg_notify('meter_command', NEW.id || ':' || NEW.state);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER meter_command_notify AFTER INSERT OR UPDATE ON meter_command
    FOR EACH ROW EXECUTE FUNCTION meterhub_command_notify();

-- Meter-based prepayment: the purchase sequence per meter, and the top-ups the meter accepted
-- (one row per command, so a retried write is counted once).
CREATE TABLE meter_purchase_seq (
    meter_id bigint PRIMARY KEY REFERENCES meter (id),
    last_seq integer NOT NULL
);
CREATE TABLE meter_credit (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    meter_id     bigint NOT NULL REFERENCES meter (id),
    command_id   bigint NOT NULL UNIQUE REFERENCES meter_command (id),
    purchase_seq integer NOT NULL,
    amount       numeric(14, 2) NOT NULL,
    booked_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (meter_id, purchase_seq)
);
CREATE TRIGGER meter_credit_append_only BEFORE UPDATE OR DELETE ON meter_credit
    FOR EACH ROW EXECUTE FUNCTION meterhub_forbid_change();
