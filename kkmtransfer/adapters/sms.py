"""Sending SMS: a provider interface, the Stream Telecom HTTPS GET gateway, and a console provider.

Stream Telecom (gateway.api.sc) takes ``GET <url>?user=&pwd=&sadr=&dadr=&text=``: ``sadr`` is the
sender name registered with them, ``dadr`` the phone as 11 digits starting with 7. A body of digits is
the message id; any other body is the gateway's error text.

What this module promises:
- at most ONE HTTP request per ``send`` (no retries, no redirects: a retry could send two codes);
- connect timeout 3 s and a total of 5 s for the whole exchange (see ``StreamTelecomSms.send``);
- the password is never logged, at any level: not by us, not in exception texts we pass on, and not by
  urllib3's DEBUG line that prints the requested URL (a filter on urllib3's loggers masks ``pwd=``, and
  ``text=`` too: it carries a live code).
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote, quote_plus

import requests
from requests.adapters import HTTPAdapter
from urllib3.util import Timeout

log = logging.getLogger("kkmtransfer.sms")

CONNECT_TIMEOUT = 3.0
TOTAL_TIMEOUT = 5.0
MAX_ANSWER_BYTES = 4096

_SECRETS_IN_QUERY = re.compile(r"((?:pwd|text)=)[^&\s'\"]*", re.IGNORECASE)  # the password; the text has the code


class SmsError(Exception):
    """The SMS was not (surely) sent. ``uncertain``: the gateway may have taken it all the same (the
    request went out, the answer did not come back)."""

    def __init__(self, reason: str, *, uncertain: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.uncertain = uncertain


class SmsProvider(Protocol):
    name: str

    def send(self, phone: str, text: str) -> str:
        """Send ``text`` to ``phone`` (11 digits starting with 7); the gateway's message id, or SmsError."""


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with every ``pwd=`` and ``text=`` query value and every given secret (raw and URL-encoded)
    masked."""
    text = _SECRETS_IN_QUERY.sub(r"\1***", text)
    for secret in secrets:
        if secret:
            for form in {secret, quote_plus(secret), quote(secret, safe="")}:
                text = text.replace(form, "***")
    return text


class _RedactPasswords(logging.Filter):
    """Masks ``pwd=`` and ``text=`` values (the password; the SMS text with the live code) in records of the
    loggers it is attached to (urllib3 prints whole URLs at DEBUG and in its retry warnings)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is not ours to fix; drop its arguments
            message = str(record.msg)
        clean = _SECRETS_IN_QUERY.sub(r"\1***", message)
        if clean != message or record.args:
            record.msg, record.args = clean, ()
        return True


_FILTER = _RedactPasswords()
_URLLIB3_LOGGERS = ("urllib3.connectionpool", "urllib3.connection", "urllib3.poolmanager",
                    "urllib3.util.retry", "urllib3.response")


def _install_log_filter() -> None:
    for name in _URLLIB3_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


@dataclass
class ConsoleSms:
    """For development: the 'SMS' is a log line (the code included) at WARNING on kkmtransfer.sms."""

    name: str = "console"

    def send(self, phone: str, text: str) -> str:
        log.warning("console SMS to %s: %s", phone, text)
        return "console"


