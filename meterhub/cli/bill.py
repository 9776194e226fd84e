"""`meterhub bill`: bill runs."""

from __future__ import annotations

from typing import Annotated

import typer

from meterhub.cli.base import actor_name, app, console, errors, load

bill_app = typer.Typer(no_args_is_help=True, help="Bill runs (billing).")
app.add_typer(bill_app, name="bill")


@bill_app.command("run")
def bill_run(
    period: Annotated[str, typer.Option(help="Billing period, YYYY-MM.")],
    scope: Annotated[str, typer.Option(help="all, area:CODE, book:CODE or account:NO.")] = "all",
    actor: Annotated[str | None, typer.Option(help="Who runs it (for the audit trail).")] = None,
) -> None:
    """Bill every account in scope with approved readings for the period; a re-run bills nothing twice."""
    from billing.bill_run import BillRunError, run_bills, run_problems_text
    from meterhub.store import Store

    with Store(load()) as store:
        store.migrate()
        try:
            with console.status(f"billing {period} ({scope})"):
                result = run_bills(store, period, scope, actor=actor_name(actor))
        except BillRunError as exc:
            errors.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(2) from None
        timings = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
        console.print(
            f"{period} {result.scope}: {result.bills_created} bills created ({result.amount_created} yuan); "
            f"{result.bills} bills in scope, {result.amount} yuan ({timings})"
        )
        if result.problems.height:
            errors.print(f"[yellow]{result.problems['account_id'].n_unique()} account(s) left unbilled:[/yellow]")
            for line in run_problems_text(result.problems):
                errors.print(f"  {line}", highlight=False)
            raise typer.Exit(1)
