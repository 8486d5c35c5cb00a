"""A fake Stream Telecom gateway for tests: a real HTTP server on loopback that records each request."""
from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class FakeGateway:
    """``mode``: ok (answers a message id), error (answers an error text), http500, slow (waits
    ``delay`` seconds before answering), trickle (headers at once, then the body a byte per ``delay``)."""

    def __init__(self):
        self.requests: list[str] = []          # raw request targets, as received
        self.mode = "ok"
        self.delay = 0.0
        self.error_text = "ERROR: invalid sender"
        self._next_id = 1000
        self._lock = threading.Lock()
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                with gateway._lock:
                    gateway.requests.append(self.path)
                    gateway._next_id += 1
                    message_id = str(gateway._next_id)
                mode = gateway.mode
                if mode == "slow":
                    time.sleep(gateway.delay)
                status, body = 200, message_id.encode()
                if mode == "error":
                    body = gateway.error_text.encode()
                elif mode == "http500":
                    status, body = 500, b"Internal Server Error"
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "text/plain; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if mode == "trickle":
                        for i in range(len(body)):
                            self.wfile.write(body[i:i + 1])
                            self.wfile.flush()
                            time.sleep(gateway.delay)
                    else:
                        self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/get/"

    def start(self) -> "FakeGateway":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
        self.mode, self.delay = "ok", 0.0

    def queries(self) -> list[dict[str, list[str]]]:
        return [parse_qs(urlsplit(target).query, keep_blank_values=True) for target in self.requests]

    def codes_sent(self) -> list[str]:
        """The digits of each text received (the code)."""
        return ["".join(ch for ch in q["text"][0] if ch.isdigit()) for q in self.queries()]
