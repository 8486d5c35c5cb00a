"""The HTTP front of the SOAP service: routing, request ids, HTTP Basic auth with throttling, the size and
shape limits, and a SOAP fault for whatever fails (the database included), never an HTML page."""
from __future__ import annotations

import base64
import binascii
import hmac
import io
import logging
import os
import re
import sys
import threading
import time
from urllib.parse import quote

from lxml import etree

from .echo import ECHO_PATH, echo_app
from .. import metrics
from .envelope import SoapFault, fault_envelope, inspect_envelope
from .service import PRINCIPAL, log_failure, make_soap_app
from .throttle import AuthThrottle
from .wsdl import build_wsdl

WSDL_PLACEHOLDER = "http://kkmtransfer.invalid/KKMTransfer"
SOAP_ADDRESS = "{http://schemas.xmlsoap.org/wsdl/soap/}address"

log = logging.getLogger("kkmtransfer.http")

ENDPOINT = "/KKMTransfer"
HEALTH, METRICS = "/health", "/metrics"

# a Host header: a DNS name, an IPv4 address or a bracketed IPv6 address, and an optional port
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}"
                   r"[A-Za-z0-9])?)*\.?|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")


def printable(value, limit: int = 80) -> str:
    """What came from the wire, safe for one log line: control and non-ASCII characters escaped
    (a newline becomes ``\\n``), length capped."""
    text = str(value)
    out = text[:limit].encode("unicode_escape").decode("ascii")
    return out + ("…" if len(text) > limit else "")


def _plain(start_response, status: str, text: str, extra=()):
    body = (text + "\n").encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body))), *extra])
    return [body]


def _fault(start_response, code: str, string: str, exc_info=None):
    body = fault_envelope(code, string)
    start_response("500 Internal Server Error", [("Content-Type", "text/xml; charset=utf-8"),
                                                 ("Content-Length", str(len(body)))], exc_info)
    return [body]


def request_url(environ, public_url: str | None = None) -> str | None:
    """The endpoint's URL as this client reached it (scheme, Host, script name), or None when the Host
    header is not a host. A configured public URL wins."""
    if public_url:
        return public_url.rstrip("/") + ENDPOINT
    scheme = environ.get("wsgi.url_scheme", "http")
    if scheme not in ("http", "https"):
        return None
    host = environ.get("HTTP_HOST")
    if host is None:
        host = environ.get("SERVER_NAME", "localhost")
        port = environ.get("SERVER_PORT", "")
        if port and port != {"http": "80", "https": "443"}[scheme]:
            host = f"{host}:{port}"
    if not _HOST.fullmatch(host):
        return None
    script = quote(environ.get("SCRIPT_NAME", "").rstrip("/"), safe="/")
    return f"{scheme}://{host}{script}{ENDPOINT}"


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


def client_address(environ, trusted_proxies=()) -> str | None:
    """The client's address: REMOTE_ADDR, or behind a trusted proxy the last X-Forwarded-For entry (the
    one that proxy added), so that throttling by address does not throttle every client of the proxy."""
    remote = environ.get("REMOTE_ADDR")
    forwarded = environ.get("HTTP_X_FORWARDED_FOR", "")
    if remote in trusted_proxies and forwarded.strip():
        return forwarded.split(",")[-1].strip()[:64] or remote
    return remote


