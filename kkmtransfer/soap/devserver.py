"""A small threaded HTTP server from the standard library, for `kkmtransfer serve` and the tests."""
from __future__ import annotations

import logging
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
from wsgiref.simple_server import make_server as _make_server

log = logging.getLogger("kkmtransfer.access")


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class _Handler(WSGIRequestHandler):
    def log_message(self, fmt, *args):  # to logging, not raw stderr
        from .http import printable

        log.info("%s %s", self.address_string(), printable(fmt % args, 2000))


def make_server(host: str, port: int, app):
    return _make_server(host, port, app, server_class=_Server, handler_class=_Handler)
