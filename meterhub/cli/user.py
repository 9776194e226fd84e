"""`meterhub user …`: staff users from the command line — the first administrator of a new database,
and a way back in when every administrator is locked out."""

from __future__ import annotations

from typing import Annotated

import typer

from meterhub.cli.base import actor_name, app, console, errors, load

user_app = typer.Typer(no_args_is_help=True, help="Staff users: add one, set a password, list them.")
app.add_typer(user_app, name="user")


def _password(given: str | None) -> str:
    if given:
        return given
    first = typer.prompt("password", hide_input=True)
    if typer.prompt("again", hide_input=True) != first:
        errors.print("[red]error:[/red] the passwords differ")
        raise typer.Exit(2)
    return str(first)


@user_app.command("add")
def add(
    username: Annotated[str, typer.Argument(help="Sign-in name: letters, digits, _ . @ -")],
    role: Annotated[str, typer.Option(help="A role code, e.g. admin, cashier, engineer.")] = "admin",
    name: Annotated[str, typer.Option(help="Display name (default: the user name).")] = "",
    password: Annotated[
        str | None, typer.Option(help="Initial password (8+ characters); asked for when left out.")
    ] = None,
    area: Annotated[list[str] | None, typer.Option(help="Limit to this area code (repeatable).")] = None,
    actor: Annotated[str | None, typer.Option(help="Who does this (for the history).")] = None,
) -> None:
    """Create a staff user with a password."""
    from dashboards.routes.admin import create_user
    from dashboards.web import ActionError
    from meterhub.store import Store

    secret = _password(password)
    with Store(load()) as store:
        store.migrate()
        try:
            with store.transaction(actor=actor_name(actor)) as conn:
                create_user(conn, username, name, role, secret, area or [])
        except ActionError as exc:
            errors.print(f"[red]error:[/red] {exc.message}", highlight=False)
            raise typer.Exit(1) from None
    console.print(f"user {username} ({role}) created")


@user_app.command("password")
def set_password(
    username: Annotated[str, typer.Argument()],
    password: Annotated[str | None, typer.Option(help="New password; asked for when left out.")] = None,
    unlock: Annotated[bool, typer.Option(help="Also clear failed sign-ins and re-activate the user.")] = True,
    actor: Annotated[str | None, typer.Option(help="Who does this (for the history).")] = None,
) -> None:
    """Set a user's password (their sessions end) and, by default, lift a lockout."""
    from dashboards import security
    from meterhub.store import Store

    secret = _password(password)
    with Store(load()) as store:
        store.migrate()
        with store.transaction(actor=actor_name(actor)) as conn:
            row = conn.execute("SELECT id FROM staff_user WHERE username = %s", [username]).fetchone()
            if row is None:
                errors.print(f"[red]error:[/red] no user {username!r}")
                raise typer.Exit(1)
            try:
                security.set_password(conn, int(row[0]), secret)
            except ValueError as exc:
                errors.print(f"[red]error:[/red] {exc}")
                raise typer.Exit(2) from None
            if unlock:
                conn.execute("UPDATE staff_user SET active = true WHERE id = %s", [row[0]])
                conn.execute(
                    "INSERT INTO login_attempt (username, ok) VALUES (%s, true)", [username]
                )  # a success resets the failure count that locks the name
    console.print(f"password of {username} set")


@user_app.command("list")
def list_users() -> None:
    """Staff users with their roles and areas."""
    from rich.table import Table

    from meterhub.store import Store

    with Store(load()) as store, store.connection() as conn:
        rows = conn.execute(
            """SELECT u.username, u.display_name, u.role, u.active,
                      coalesce(string_agg(a.code, ',' ORDER BY a.code), '')
                 FROM staff_user u LEFT JOIN staff_area s ON s.user_id = u.id LEFT JOIN area a ON a.id = s.area_id
                GROUP BY u.id ORDER BY u.username"""
        ).fetchall()
    table = Table("user", "name", "role", "active", "areas")
    for r in rows:
        table.add_row(r[0], r[1], r[2], "yes" if r[3] else "no", r[4])
    console.print(table)
