-- Bill runs over a whole utility (bench/RESULTS.md, "Bill run: 1,000,000 accounts"): a run writes a million
-- bills, some 2.4 million bill lines and a million ledger charges in one transaction, and every index entry
-- and every per-row trigger of those tables is paid a million times over, in CPU and in WAL. These indexes
-- cost more than they gave.

-- bill_line: the primary key (bill_id, line_no) gives way to a block-range index on bill_id. Lines are
-- written only by bill runs, in the transaction that reserved their bills' ids in one block, in bill-id
-- order, and ids grow from run to run; the table is append-only. So a bill's lines lie together and in
-- order, and a block range index finds them (a console page reads one range of a few pages). Line numbers
-- are unique per bill because the run numbers them 1, 2, … when it prices the bill.
ALTER TABLE bill_line DROP CONSTRAINT bill_line_pkey;
CREATE INDEX bill_line_bill_idx ON bill_line USING brin (bill_id) WITH (pages_per_range = 16);

-- bill: a run's bills have consecutive ids and are written together, so they lie together too.
DROP INDEX bill_run_idx;
CREATE INDEX bill_run_idx ON bill USING brin (bill_run_id) WITH (pages_per_range = 16);

-- ledger_entry: a reversal reverses at most one entry. The unique constraint on reverses_id also indexed the
-- NULL of every other entry (all the charges); a partial unique index says the same without them.
ALTER TABLE ledger_entry DROP CONSTRAINT ledger_entry_reverses_id_key;
CREATE UNIQUE INDEX ledger_entry_reverses_idx ON ledger_entry (reverses_id) WHERE reverses_id IS NOT NULL;

-- ledger_entry's foreign keys to payment, waiver and ledger_entry queue an after-trigger event per inserted
-- row and key even when the key is NULL, as it is on every charge. A constraint trigger with a WHEN clause
-- checks the same keys on the rows that have one, with the same error (foreign_key_violation). The
-- referenced rows cannot go away: payment, waiver and ledger_entry are append-only (their BEFORE UPDATE OR
-- DELETE triggers refuse), and no key of this table is ever updated.
ALTER TABLE ledger_entry DROP CONSTRAINT ledger_entry_payment_id_fkey;
ALTER TABLE ledger_entry DROP CONSTRAINT ledger_entry_waiver_id_fkey;
ALTER TABLE ledger_entry DROP CONSTRAINT ledger_entry_reverses_id_fkey;
CREATE FUNCTION meterhub_ledger_entry_keys() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.payment_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM payment WHERE id = NEW.payment_id) THEN
        RAISE EXCEPTION 'ledger_entry: payment % does not exist', NEW.payment_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF NEW.waiver_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM waiver WHERE id = NEW.waiver_id) THEN
        RAISE EXCEPTION 'ledger_entry: waiver % does not exist', NEW.waiver_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF NEW.reverses_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM ledger_entry WHERE id = NEW.reverses_id) THEN
        RAISE EXCEPTION 'ledger_entry: entry % does not exist', NEW.reverses_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER ledger_entry_keys AFTER INSERT ON ledger_entry
    FOR EACH ROW WHEN (NEW.payment_id IS NOT NULL OR NEW.waiver_id IS NOT NULL OR NEW.reverses_id IS NOT NULL)
    EXECUTE FUNCTION meterhub_ledger_entry_keys();
