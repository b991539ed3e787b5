"""JSON answers of the HTTP functions, and the one way they refuse a request."""

import json

from functions import logs

_JSON = {"Content-Type": "application/json"}


def reply(status: int, body: dict):
    return json.dumps(body), status, _JSON


def reject(status: int, reason: str, **fields):
    """A 4xx with a short JSON reason, logged at WARNING."""
    logs.warning(f"rejected: {reason}", status=status, **fields)
    return reply(status, {"error": reason})
