-- Meter work done by staff: installation (装表), replacement (换表), suspension (报停), resumption (恢复用气)
-- and removal (拆表). `meter` keeps the current status and `change_history` its column changes; this
-- table keeps what only the person on site knows: the day or moment, the register read, the reason.
CREATE TABLE meter_action (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    meter_id       bigint NOT NULL REFERENCES meter (id),
    account_id     bigint REFERENCES account (id),
    action         text NOT NULL CHECK (action IN (
                       'install', 'replace_out', 'replace_in', 'suspend', 'resume', 'remove')),
    at             timestamptz NOT NULL,          -- when it was done on site
    reading        numeric(14, 3) CHECK (reading IS NULL OR reading >= 0),  -- register read on site
    other_meter_id bigint REFERENCES meter (id),  -- a replacement's other meter
    reason         text NOT NULL DEFAULT '',
    done_by        text NOT NULL DEFAULT meterhub_actor(),
    recorded_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX meter_action_meter_idx ON meter_action (meter_id, at);
CREATE TRIGGER meter_action_append_only BEFORE UPDATE OR DELETE ON meter_action
    FOR EACH ROW EXECUTE FUNCTION meterhub_forbid_change();
