-- Invoice services (billing.invoices) on the invoice tables of 0006: ranges never overlap, invoices are never
-- deleted or rewritten (voiding sets who, when and why once), a settled day of a cashier takes no more
-- invoices or voids, every print is logged, and a settlement also counts reversals and voided amounts.

-- Ranges of the same prefix never overlap; only next_no moves, and only forward. The advisory lock per
-- prefix serialises concurrent inserts so the check sees every committed range.
CREATE FUNCTION meterhub_invoice_range_guard() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    other invoice_range%ROWTYPE;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF (NEW.prefix, NEW.first_no, NEW.last_no, NEW.cashier, NEW.issued_by, NEW.issued_at)
           IS DISTINCT FROM (OLD.prefix, OLD.first_no, OLD.last_no, OLD.cashier, OLD.issued_by, OLD.issued_at)
           OR NEW.next_no < OLD.next_no THEN
            RAISE EXCEPTION 'invoice range %: only next_no may change, and only forward', OLD.id
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        RETURN NEW;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('meterhub.invoice_range:' || NEW.prefix));
    SELECT * INTO other FROM invoice_range r
     WHERE r.prefix = NEW.prefix AND r.first_no <= NEW.last_no AND NEW.first_no <= r.last_no
     ORDER BY r.first_no LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'exclusion_violation', MESSAGE = format(
            'invoice numbers %s%s-%s%s overlap range %s (%s%s-%s%s) of %s', NEW.prefix, NEW.first_no, NEW.prefix,
            NEW.last_no, other.id, other.prefix, other.first_no, other.prefix, other.last_no, other.cashier);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER invoice_range_guard BEFORE INSERT OR UPDATE ON invoice_range
    FOR EACH ROW EXECUTE FUNCTION meterhub_invoice_range_guard();
CREATE TRIGGER invoice_range_no_delete BEFORE DELETE ON invoice_range
    FOR EACH ROW EXECUTE FUNCTION meterhub_forbid_change();

ALTER TABLE invoice ADD COLUMN voided_on date;
ALTER TABLE invoice ADD COLUMN void_settlement_id bigint REFERENCES cashier_settlement (id);
ALTER TABLE invoice ADD CONSTRAINT invoice_void_complete CHECK (
    (status = 'void') = (voided_by IS NOT NULL AND voided_at IS NOT NULL AND voided_on IS NOT NULL
                         AND length(trim(coalesce(void_reason, ''))) > 0));
ALTER TABLE invoice ADD CONSTRAINT invoice_amount_positive CHECK (amount > 0);
ALTER TABLE invoice ADD CONSTRAINT invoice_print_count_positive CHECK (print_count >= 1);

CREATE FUNCTION meterhub_invoice_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF EXISTS (SELECT 1 FROM cashier_settlement s WHERE s.cashier = NEW.cashier AND s.day = NEW.issued_on) THEN
            RAISE EXCEPTION '% is settled for %: no more invoices', NEW.cashier, NEW.issued_on
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        RETURN NEW;
    END IF;
    IF (NEW.invoice_no, NEW.range_id, NEW.payment_id, NEW.cashier, NEW.amount, NEW.issued_on, NEW.issued_at)
       IS DISTINCT FROM
       (OLD.invoice_no, OLD.range_id, OLD.payment_id, OLD.cashier, OLD.amount, OLD.issued_on, OLD.issued_at)
       OR NEW.print_count < OLD.print_count
       OR (OLD.settlement_id IS NOT NULL AND NEW.settlement_id IS DISTINCT FROM OLD.settlement_id)
       OR (OLD.void_settlement_id IS NOT NULL AND NEW.void_settlement_id IS DISTINCT FROM OLD.void_settlement_id)
       OR (OLD.status = 'void' AND (NEW.status, NEW.voided_by, NEW.voided_at, NEW.voided_on, NEW.void_reason)
           IS DISTINCT FROM (OLD.status, OLD.voided_by, OLD.voided_at, OLD.voided_on, OLD.void_reason)) THEN
        RAISE EXCEPTION 'invoice %: only voiding, printing and settling may change it', OLD.invoice_no
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF OLD.status = 'issued' AND NEW.status = 'void'
       AND EXISTS (SELECT 1 FROM cashier_settlement s WHERE s.cashier = NEW.cashier AND s.day = NEW.voided_on) THEN
        RAISE EXCEPTION '% is settled for %: no more voids', NEW.cashier, NEW.voided_on
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER invoice_guard BEFORE INSERT OR UPDATE ON invoice
    FOR EACH ROW EXECUTE FUNCTION meterhub_invoice_guard();
CREATE TRIGGER invoice_no_delete BEFORE DELETE ON invoice
    FOR EACH ROW EXECUTE FUNCTION meterhub_forbid_change();
CREATE TRIGGER invoice_history AFTER INSERT OR UPDATE ON invoice
    FOR EACH ROW EXECUTE FUNCTION meterhub_record_history();
CREATE INDEX invoice_cashier_voided_idx ON invoice (cashier, voided_on) WHERE voided_on IS NOT NULL;

-- Every print of an invoice: the first and each reprint.
CREATE TABLE invoice_print (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    invoice_id bigint NOT NULL REFERENCES invoice (id),
    printed_at timestamptz NOT NULL DEFAULT now(),
    printed_by text NOT NULL,
    reprint    boolean NOT NULL
);
CREATE TRIGGER invoice_print_append_only BEFORE UPDATE OR DELETE ON invoice_print
    FOR EACH ROW EXECUTE FUNCTION meterhub_forbid_change();

-- Settlement totals of reversals (冲账 of the cashier's payments booked that day) and of voided invoices.
-- A settlement is final: only its reconciliation (核销) is filled in, once.
ALTER TABLE cashier_settlement ADD COLUMN reversals integer NOT NULL DEFAULT 0;
ALTER TABLE cashier_settlement ADD COLUMN reversal_amount numeric(16, 2) NOT NULL DEFAULT 0;
ALTER TABLE cashier_settlement ADD COLUMN void_amount numeric(16, 2) NOT NULL DEFAULT 0;

CREATE FUNCTION meterhub_settlement_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.reconciled_at IS NOT NULL
       OR (to_jsonb(NEW) - ARRAY['reconciled_by', 'reconciled_at'])
          IS DISTINCT FROM (to_jsonb(OLD) - ARRAY['reconciled_by', 'reconciled_at']) THEN
        RAISE EXCEPTION 'settlement % of % for % is final', OLD.id, OLD.cashier, OLD.day
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER cashier_settlement_guard BEFORE UPDATE ON cashier_settlement
    FOR EACH ROW EXECUTE FUNCTION meterhub_settlement_guard();
CREATE TRIGGER cashier_settlement_no_delete BEFORE DELETE ON cashier_settlement
    FOR EACH ROW EXECUTE FUNCTION meterhub_forbid_change();

INSERT INTO billing_role_permission (role, permission) VALUES
    ('admin', 'billing.invoice_stock'), ('admin', 'billing.invoice_void'),
    ('supervisor', 'billing.invoice_stock'), ('supervisor', 'billing.invoice_void')
ON CONFLICT DO NOTHING;
