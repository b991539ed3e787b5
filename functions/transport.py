"""What a failed HTTP call to a provider (RBM, an SMS gateway) tells about the request.

The one question that matters for "never twice": may the server have read
the request? Only a failure before the request left (name resolution,
connection refused, connect timeout, TLS handshake) proves it did not; a
connection reset or closed after the request was written, a read timeout, or
a body cut short all leave it open. `requests` raises `ConnectionError` for
both kinds, so the urllib3 reason inside decides (urllib3 wraps a failure to
connect in `MaxRetryError` with `NewConnectionError` / `ConnectTimeoutError`,
and raises `ProtocolError("Connection aborted.", …)` for one after sending).

Answers are read by status: 429 (RFC 6585 §4) and 503 (RFC 9110 §15.6.4)
say the request was not acted on and when to come back (`Retry-After`);
other 5xx leave the outcome open.
"""

import traceback
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import requests
from requests import exceptions
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

# Statuses that say the server did not act on the request: safe to send again.
NOT_PROCESSED = frozenset({429, 503})


def may_have_been_read(exc: requests.RequestException) -> bool:
    """False only when `exc` proves the request never reached the server."""
    if isinstance(exc, exceptions.ConnectTimeout):
        return False  # no connection: nothing was written
    if isinstance(exc, exceptions.SSLError):
        return not _while_connecting(exc)  # the TLS handshake failed, or the answer's TLS did
    if isinstance(exc, exceptions.ConnectionError):
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        return not isinstance(reason, (NewConnectionError, ConnectTimeoutError))
    return not isinstance(
        exc, (exceptions.InvalidURL, exceptions.MissingSchema, exceptions.InvalidSchema, exceptions.InvalidHeader)
    )


def _while_connecting(exc: object) -> bool:
    """Whether `exc`, or an error it wraps (requests → urllib3 → ssl), was raised while
    urllib3 set up the connection (TCP, TLS handshake, certificate check): before any
    byte of the request was written."""
    seen = set()
    while isinstance(exc, BaseException) and id(exc) not in seen:
        seen.add(id(exc))
        if any(
            frame.f_code.co_name == "connect" and frame.f_globals.get("__name__") == "urllib3.connection"
            for frame, _ in traceback.walk_tb(exc.__traceback__)
        ):
            return True
        exc = getattr(exc, "reason", None) or (exc.args[0] if exc.args else None)
    return False


def retry_after(response: requests.Response, cap: float) -> float | None:
    """Seconds the server asked us to wait (`Retry-After`, RFC 9110 §10.2.3: delay
    seconds or an HTTP date), held to [0, cap]; None if it asked nothing readable."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), cap)