class StreamTelecomSms:
    name = "stream-telecom"

    def __init__(self, url: str, login: str, password: str, sender: str, *,
                 connect_timeout: float = CONNECT_TIMEOUT, total_timeout: float = TOTAL_TIMEOUT):
        if not (url and login and password and sender):
            raise ValueError("the Stream Telecom gateway needs a URL, a login, a password and a sender")
        self.url = url
        self.login = login
        self._password = password
        self.sender = sender
        self.connect_timeout = connect_timeout
        self.total_timeout = total_timeout
        _install_log_filter()

    def __repr__(self) -> str:  # never the password
        return f"StreamTelecomSms(url={self.url!r}, login={self.login!r}, sender={self.sender!r})"

    def _session(self) -> requests.Session:
        session = requests.Session()
        session.trust_env = False  # no proxy or .netrc from the environment decides where the password goes
        adapter = HTTPAdapter(max_retries=0, pool_connections=1, pool_maxsize=1)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        return session

    def send(self, phone: str, text: str) -> str:
        """One GET; the message id, or SmsError with a reason fit for the log (no password in it).

        Time limits: the connection must be made within ``connect_timeout``; urllib3's ``total`` then
        bounds the wait for the answer's first bytes by what is left of ``total_timeout``; the body is
        read as a stream against the same deadline, so a gateway that trickles its answer is cut off at
        ``total_timeout`` too. (A gateway dribbling its status line and headers a byte at a time could
        stretch each single read, never one wait, past the deadline; the answer is then refused as late.)
        """
        if not (len(phone) == 11 and phone.isdigit() and phone.startswith("7")):
            raise SmsError(f"dadr must be 11 digits starting with 7, got {len(phone)} characters")
        params = {"user": self.login, "pwd": self._password, "sadr": self.sender, "dadr": phone, "text": text}
        started = time.monotonic()
        deadline = started + self.total_timeout
        timeout = Timeout(connect=self.connect_timeout, read=self.total_timeout, total=self.total_timeout)
        session = self._session()
        try:
            try:
                response = session.get(self.url, params=params, timeout=timeout, stream=True,
                                       allow_redirects=False)
            except requests.ConnectTimeout:
                raise SmsError(f"no connection to the gateway within {self.connect_timeout:g} s") from None
            except requests.ReadTimeout:
                raise SmsError(f"the gateway did not answer within {self.total_timeout:g} s",
                               uncertain=True) from None
            except requests.ConnectionError as exc:
                raise SmsError(self._why("cannot reach the gateway", exc)) from None
            except requests.RequestException as exc:
                raise SmsError(self._why("the request to the gateway failed", exc)) from None
            try:
                body = self._read(response, deadline)
            finally:
                response.close()
        finally:
            session.close()
        elapsed = time.monotonic() - started
        answer = body.decode("utf-8", "replace").strip()
        if response.status_code != 200:
            raise SmsError(f"the gateway answered HTTP {response.status_code}: {self._clip(answer)}")
        if not answer.isdigit() or not answer.isascii():
            raise SmsError(f"the gateway refused the message: {self._clip(answer) or '(empty answer)'}")
        log.info("SMS to %s accepted by the gateway: message id %s (%.2f s)", _masked(phone), answer, elapsed)
        return answer

    def _read(self, response, deadline: float) -> bytes:
        chunks, size = [], 0
        try:
            # byte by byte (from urllib3's buffer, not one recv each): the deadline is checked between bytes
            for chunk in response.iter_content(chunk_size=1):
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_ANSWER_BYTES:
                    raise SmsError(f"the gateway's answer is over {MAX_ANSWER_BYTES} bytes", uncertain=True)
                if time.monotonic() > deadline:
                    raise SmsError(f"the gateway's answer took over {self.total_timeout:g} s", uncertain=True)
        except requests.RequestException as exc:
            raise SmsError(self._why("the gateway's answer broke off", exc), uncertain=True) from None
        if time.monotonic() > deadline:
            raise SmsError(f"the gateway's answer took over {self.total_timeout:g} s", uncertain=True)
        return b"".join(chunks)

    def _why(self, what: str, exc: Exception) -> str:
        root = exc
        for _ in range(10):
            if root.__cause__ is None and root.__context__ is None:
                break
            root = root.__cause__ or root.__context__
        return redact(f"{what}: {type(root).__name__}: {root}", self._password)[:300]

    def _clip(self, answer: str) -> str:
        return redact(answer, self._password)[:200]


def _masked(phone11: str) -> str:
    return f"7******{phone11[-4:]}"


def provider_from_settings(settings) -> SmsProvider:
    """Stream Telecom when KKMTRANSFER_SMS_LOGIN is set, the console otherwise; KKMTRANSFER_SMS_PROVIDER
    overrides."""
    if settings.effective_sms_provider == "stream-telecom":
        return StreamTelecomSms(settings.sms_url, settings.sms_login, settings.sms_password, settings.sms_sender)
    return ConsoleSms()
