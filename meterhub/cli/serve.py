"""`meterhub serve`: the web console and the REST API."""

from __future__ import annotations

import logging
import signal
import socket
from typing import Annotated

import typer

from meterhub.cli.base import app, console, errors, load


class _PlainMessages(logging.Filter):
    """uvicorn adds a terminal-coloured copy of some messages; meterhub's formatters would print it as a field."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.pop("color_message", None)
        return True


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on (default: console.host).")] = None,
    port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="Port (default: console.port; 0: any free one).")
    ] = None,
) -> None:
    """Run the console and /api/v1 (uvicorn) for a deployment; applies pending migrations at start.
    Ctrl-C or SIGTERM finishes the requests in progress and stops."""
    import uvicorn

    from dashboards.app import create_app
    from meterhub.store import Store

    settings = load()
    for name in ("uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addFilter(_PlainMessages())
    host = host or settings.console.host
    port = settings.console.port if port is None else port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # connections wait in the backlog until uvicorn accepts them
    except OSError as exc:
        sock.close()
        errors.print(f"[red]error:[/red] cannot listen on {host}:{port}: {exc.strerror}", highlight=False)
        raise typer.Exit(2) from None
    with sock, Store(settings) as store:
        applied = store.migrate()
        if applied:
            console.print(f"applied {', '.join(applied)}")
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        console.print(f"console on http://{shown}:{bound_port} — {store.describe()} (Ctrl-C stops)")
        config = uvicorn.Config(
            create_app(settings, store),
            log_config=None,  # meterhub's logging (text or JSON) is already set up
            log_level=settings.log.level.lower(),
            proxy_headers=True,
        )
        # uvicorn handles SIGINT and SIGTERM while it serves (a graceful shutdown) and raises the signal again
        # afterwards; by then the shutdown is done, so these handlers only let the command end normally.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: None)
        from meterhub.cli.sms import start_sender

        sender = start_sender(store, settings)  # SMS: automatic notices queued and sent beside the console
        try:
            uvicorn.Server(config).run(sockets=[sock])
        finally:
            if sender is not None:
                sender[1].set()
                sender[0].join(10)