class KKMTransferApp:
    """WSGI application: ``GET /KKMTransfer?wsdl`` is public; every other call needs a register's user.

    ``check_schema``: before serving calls, check (lazily, again after a failure) that the database is at
    the schema revision this version needs; until it is, calls get a ``Server`` fault."""

    SCHEMA_RECHECK_SECONDS = 1.0

    def __init__(self, billing, settings, check_schema: bool = False, throttle: AuthThrottle | None = None):
        self.billing = billing
        self.settings = settings
        self.soap = make_soap_app(billing)
        self.throttle = throttle or AuthThrottle(
            threshold=settings.auth_max_failures, window=settings.auth_window_seconds,
            max_delay=settings.auth_max_delay_seconds)
        self._wsdl_template: bytes | None = None
        self._schema_ok = not check_schema
        self._schema_checked_at = float("-inf")
        self._schema_error: str | None = None
        self._schema_lock = threading.Lock()
        self.echo = echo_app(settings)  # the benchmark's no-database echo: None unless KKMTRANSFER_BENCH_ECHO=1

    # -- the WSDL ----------------------------------------------------------------------------------
    def _wsdl(self, environ, start):
        """The WSDL with the address this request came to (spyne would pin the first caller's Host)."""
        url = request_url(environ, self.settings.public_url)
        if url is None:
            return _plain(start, "400 Bad Request", "The Host header is not a valid host[:port]")
        if self._wsdl_template is None:
            self._wsdl_template = build_wsdl(WSDL_PLACEHOLDER)
        root = etree.fromstring(self._wsdl_template)
        for el in root.iter(SOAP_ADDRESS):
            el.set("location", url)
        body = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
        start("200 OK", [("Content-Type", "text/xml; charset=utf-8"), ("Content-Length", str(len(body)))])
        return [body]

    # -- the schema, checked lazily -----------------------------------------------------------------
    def _schema_ready(self, request_id: str) -> bool:
        if self._schema_ok:
            return True
        from ..app import require_schema

        with self._schema_lock:
            if self._schema_ok:
                return True
            now = time.monotonic()
            if now - self._schema_checked_at >= self.SCHEMA_RECHECK_SECONDS:
                self._schema_checked_at = now
                try:
                    require_schema(self.billing.engine, self.settings.database_url)
                except Exception as exc:  # noqa: BLE001 - database down or schema behind: both wait
                    self._schema_error = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
                else:
                    self._schema_ok = True
                    self._schema_error = None
                    log.info("database schema is at head: serving calls")
                    return True
        log.error("request %s: not serving calls yet: %s", request_id, self._schema_error)
        return False

    # -- health and metrics (for operators, not registers) ----------------------------------------------
    def _operations(self, environ, start, path, method):
        if method not in ("GET", "HEAD"):
            return _plain(start, "405 Method Not Allowed", f"Use GET for {path}", [("Allow", "GET, HEAD")])
        if path == HEALTH:
            from .health import serve

            return serve(start, self.billing.engine, self.settings.database_url)
        user, password = metrics.metrics_credentials()
        if user:
            creds = basic_credentials(environ)
            if creds is None or not (hmac.compare_digest(creds[0].encode(), user.encode())
                                     and hmac.compare_digest(creds[1].encode(), password.encode())):
                return _plain(start, "401 Unauthorized", "HTTP Basic credentials for /metrics are required",
                              [("WWW-Authenticate", 'Basic realm="kkmtransfer metrics", charset="UTF-8"')])
        body, content_type = metrics.render(self.billing.engine)
        start("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body))),
                         ("Cache-Control", "no-store")])
        return [body]

    # -- one request ---------------------------------------------------------------------------------
    def __call__(self, environ, start_response):
        request_id = os.urandom(8).hex()  # 16 hex digits, as uuid4().hex[:16] gave (a tenth of its CPU)
        environ["kkmtransfer.request_id"] = request_id

        answered = []

        def start(status, headers, exc_info=None):
            answered[:] = [status]
            return start_response(status, [*headers, ("X-Request-Id", request_id)], exc_info)

        began = time.perf_counter()
        try:
            return list(self._serve(environ, start, request_id))
        except Exception as exc:  # noqa: BLE001 - whatever failed, the answer is a SOAP fault
            log_failure(log, exc, "request %s (user %s): unexpected error", request_id,
                        printable(environ.get("REMOTE_USER", "-")))
            return _fault(start, "Server", f"Internal server error; request id {request_id}", sys.exc_info())
        finally:
            self._count(environ, answered, time.perf_counter() - began)

    @staticmethod
    def _count(environ, answered, seconds: float) -> None:
        """One request of the SOAP endpoint in the metrics: its operation and its fault code."""
        if "kkmtransfer.endpoint" not in environ:
            return  # /health, /metrics, 404s
        try:
            code = answered[0].split(" ", 1)[0] if answered else "500"
            if code == "200":
                fault = "none"
            elif code == "500":
                fault = environ.get("kkmtransfer.fault") or "Server"
            else:
                fault = f"http_{code}"
            metrics.record_request(environ.get("kkmtransfer.operation", "none"), fault, seconds)
        except Exception:  # noqa: BLE001 - metrics never break an answer
            log.exception("metrics: the request could not be counted")

    def _serve(self, environ, start, request_id):
        path = (environ.get("PATH_INFO", "") or "/").rstrip("/")
        method = environ.get("REQUEST_METHOD", "GET")
        if path in (HEALTH, METRICS):
            return self._operations(environ, start, path, method)
        # the benchmark's echo (KKMTRANSFER_BENCH_ECHO=1) passes every layer below but the database
        echo = self.echo is not None and path == ECHO_PATH
        if path != ENDPOINT and not echo:
            return _plain(start, "404 Not Found", f"Not found. The SOAP endpoint is {ENDPOINT}")
        environ["kkmtransfer.endpoint"] = True
        query = environ.get("QUERY_STRING", "")
        if method == "GET" and query.lower() in ("wsdl", "wsdl=") and not echo:
            environ["kkmtransfer.operation"] = "wsdl"
            return self._wsdl(environ, start)
        if method != "POST":
            return _plain(start, "405 Method Not Allowed", "Use POST for SOAP calls, GET ?wsdl for the WSDL",
                          [("Allow", "GET, POST")])

        creds = basic_credentials(environ)
        address = client_address(environ, self.settings.trusted_proxies)
        user = creds[0] if creds else None
        wait = self.throttle.retry_after(user, address)
        if wait > 0:
            log.warning("request %s: 429 for user %s from %s: too many failed logins", request_id,
                        printable(user, 64), printable(address, 64))
            metrics.record_throttled()
            return _plain(start, "429 Too Many Requests",
                          "Too many failed logins; try again later", [("Retry-After", str(int(wait) + 1))])
        try:
            principal = self.billing.authenticate(*creds) if creds is not None else None
        except Exception as exc:  # noqa: BLE001 - the database is down: a Server fault, not a 401 or an HTML page
            log_failure(log, exc, "request %s (user %s): the credential check failed", request_id, printable(user, 64))
            return _fault(start, "Server", f"Internal server error; request id {request_id}")
        if principal is None:
            if creds is not None:
                self.throttle.failure(user, address)
            log.info("request %s: 401 for %s", request_id, printable(user, 64) if creds else "(no credentials)")
            return _plain(start, "401 Unauthorized", "HTTP Basic credentials of a register user are required",
                          [("WWW-Authenticate", 'Basic realm="KKMTransfer", charset="UTF-8"')])
        self.throttle.success(user, address)
        environ["REMOTE_USER"] = user
        environ[PRINCIPAL] = principal

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

        try:
            operation = inspect_envelope(body, self.settings.max_elements, self.settings.max_attributes)
            environ["kkmtransfer.operation"] = "other" if echo else metrics.operation_label(operation)
        except SoapFault as fault:
            environ["kkmtransfer.fault"] = fault.code
            log.info("request %s (user %s): %s: %s", request_id, printable(user, 64), fault.code,
                     printable(fault.string, 200))
            return _fault(start, fault.code, fault.string)
        if not self._schema_ready(request_id):
            return _fault(start, "Server", f"The service is not ready (database); request id {request_id}")
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        return (self.echo.soap if echo else self.soap)(environ, start)
