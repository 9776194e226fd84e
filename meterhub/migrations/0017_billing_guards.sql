-- Billing guards: idempotent payment requests, and a cashier's settled day (结账) closed to payments.

-- An idempotency key per actor (the cashier or the program's user): a retried request with the same key is
-- answered with the payment (or batch) the first one booked; `request` is what that request asked for
-- (channel, account, amount as asked, method; a batch's condition), so that the same key with a different
-- request is refused. Written in the payment's own transaction, under a per-key advisory lock
-- (billing.payments); the primary key backs the lock up. Append-only.
CREATE TABLE payment_idempotency (
    actor           text NOT NULL,
    idempotency_key text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 200),
    request         jsonb NOT NULL CHECK (jsonb_typeof(request) = 'object'),
    payment_id      bigint UNIQUE REFERENCES payment (id),
    batch_id        bigint UNIQUE REFERENCES payment_batch (id),
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (actor, idempotency_key),
    CHECK (num_nonnulls(payment_id, batch_id) = 1)
);
CREATE TRIGGER payment_idempotency_append_only BEFORE UPDATE OR DELETE ON payment_idempotency
    FOR EACH ROW EXECUTE FUNCTION meterhub_forbid_change();

-- A settled day of a cashier (cashier_settlement) takes no more payments by that cashier, as it takes no
-- more invoices or voids (0009). The payment services check first and wait for a concurrent settlement
-- (shared per-cashier advisory lock); this trigger refuses any other writer.
CREATE FUNCTION meterhub_payment_settled_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM cashier_settlement s WHERE s.cashier = NEW.actor AND s.day = NEW.paid_on) THEN
        RAISE EXCEPTION '% is settled for %: no more payments', NEW.actor, NEW.paid_on
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER payment_settled_guard BEFORE INSERT ON payment
    FOR EACH ROW EXECUTE FUNCTION meterhub_payment_settled_guard();

-- A cashier's payments of a day: day totals, settlement and reconciliation read them this way.
CREATE INDEX payment_actor_day_idx ON payment (actor, paid_on);
