"""The HTTP front of the SOAP service: routing, request ids, HTTP Basic auth and the size limit."""
from __future__ import annotations

import base64
import binascii
import io
import logging
import uuid

from xml.sax.saxutils import quoteattr
from wsgiref.util import application_uri

from .service import make_soap_app
from .wsdl import build_wsdl

WSDL_PLACEHOLDER = "http://kkmtransfer.invalid/KKMTransfer"

log = logging.getLogger("kkmtransfer.http")

ENDPOINT = "/KKMTransfer"


def _plain(start_response, status: str, text: str, extra=()):
    body = (text + "\n").encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body))), *extra])
    return [body]


def request_url(environ) -> str:
    """The endpoint's URL as this client reached it (scheme, Host, script name), XML-escaped."""
    url = application_uri(environ).rstrip("/") + ENDPOINT
    return quoteattr(url)[1:-1]


def basic_credentials(environ) -> tuple[str, str] | None:
    header = environ.get("HTTP_AUTHORIZATION", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


class KKMTransferApp:
    """WSGI application: ``GET /KKMTransfer?wsdl`` is public; every other call needs a register's user."""

    def __init__(self, billing, settings):
        self.billing = billing
        self.settings = settings
        self.soap = make_soap_app(billing)
        self._wsdl_template: bytes | None = None

    def _wsdl(self, environ, start):
        """The WSDL with the address this request came to (spyne would pin the first caller's Host)."""
        if self._wsdl_template is None:
            self._wsdl_template = build_wsdl(WSDL_PLACEHOLDER)
        body = self._wsdl_template.replace(WSDL_PLACEHOLDER.encode(), request_url(environ).encode())
        start("200 OK", [("Content-Type", "text/xml; charset=utf-8"), ("Content-Length", str(len(body)))])
        return [body]

    def __call__(self, environ, start_response):
        request_id = uuid.uuid4().hex[:16]
        environ["kkmtransfer.request_id"] = request_id

        def start(status, headers, exc_info=None):
            return start_response(status, [*headers, ("X-Request-Id", request_id)], exc_info)

        path = environ.get("PATH_INFO", "") or "/"
        if path.rstrip("/") != ENDPOINT:
            return _plain(start, "404 Not Found", f"Not found. The SOAP endpoint is {ENDPOINT}")
        method = environ.get("REQUEST_METHOD", "GET")
        query = environ.get("QUERY_STRING", "")
        if method == "GET" and query.lower() in ("wsdl", "wsdl="):
            return self._wsdl(environ, start)
        if method != "POST":
            return _plain(start, "405 Method Not Allowed", "Use POST for SOAP calls, GET ?wsdl for the WSDL",
                          [("Allow", "GET, POST")])

        creds = basic_credentials(environ)
        if creds is None or not self.billing.authenticate(*creds):
            log.info("request %s: 401 for %s", request_id, creds[0] if creds else "(no credentials)")
            return _plain(start, "401 Unauthorized", "HTTP Basic credentials of a register user are required",
                          [("WWW-Authenticate", 'Basic realm="KKMTransfer", charset="UTF-8"')])
        environ["REMOTE_USER"] = creds[0]

        limit = self.settings.max_request_bytes
        try:
            declared = int(environ.get("CONTENT_LENGTH") or -1)
        except ValueError:
            return _plain(start, "400 Bad Request", "Content-Length is not a number")
        if declared > limit:
            return _plain(start, "413 Payload Too Large", f"The request body is over the limit of {limit} bytes")
        if declared < 0 and not environ.get("wsgi.input_terminated"):
            # no length and a server that does not end the stream for us (gunicorn does): reading would
            # wait for a close that never comes
            return _plain(start, "411 Length Required", "Send Content-Length (or use gunicorn for chunked bodies)")
        stream = environ["wsgi.input"]
        body = stream.read(declared) if declared >= 0 else stream.read(limit + 1)
        if len(body) > limit:
            return _plain(start, "413 Payload Too Large", f"The request body is over the limit of {limit} bytes")
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        return self.soap(environ, start)
