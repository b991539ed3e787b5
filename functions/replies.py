"""JSON answers of the HTTP functions, and the one way they refuse a request."""

import functools
import json
import traceback
from collections.abc import Callable
from typing import Any

import flask
from google.api_core import exceptions

from functions import logs

# A Google backend (Firestore, Pub/Sub) that is down, overloaded or too slow: the
# caller should try again, so the answer is 503, not 500.
UNAVAILABLE = (exceptions.ServerError, exceptions.TooManyRequests, exceptions.RetryError)

_JSON = {"Content-Type": "application/json"}

# What an HTTP function returns to Flask: (body, status, headers).
Reply = tuple[str, int, dict[str, str]]
Handler = Callable[[flask.Request], Reply]


def reply(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Reply:
    """A JSON answer, with `headers` besides its Content-Type."""
    return json.dumps(body), status, _JSON | (headers or {})


def reject(status: int, reason: str, **fields: Any) -> Reply:
    """A 4xx with a short JSON reason, logged at WARNING."""
    logs.warning(f"rejected: {reason}", status=status, **fields)
    return reply(status, {"error": reason})


def json_errors(handler: Handler) -> Handler:
    """Wraps an HTTP entry point so that an unexpected error answers 500 with
    `{"error"}` and logs ERROR with its traceback (masked like every line),
    never Flask's HTML error page; a Google backend unavailable answers 503."""

    @functools.wraps(handler)
    def guarded(request: flask.Request) -> Reply:
        try:
            return handler(request)
        except UNAVAILABLE as exc:
            logs.error(
                "a Google backend is unavailable; answering 503",
                event="backend_unavailable",
                reason=f"{type(exc).__name__}: {exc}"[:300],
            )
            return reply(503, {"error": "storage unavailable, retry"})
        except Exception:  # the last line of defence: anything not handled below
            logs.error("unexpected error", event="unhandled_error", traceback=traceback.format_exc()[-4000:])
            return reply(500, {"error": "internal error"})

    return guarded
