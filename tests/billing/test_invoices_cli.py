"""`meterhub bill invoice …` as a user runs it, against the test database."""

from __future__ import annotations

from pathlib import Path

from billing.invoices import issue_invoice
from billing.payments import pay
from meterhub.store import Store
from tests.billing.ledger_helpers import day
from tests.billing.test_invoices import counter
from tests.meterhub.test_cli import meterhub


def test_issue_stock_void_settle_and_reconcile(store: Store, tmp_path: Path) -> None:
    counter(store)
    env = {"METERHUB_DATABASE_URL": store.url}

    def run(*args: str) -> tuple[int, str, str]:
        done = meterhub("bill", "invoice", *args, cwd=tmp_path, env=env)
        return done.returncode, done.stdout, done.stderr

    code, out, err = run("issue-range", "--cashier", "clerk", "--first", "1", "--last", "10", "--prefix", "GD",
                         "-u", "boss")  # fmt: skip
    assert code == 0, err
    assert "GD00000001-GD00000010 (10 numbers) issued to clerk" in out
    code, _, err = run("issue-range", "--cashier", "clerk", "--first", "20", "--last", "29", "-u", "clerk")
    assert code == 2 and "clerk may not do billing.invoice_stock" in err

    quiet, busy = day("2024-02-09"), day("2024-02-10")
    clean = pay(store, "10.00", "clerk", account_no="1001", paid_on=quiet)
    issue_invoice(store, clean.payment_id, "clerk")
    wrong = pay(store, "30.00", "clerk", account_no="1001", paid_on=busy)
    issue_invoice(store, wrong.payment_id, "clerk")  # GD00000002, voided below and not issued again

    code, out, err = run("stock", "--cashier", "clerk")
    assert code == 0, err
    assert "GD00000001-GD00000010" in out and "1 ranges, 8 numbers left" in out

    code, _, err = run("void", "GD00000002", "-u", "anna", "-r", "misprint", "--day", "2024-02-10")
    assert code == 2 and "anna may not do billing.invoice_void" in err
    code, out, err = run("void", "GD00000002", "-u", "boss", "-r", "misprint", "--day", "2024-02-10")
    assert code == 0 and "invoice GD00000002 (30.00 yuan, clerk) is void" in out, err

    for when in ("2024-02-09", "2024-02-10"):
        code, out, err = run("settle", "--cashier", "clerk", "--day", when, "-u", "clerk")
        assert code == 0 and f"clerk settled for {when}" in out, err
    code, _, err = run("settle", "--cashier", "clerk", "--day", "2024-02-10", "-u", "clerk")
    assert code == 2 and "already settled" in err
    code, _, err = run("settle", "--cashier", "anna", "--day", "2024-02-10", "-u", "clerk")
    assert code == 2 and "clerk may not do billing.invoice_stock" in err

    code, out, err = run("reconcile", "--from", "2024-02-09", "--to", "2024-02-10", "--dry-run")
    assert code == 1, err
    assert "2024-02-09 clerk: ledger 10.00, invoices 10.00 — clean" in out
    assert "2024-02-10 clerk: ledger 30.00, invoices 0.00 — differences" in out
    assert f"payment {wrong.payment_id}: ledger 30.00, expected 0.00" in out
    with store.connection() as conn:
        assert conn.execute("SELECT count(*) FROM cashier_settlement WHERE reconciled_at IS NOT NULL").fetchone() == (
            0,
        )
    code, out, err = run("reconcile", "--from", "2024-02-09", "--actor", "boss")
    assert code == 0 and "2024-02-09 clerk: ledger 10.00, invoices 10.00 — reconciled" in out, err
    with store.connection() as conn:
        marks = conn.execute("SELECT day, reconciled_by FROM cashier_settlement ORDER BY day").fetchall()
    assert marks == [(quiet, "boss"), (busy, None)]
