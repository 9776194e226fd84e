"""`meterhub command`: valve and credit commands."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

import typer
from rich.table import Table

from meterhub.cli.base import app, console, errors, load

command_app = typer.Typer(no_args_is_help=True, help="Valve and credit commands (for engineers without the console).")
app.add_typer(command_app, name="command")
UserOption = Annotated[str, typer.Option("--user", "-u", help="Your staff username: it goes into the audit log.")]
ReasonOption = Annotated[str, typer.Option("--reason", "-r", help="Why (kept with the command and in the audit log).")]


def _print_command(view: object) -> None:
    from meterhub.commands import CommandView

    assert isinstance(view, CommandView)
    code = f" ({view.reason_code})" if view.reason_code else ""
    console.print(f"command {view.id}: {view.kind} {view.meter_no} → {view.state}{code}", highlight=False)
    if view.state == "refused":
        raise typer.Exit(1)


def _command_call(call: object) -> None:
    from meterhub.commands import CommandError
    from meterhub.store import Store

    with Store(load()) as store:
        try:
            _print_command(call(store))  # type: ignore[operator]
        except CommandError as exc:
            errors.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(2) from None


@command_app.command("close")
def command_close(
    meter_no: str,
    user: UserOption,
    reason: ReasonOption,
    purpose: Annotated[
        str, typer.Option(help="arrears, planned_stop, construction, customer_request, other")
    ] = "other",
    emergency: Annotated[bool, typer.Option("--emergency", help="One step, no rules (needs the permission).")] = False,
    key: Annotated[str | None, typer.Option(help="Idempotency key: the same key never makes a second command.")] = None,
) -> None:
    """Shut a meter's valve."""
    from meterhub import commands

    if emergency:
        _command_call(lambda store: commands.emergency_close(store, meter_no, user=user, reason=reason))
    else:
        _command_call(
            lambda store: commands.request_command(
                store, meter_no, "valve_close", user=user, reason=reason, purpose=purpose, idempotency_key=key
            )
        )


@command_app.command("open")
def command_open(
    meter_no: str, user: UserOption, reason: ReasonOption, key: Annotated[str | None, typer.Option()] = None
) -> None:
    """Re-open (arm, where the meter supports it: the customer restores supply on site)."""
    from meterhub import commands

    _command_call(
        lambda store: commands.request_command(
            store, meter_no, "valve_open", user=user, reason=reason, idempotency_key=key
        )
    )


@command_app.command("credit")
def command_credit(
    meter_no: str,
    amount: Annotated[Decimal, typer.Option(help="Top-up in CNY, e.g. 50.00")],
    user: UserOption,
    reason: ReasonOption,
    key: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Write a top-up to a prepaid meter (with the next purchase sequence)."""
    from meterhub import commands

    _command_call(
        lambda store: commands.request_command(
            store, meter_no, "credit", user=user, reason=reason, amount=amount, idempotency_key=key
        )
    )


@command_app.command("approve")
def command_approve(
    target: Annotated[int, typer.Argument(help="Command id, or bulk id with --bulk.")],
    user: UserOption,
    bulk: Annotated[bool, typer.Option("--bulk")] = False,
) -> None:
    """Approve a command or bulk request someone else asked for."""
    from meterhub import commands
    from meterhub.store import Store

    if not bulk:
        _command_call(lambda store: commands.approve(store, target, user=user))
        return
    with Store(load()) as store:
        try:
            view = commands.approve_bulk(store, target, user=user)
        except commands.CommandError as exc:
            errors.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(2) from None
        console.print(f"bulk {view.id}: {view.state}, {len(view.commands)} commands")


@command_app.command("status")
def command_status(
    target: Annotated[str | None, typer.Argument(help="Command id or meter number; empty: the latest.")] = None,
    limit: Annotated[int, typer.Option(min=1)] = 20,
) -> None:
    """Show commands and where they are in their life."""
    from meterhub import commands
    from meterhub.store import Store

    with Store(load()) as store:
        if target is not None and target.isdigit():
            views = [commands.get_command(store, int(target))]
        else:
            views = commands.list_commands(store, target, limit=limit)
        table = Table()
        for column in ("id", "meter", "kind", "state", "reason code", "by", "attempts", "requested"):
            table.add_column(column)
        for v in views:
            table.add_row(
                str(v.id), v.meter_no, v.sent_kind or v.kind, v.state, v.reason_code or "", v.requested_by,
                str(v.attempts), v.requested_at.isoformat(timespec="seconds"),
            )  # fmt: skip
        console.print(table)
