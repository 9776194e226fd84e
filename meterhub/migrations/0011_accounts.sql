-- Account services (meterhub.accounts): 开户, edits, 过户, 更名, 改用气性质, 锁定/解锁. change_history (0001)
-- keeps what changed column by column; the tables here keep what the columns cannot say: which action it
-- was, why, from which date, and which change_history rows it wrote.

-- One row per action a person took on an account or its customer. history_ids are the change_history rows
-- the action's transaction wrote for the account, its customers and its meters, so that the history of an
-- account shows each change with the action and the reason behind it.
CREATE TABLE account_action (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id   bigint NOT NULL REFERENCES account (id),
    customer_id  bigint REFERENCES customer (id),  -- the customer acted on; for a transfer, the new owner
    kind         text NOT NULL
        CHECK (kind IN ('open', 'edit', 'transfer', 'rename', 'usage_type', 'lock', 'unlock')),
    reason       text NOT NULL DEFAULT '',
    effective_on date,
    detail       jsonb NOT NULL DEFAULT '{}',
    history_ids  bigint[] NOT NULL DEFAULT '{}',
    actor        text NOT NULL DEFAULT meterhub_actor(),
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK (kind NOT IN ('transfer', 'rename', 'usage_type', 'lock', 'unlock') OR length(trim(reason)) > 0)
);
CREATE INDEX account_action_account_idx ON account_action (account_id, at);
CREATE INDEX account_action_customer_idx ON account_action (customer_id) WHERE customer_id IS NOT NULL;
CREATE TRIGGER account_action_append_only BEFORE UPDATE OR DELETE ON account_action
    FOR EACH ROW EXECUTE FUNCTION meterhub_forbid_change();

-- 改用气性质: the usage type of an account from a date on. account.usage_type_id is the type in force now;
-- these rows are its timeline, in the shape of account_billing_mode (0006): the type on day d is the
-- new_usage_type_id of the last change with effective_from <= d (latest id on the same day), else the
-- old_usage_type_id of the first change, else account.usage_type_id.
CREATE TABLE account_usage_type_change (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id        bigint NOT NULL REFERENCES account (id),
    effective_from    date NOT NULL,
    old_usage_type_id bigint NOT NULL REFERENCES usage_type (id),
    new_usage_type_id bigint NOT NULL REFERENCES usage_type (id),
    action_id         bigint NOT NULL REFERENCES account_action (id),
    CHECK (old_usage_type_id <> new_usage_type_id)
);
CREATE INDEX account_usage_type_change_idx ON account_usage_type_change (account_id, effective_from, id);
CREATE TRIGGER account_usage_type_change_append_only BEFORE UPDATE OR DELETE ON account_usage_type_change
    FOR EACH ROW EXECUTE FUNCTION meterhub_forbid_change();

-- Numbers handed out when 开户 leaves them blank (meterhub.accounts skips numbers already taken).
CREATE SEQUENCE customer_no_seq;
CREATE SEQUENCE account_no_seq;

-- Search by any part of an account, card, customer or phone number, a name or an address: trigram
-- indexes where pg_trgm can be installed (PostgreSQL ≥ 13 lets a database owner install it); without
-- them the same queries work by scanning.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm') THEN
        BEGIN
            CREATE EXTENSION IF NOT EXISTS pg_trgm;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'pg_trgm not installed (%): customer search works without its indexes', SQLERRM;
        END;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm') THEN
        CREATE INDEX account_no_trgm_idx ON account USING gin (account_no gin_trgm_ops);
        CREATE INDEX account_card_no_trgm_idx ON account USING gin (card_no gin_trgm_ops);
        CREATE INDEX account_address_trgm_idx ON account USING gin (address gin_trgm_ops);
        CREATE INDEX customer_no_trgm_idx ON customer USING gin (customer_no gin_trgm_ops);
        CREATE INDEX customer_name_trgm_idx ON customer USING gin (name gin_trgm_ops);
        CREATE INDEX customer_phone_trgm_idx ON customer USING gin (phone gin_trgm_ops);
        CREATE INDEX customer_id_number_trgm_idx ON customer USING gin (id_number gin_trgm_ops);
        CREATE INDEX customer_address_trgm_idx ON customer USING gin (address gin_trgm_ops);
    END IF;
END $$;
