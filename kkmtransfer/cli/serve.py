"""kkmtransfer serve: the SOAP endpoint for local use."""
from __future__ import annotations

import sys

import click

from . import _billing, main


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="Port (0: any free).")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
def serve(host, port, log_level):
    """Serve the SOAP endpoint /KKMTransfer (WSDL at /KKMTransfer?wsdl) and the web console /admin/ for
    local use.

    A threaded server from the standard library; in production run gunicorn with
    kkmtransfer.wsgi:application and, as its own app, kkmtransfer.web.wsgi:application (see
    docs/operations.md). The console's sessions are signed with KKMTRANSFER_SECRET_KEY (`make run` keeps
    one in var/secret_key); without it a random key is used and sessions end with the server.
    """
    from ..app import configure_logging
    from ..logging import LogContext
    from ..soap.devserver import make_server
    from ..soap.http import KKMTransferApp

    configure_logging(log_level.upper())
    billing = _billing()
    server = make_server(host, port, _with_console(LogContext(KKMTransferApp(billing, billing.settings)), billing))
    real_port = server.server_address[1]
    click.echo(f"KKMTransfer on http://{host}:{real_port}/KKMTransfer (WSDL: ?wsdl); Ctrl+C stops", err=True)
    click.echo(f"web console on http://{host}:{real_port}/admin/", err=True)
    sys.stderr.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _with_console(soap_app, billing):
    """The web console mounted at /admin beside SOAP."""
    import secrets

    from ..web import ConsoleConfigError, create_app, mount, secret_key_from_env

    try:
        key = secret_key_from_env()
    except ConsoleConfigError:
        key = secrets.token_urlsafe(48)
        click.echo("KKMTRANSFER_SECRET_KEY is not set: the console's sessions end when this server stops", err=True)
    return mount(soap_app, create_app(billing, key))
