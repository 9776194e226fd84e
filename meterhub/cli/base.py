"""The `meterhub` app, its global options and what every command shares."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.console import Console

from meterhub.settings import Settings, SettingsError, load_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Gas meter telemetry, valves and billing.")
console = Console(stderr=False)
errors = Console(stderr=True)


class State:
    config: Path | None = None


def load() -> Settings:
    """Settings for a command; a wrong value ends it with the key named (exit 2)."""
    from meterhub import logs

    try:
        settings = load_settings(State.config)
    except SettingsError as exc:
        errors.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    logs.configure(settings.log)
    return settings


def _exit_on_sigterm() -> None:
    """Turn SIGTERM into a normal exit so that atexit handlers (embedded server release) run."""

    def handler(signum: int, frame: FrameType | None) -> None:
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


@app.callback()
def main_options(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="TOML settings file (default: ./meterhub.toml when present)."),
    ] = None,
) -> None:
    State.config = config
    _exit_on_sigterm()


def wait_for_signal() -> None:
    import threading

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()


def actor_name(actor: str | None) -> str:
    import getpass

    return actor or f"cli:{getpass.getuser()}"
