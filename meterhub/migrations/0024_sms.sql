-- SMS platform (短信平台, meterhub.sms and meterhub.notices): templates with placeholders, messages to
-- customers and staff with their delivery status, the outbox the default gateway writes, and the automatic
-- notices with their settings. Templates and notice settings keep their change history (change_history,
-- 0001); a message is never deleted and every change of its state is kept in sms_message_event.

CREATE TABLE sms_template (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code       text NOT NULL UNIQUE CHECK (code ~ '^[a-z0-9_.-]{1,40}$'),
    name       text NOT NULL CHECK (length(trim(name)) BETWEEN 1 AND 100),
    body       text NOT NULL CHECK (length(trim(body)) BETWEEN 1 AND 500),
    active     boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER sms_template_touch BEFORE UPDATE ON sms_template
    FOR EACH ROW EXECUTE FUNCTION meterhub_touch_updated_at();
CREATE TRIGGER sms_template_history AFTER INSERT OR UPDATE OR DELETE ON sms_template
    FOR EACH ROW EXECUTE FUNCTION meterhub_record_history();

-- One send: by a person (to a condition or single recipients) or by the notice scan.
CREATE TABLE sms_batch (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    origin      text NOT NULL CHECK (origin IN ('manual', 'notice')),
    template_id bigint REFERENCES sms_template (id),
    body        text NOT NULL,                 -- the template text as sent (placeholders not yet filled)
    condition   jsonb NOT NULL DEFAULT '{}',
    recipients  integer NOT NULL,
    created_by  text NOT NULL DEFAULT meterhub_actor(),
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TRIGGER sms_batch_append_only BEFORE UPDATE OR DELETE ON sms_batch
    FOR EACH ROW EXECUTE FUNCTION meterhub_forbid_change();

-- A message to one phone: queued → sent → delivered | failed (with the reason); a retryable failure
-- stays queued with next_attempt_at later. idempotency_key makes a notice for one event exactly one row.
CREATE TABLE sms_message (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    batch_id            bigint REFERENCES sms_batch (id),
    notice_kind         text,
    idempotency_key     text UNIQUE,
    recipient_kind      text NOT NULL CHECK (recipient_kind IN ('customer', 'staff', 'phone')),
    account_id          bigint REFERENCES account (id),
    customer_id         bigint REFERENCES customer (id),
    staff_user_id       bigint REFERENCES staff_user (id),
    recipient_name      text NOT NULL DEFAULT '',
    phone               text NOT NULL,
    body                text NOT NULL,
    state               text NOT NULL DEFAULT 'queued'
        CHECK (state IN ('queued', 'sent', 'delivered', 'failed')),
    attempts            integer NOT NULL DEFAULT 0,
    next_attempt_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    gateway             text,
    provider_message_id text,
    error               text NOT NULL DEFAULT '',
    created_by          text NOT NULL DEFAULT meterhub_actor(),
    created_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    sent_at             timestamptz,
    finished_at         timestamptz,               -- delivered or failed
    updated_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK (state <> 'failed' OR error <> '')
);
CREATE INDEX sms_message_queue_idx ON sms_message (next_attempt_at, id) WHERE state = 'queued';
CREATE INDEX sms_message_created_idx ON sms_message (created_at, id);
CREATE INDEX sms_message_account_idx ON sms_message (account_id) WHERE account_id IS NOT NULL;
CREATE INDEX sms_message_provider_idx ON sms_message (provider_message_id) WHERE provider_message_id IS NOT NULL;
CREATE TRIGGER sms_message_touch BEFORE UPDATE ON sms_message
    FOR EACH ROW EXECUTE FUNCTION meterhub_touch_updated_at();
CREATE TRIGGER sms_message_no_delete BEFORE DELETE ON sms_message
    FOR EACH ROW EXECUTE FUNCTION meterhub_forbid_change();

-- Every state a message went through, with the attempt and what the gateway said (append-only).
CREATE TABLE sms_message_event (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id bigint NOT NULL REFERENCES sms_message (id),
    at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    state      text NOT NULL,
    attempts   integer NOT NULL,
    error      text NOT NULL DEFAULT '',
    actor      text NOT NULL DEFAULT meterhub_actor()
);
CREATE INDEX sms_message_event_idx ON sms_message_event (message_id, id);
CREATE TRIGGER sms_message_event_append_only BEFORE UPDATE OR DELETE ON sms_message_event
    FOR EACH ROW EXECUTE FUNCTION meterhub_forbid_change();

CREATE FUNCTION meterhub_sms_message_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.state IS DISTINCT FROM OLD.state OR NEW.attempts IS DISTINCT FROM OLD.attempts THEN
        INSERT INTO sms_message_event (message_id, state, attempts, error)
        VALUES (NEW.id, NEW.state, NEW.attempts, NEW.error);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER sms_message_event AFTER INSERT OR UPDATE ON sms_message
    FOR EACH ROW EXECUTE FUNCTION meterhub_sms_message_event();

-- The default gateway: a message handed over is written here (nothing is lost without a provider); an SMS
-- modem or another system takes them from here. One row per message (append-only).
CREATE TABLE sms_outbox (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id bigint NOT NULL UNIQUE REFERENCES sms_message (id),
    phone      text NOT NULL,
    body       text NOT NULL,
    written_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TRIGGER sms_outbox_append_only BEFORE UPDATE OR DELETE ON sms_outbox
    FOR EACH ROW EXECUTE FUNCTION meterhub_forbid_change();

-- The automatic notices: on or off, the template they use and their knobs (params, see meterhub.notices).
CREATE TABLE sms_notice_rule (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind          text NOT NULL UNIQUE CHECK (kind IN (
                      'reading', 'arrears', 'bank_success', 'bank_failure', 'supply_stop', 'low_credit',
                      'valve_closed')),
    enabled       boolean NOT NULL DEFAULT true,
    template_code text NOT NULL REFERENCES sms_template (code) ON UPDATE CASCADE,
    params        jsonb NOT NULL DEFAULT '{}',
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER sms_notice_rule_touch BEFORE UPDATE ON sms_notice_rule
    FOR EACH ROW EXECUTE FUNCTION meterhub_touch_updated_at();
CREATE TRIGGER sms_notice_rule_history AFTER INSERT OR UPDATE OR DELETE ON sms_notice_rule
    FOR EACH ROW EXECUTE FUNCTION meterhub_record_history();

-- The shipped templates and notice settings (Chinese texts); re-run by tests after emptying the tables.
-- Existing rows are kept as people changed them.
CREATE FUNCTION meterhub_sms_defaults() RETURNS void LANGUAGE sql AS $$
INSERT INTO sms_template (code, name, body) VALUES
    ('notice.reading', '抄表通知',
     '尊敬的{customer_name}，您的户号{account_no}本期（{period}）用气{volume}立方米，应缴燃气费{amount}元，请于{due_date}前缴纳。'),
    ('notice.arrears', '欠费提醒',
     '尊敬的{customer_name}，您的户号{account_no}已欠燃气费{amount}元（最早到期日{due_date}，已逾期{days_overdue}天），请尽快缴纳，以免影响正常用气。'),
    ('notice.bank_success', '银行代扣成功',
     '尊敬的{customer_name}，您的户号{account_no}燃气费{amount}元已由银行代扣成功，感谢您的支持。'),
    ('notice.bank_failure', '银行代扣失败',
     '尊敬的{customer_name}，您的户号{account_no}燃气费{amount}元银行代扣未成功（{reason}），请及时到营业厅或通过其他方式缴纳。'),
    ('notice.supply_stop', '计划停气通知',
     '尊敬的{customer_name}，因{reason}，您的户号{account_no}（{address}）将于{stop_after}后计划停气，请提前做好准备。'),
    ('notice.low_credit', '预付费余额不足',
     '尊敬的{customer_name}，您的户号{account_no}（表号{meter_no}）预付费余额仅剩{balance}元，请及时充值，以免关阀停气。'),
    ('notice.valve_closed', '关阀通知',
     '尊敬的{customer_name}，您的户号{account_no}燃气表{meter_no}已于{closed_at}关阀。如有疑问请联系客服。')
    ON CONFLICT (code) DO NOTHING;
INSERT INTO sms_notice_rule (kind, template_code, params) VALUES
    ('reading', 'notice.reading', '{"lookback_days": 7}'),
    ('arrears', 'notice.arrears', '{"min_amount": "50.00", "min_days_overdue": 15, "repeat_days": 0}'),
    ('bank_success', 'notice.bank_success', '{"lookback_days": 7}'),
    ('bank_failure', 'notice.bank_failure', '{"lookback_days": 7}'),
    ('supply_stop', 'notice.supply_stop', '{"lookback_days": 7}'),
    ('low_credit', 'notice.low_credit', '{"lookback_days": 7}'),
    ('valve_closed', 'notice.valve_closed', '{"lookback_days": 7}')
    ON CONFLICT (kind) DO NOTHING;
$$;
SELECT meterhub_sms_defaults();
