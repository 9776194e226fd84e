"""`meterhub readings …` as a user runs it, against the test database."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from billing.reading_books import add_meters, create_book
from meterhub.store import Store
from tests.billing.review_helpers import PERIOD, build_utility
from tests.meterhub.test_cli import meterhub


def test_export_import_validate(store: Store, tmp_path: Path) -> None:
    build_utility(store)
    create_book(store, "B1", "Garden 1", actor="admin")
    add_meters(store, "B1", ["M00000004", "M00000002"], actor="admin")
    env = {"METERHUB_DATABASE_URL": store.url}
    exported = tmp_path / "b1.csv"
    done = meterhub(
        "readings", "export", "--book", "B1", "--period", PERIOD, "--output", str(exported), cwd=tmp_path, env=env
    )
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(exported.read_text(encoding="utf-8-sig"))))
    rows[0].update(reading_value="350", read_at="2024-01-31 18:00")
    rows[1].update(reading_value="-1", read_at="2024-01-31 18:00")
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    exported.write_text(out.getvalue(), encoding="utf-8")
    refused = meterhub("readings", "import", str(exported), cwd=tmp_path, env=env)
    assert refused.returncode == 1
    assert "line 3: reading_value: negative" in refused.stderr
    rows[1].update(reading_value="", read_at="")
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    exported.write_text(out.getvalue(), encoding="utf-8")
    imported = meterhub("readings", "import", str(exported), "--actor", "reader", cwd=tmp_path, env=env)
    assert imported.returncode == 0, imported.stderr
    assert "imported 1 readings" in imported.stdout
    validated = meterhub("readings", "validate", "--period", PERIOD, cwd=tmp_path, env=env)
    assert validated.returncode == 0, validated.stderr
    assert "spike" in validated.stdout and "rollover" in validated.stdout
    assert "review queue: 5 pending of 5" in validated.stdout
