"""`meterhub readings`: validation, review queue and handheld files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from meterhub.cli.base import actor_name, app, console, errors, load

readings_app = typer.Typer(no_args_is_help=True, help="Reading validation, review and handheld files (抄表).")
app.add_typer(readings_app, name="readings")


@readings_app.command("validate")
def readings_validate(
    period: Annotated[str, typer.Option(help="Reading period, YYYY-MM.")],
    rules: Annotated[Path | None, typer.Option(help="Validation rule set (TOML); default: the built-in one.")] = None,
    actor: Annotated[str | None, typer.Option(help="Who runs it (for the audit trail).")] = None,
) -> None:
    """Validate a period's readings and refresh its review queue."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from billing.reading_store import parse_period
    from billing.review_run import DEFAULT_RULES, validate_period
    from billing.validation import RuleSet
    from meterhub.store import Store

    try:
        parse_period(period)
        rule_set = RuleSet.from_toml(rules.read_text(encoding="utf-8")) if rules else DEFAULT_RULES
    except (ValueError, OSError) as exc:
        errors.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    with Store(load()) as store:
        store.migrate()
        steps = ["load", "compute", "estimate", "write"]
        columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task(f"validating {period}", total=len(steps))

            def step(name: str) -> None:
                progress.update(task, description=f"validating {period}: {name}", completed=steps.index(name))

            result = validate_period(store, period, rules=rule_set, actor=actor_name(actor), progress=step)
        table = Table(title=f"flags by rule — {period}, run {result.run_id} ({rule_set.rule_set_version})")
        table.add_column("rule")
        table.add_column("flags", justify="right")
        for rule_id, count in result.flags_by_rule.items():
            table.add_row(rule_id, str(count))
        console.print(table)
        timings = ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items())
        console.print(
            f"{result.readings} readings of {result.meters} meters; {result.flags} flags; "
            f"review queue: {result.pending} pending of {result.queue_rows} ({timings})"
        )


@readings_app.command("import")
def readings_import(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Handheld result file (.csv or .xlsx).")],
    actor: Annotated[str | None, typer.Option(help="Who imports it (for the audit trail).")] = None,
) -> None:
    """Import handheld reading results; a file with any bad row is refused whole."""
    from billing.handheld import ReadingFileError, import_readings
    from meterhub.store import Store

    with Store(load()) as store:
        store.migrate()
        try:
            result = import_readings(store, file.read_bytes(), file.name, actor=actor_name(actor))
        except ReadingFileError as exc:
            errors.print(f"[red]refused:[/red] {file.name}: {len(exc.errors)} bad row(s), nothing imported")
            for error in exc.errors:
                errors.print(f"  {error}", highlight=False)
            raise typer.Exit(1) from None
        console.print(
            f"imported {result.readings} readings from {file.name} ({result.not_read} rows not read), "
            f"import {result.import_id}"
        )


@readings_app.command("export")
def readings_export(
    book: Annotated[str, typer.Option(help="Reading book code.")],
    period: Annotated[str, typer.Option(help="Reading period, YYYY-MM.")],
    file_format: Annotated[str, typer.Option("--format", help="csv or xlsx")] = "csv",
    output: Annotated[Path | None, typer.Option(help="File to write (default: BOOK_PERIOD.FORMAT).")] = None,
) -> None:
    """Export a book's to-read list for a handheld (template: see billing/handheld.py)."""
    from billing.handheld import export_book
    from billing.reading_books import BookError
    from billing.reading_store import parse_period
    from meterhub.store import Store

    if file_format not in ("csv", "xlsx"):
        errors.print("[red]error:[/red] --format must be csv or xlsx")
        raise typer.Exit(2)
    with Store(load()) as store:
        store.migrate()
        try:
            parse_period(period)
            data = export_book(store, book, period, file_format)
        except (BookError, ValueError) as exc:
            errors.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(2) from None
        target = output or Path(f"{book}_{period}.{file_format}")
        target.write_bytes(data)
        console.print(f"wrote {target}")
