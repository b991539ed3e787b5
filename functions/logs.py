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
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, overload

from functions import config

if TYPE_CHECKING:
    from werkzeug.datastructures import Headers

_SEVERITIES = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
_LABELS = ("agent_id", "message_id", "event_id")
_trace: contextvars.ContextVar[str | None] = contextvars.ContextVar("trace", default=None)
# Phone-shaped text: E.164 with or without separators ("+1 (415) 555-0123"), also
# URL-encoded ("%2B1415…"); national forms in groups ("(415) 555-0123",
# "020 7946 0958", "06 12 34 56 78", "138 1234 5678"); 10 to 15 digits in a row.
# Not inside a word, a longer number or a UUID, so ids and times stay readable; a JSON
# escape such as "\\n" may stand right before a number. Too few or too many
# digits for a phone number: left alone (see _mask).
_PHONE_SHAPED = re.compile(
    r"""
    (?<!\d) (?:\+|%2B) \d[\d ().\-]{5,18}\d (?!\d)
  | (?: (?<![A-Za-z0-9.+])(?<![0-9A-F]-) | (?<=\\[nrt]) )
    (?: \(?\d{3}\)?[ .\-]\d{3}[ .\-]\d{4} | \d{2,8}(?:[ .]\d{2,8}){1,5} | \d{10,15} )
    (?![A-Za-z0-9]|\.\d)
""",
    re.VERBOSE | re.IGNORECASE,
)


@overload
def mask_phone(phone: str) -> str: ...
@overload
def mask_phone(phone: None) -> None: ...
def mask_phone(phone: str | None) -> str | None:
    """`+447700900123` → `+44*******23`: enough to tell numbers apart, not to dial."""
    if not phone:
        return phone
    keep = min(3, max(len(phone) - 4, 0))
    return phone[:keep] + "*" * (len(phone) - keep - 2) + phone[-2:]


def _mask(match: re.Match[str]) -> str:
    digits = sum(c.isdigit() for c in match.group()) - (2 if match.group()[:3].upper() == "%2B" else 0)
    return (
        mask_phone(match.group()) if 7 <= digits <= 15 and (digits >= 9 or match.group()[0] in "+%") else match.group()
    )


def mask_phones(text: str) -> str:
    """Every phone-shaped part of `text` masked as mask_phone does."""
    return _PHONE_SHAPED.sub(_mask, text)


def trace_id(headers: "Headers | Mapping[str, str]") -> str | None:
    """The trace id of a request, from W3C `traceparent` or `X-Cloud-Trace-Context`."""
    parent = headers.get("traceparent", "")
    parts = parent.split("-")
    if len(parts) >= 3 and len(parts[1]) == 32:
        return parts[1]
    cloud = headers.get("X-Cloud-Trace-Context", "")
    return cloud.split("/", 1)[0] or None


def bind_trace(headers: "Headers | Mapping[str, str]") -> None:
    """Tags every later log line of this request with its Cloud Trace id."""
    trace = trace_id(headers)
    _trace.set(f"projects/{config.project()}/traces/{trace}" if trace else None)


def log(severity: str, message: str, **fields: Any) -> None:
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


def debug(message: str, **fields: Any) -> None:
    log("DEBUG", message, **fields)


def info(message: str, **fields: Any) -> None:
    log("INFO", message, **fields)


def warning(message: str, **fields: Any) -> None:
    log("WARNING", message, **fields)


def error(message: str, **fields: Any) -> None:
    log("ERROR", message, **fields)
