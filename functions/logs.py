"""Cloud Logging structured logs: one JSON object per line on stdout.

Written by hand rather than through google-cloud-logging's handler: the format
is a dozen lines, and the library would add its import time to every cold
start. Phone numbers are masked here, centrally, so no caller can leak one:
the `phone` field always, and anything phone-shaped anywhere else in the line
(a provider's error text, an exception, an id that is really a number).
"""

import contextvars
import json
import os
import re
import sys

from functions import config

_SEVERITIES = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
_LABELS = ("agent_id", "message_id", "event_id")
_trace: contextvars.ContextVar[str | None] = contextvars.ContextVar("trace", default=None)
# Phone-shaped text: E.164 with or without separators ("+1 (415) 555-0123"), the
# North American national form ("(415) 555-0123", "415.555.0123"), or 10 to 15
# digits in a row not inside a longer word, id or number. Log lines are JSON,
# so an escape such as "\\n" may stand right before a number.
_PHONE_SHAPED = re.compile(r"""
    (?<!\d) \+\d[\d ().\-]{5,18}\d (?!\d)
  | (?: (?<![\w+\-.]) | (?<=\\[nrt]) )
    (?: \(?\d{3}\)?[ .\-]\d{3}[ .\-]\d{4} | \d{10,15} ) (?![\w\-]|\.\d)
""", re.VERBOSE)


def mask_phone(phone: str | None) -> str | None:
    """`+447700900123` → `+44*******23`: enough to tell numbers apart, not to dial."""
    if not phone:
        return phone
    keep = min(3, max(len(phone) - 4, 0))
    return phone[:keep] + "*" * (len(phone) - keep - 2) + phone[-2:]


def mask_phones(text: str) -> str:
    """Every phone-shaped part of `text` masked as mask_phone does."""
    return _PHONE_SHAPED.sub(lambda m: mask_phone(m.group()), text)


def trace_id(headers) -> str | None:
    """The trace id of a request, from W3C `traceparent` or `X-Cloud-Trace-Context`."""
    parent = headers.get("traceparent", "")
    parts = parent.split("-")
    if len(parts) >= 3 and len(parts[1]) == 32:
        return parts[1]
    cloud = headers.get("X-Cloud-Trace-Context", "")
    return cloud.split("/", 1)[0] or None


def bind_trace(headers) -> None:
    """Tags every later log line of this request with its Cloud Trace id."""
    trace = trace_id(headers)
    _trace.set(f"projects/{config.project()}/traces/{trace}" if trace else None)


def log(severity: str, message: str, **fields) -> None:
    """Writes one log line; `phone` and anything phone-shaped are masked, ids also become labels."""
    if _SEVERITIES[severity] < _SEVERITIES.get(os.environ.get("LOG_LEVEL", "INFO"), 20):
        return
    if fields.get("phone"):
        fields["phone"] = mask_phone(fields["phone"])
    entry = {"severity": severity, "message": message, **fields}
    labels = {k: str(fields[k]) for k in _LABELS if fields.get(k)}
    if labels:
        entry["logging.googleapis.com/labels"] = labels
    trace = _trace.get()
    if trace:
        entry["logging.googleapis.com/trace"] = trace
    sys.stdout.write(mask_phones(json.dumps(entry, default=str)) + "\n")
    sys.stdout.flush()


def debug(message: str, **fields) -> None:
    log("DEBUG", message, **fields)


def info(message: str, **fields) -> None:
    log("INFO", message, **fields)


def warning(message: str, **fields) -> None:
    log("WARNING", message, **fields)


def error(message: str, **fields) -> None:
    log("ERROR", message, **fields)
