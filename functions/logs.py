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
import unicodedata
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, overload

from functions import config

if TYPE_CHECKING:
    from werkzeug.datastructures import Headers

_SEVERITIES = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
_LABELS = ("agent_id", "message_id", "event_id")
_trace: contextvars.ContextVar[str | None] = contextvars.ContextVar("trace", default=None)
# Phone-shaped text, in a string whose digits and separators are already plain
# ASCII (see _plain): a `+` or URL-encoded `%2B` and 6 to 15 digits ("+1 (415)
# 555-0123", "%2B14155550123"), or 8 to 15 digits in groups or in a row
# ("(415) 555-0123", "0151-1234-5678", "415/555/0123", "06 12 34 56 78",
# "07700900123"), separated by spaces, dots, dashes, slashes or parentheses. Not
# inside a word or a longer number; an id's field path before it may end in a dot
# ("content.14155550123"). RFC 3339 times and UUIDs are matched first, as `keep`,
# so their digits stay readable; so do figures of fewer digits.
_PHONE_SHAPED = re.compile(
    r"""
    (?P<keep>
        (?<!\d) \d{4}-\d\d-\d\d (?:[T\ ]\d\d:\d\d(?::\d\d(?:\.\d+)?)?)? (?:Z|[+-]\d\d:?\d\d)? (?!\d)
      | \d\d:\d\d:\d\d(?:\.\d+)?
      | [0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}
    )
  | (?P<plus> (?<!\d) (?:\+|%2[Bb]) [ (]* \d (?:[ ().\-/]{0,3}\d)* )
  | (?<![A-Za-z0-9]) \(? \d (?:[ ().\-/]{0,3}\d)*
    (?![A-Za-z0-9])
""",
    re.VERBOSE,
)
# What every phone-shaped text holds: 6 digits with at most separators between.
# Most strings of a log line (names, ids, figures) lack it and skip the pattern above.
_CANDIDATE = re.compile(r"\d(?:[ ().\-/]{0,3}\d){5}")
_MIN_DIGITS, _MIN_DIGITS_AFTER_PLUS, _MAX_DIGITS = 8, 6, 15  # E.164 numbers have at most 15 digits


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
    text = match.group()
    if match.group("keep"):
        return text
    plus = match.group("plus")
    digits = sum(c.isdigit() for c in text) - (2 if plus and text[:3].upper() == "%2B" else 0)
    least = _MIN_DIGITS_AFTER_PLUS if plus else _MIN_DIGITS
    return mask_phone(text) if least <= digits <= _MAX_DIGITS else text


def _plain(char: str) -> str:
    """A non-ASCII digit as its ASCII digit, a dash as `-`, a space as ` `."""
    digit = unicodedata.decimal(char, None)
    if digit is not None:
        return str(digit)
    category = unicodedata.category(char)
    return "-" if category == "Pd" or char == "\u2212" else " " if category == "Zs" else char


def mask_phones(text: str) -> str:
    """Every phone-shaped part of `text` masked as mask_phone does. Text with other
    than ASCII is read in NFKC with every decimal digit, dash and space made ASCII
    (Arabic-Indic or full-width digits, a no-break space, an en dash), and comes
    back so when it held a number; otherwise it comes back unchanged."""
    if text.isascii():
        return _PHONE_SHAPED.sub(_mask, text) if _CANDIDATE.search(text) else text
    plain = "".join(c if c.isascii() else _plain(c) for c in unicodedata.normalize("NFKC", text))
    masked = _PHONE_SHAPED.sub(_mask, plain) if _CANDIDATE.search(plain) else plain
    return text if masked == plain else masked


def _masked(value: Any) -> Any:
    """A log field's value with every string in it masked by mask_phones; a value
    JSON has no type for becomes its str() first, an integer is masked as its digits."""
    if isinstance(value, str):
        return mask_phones(value)
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        text = str(value)
        return value if len(text) < _MIN_DIGITS_AFTER_PLUS or mask_phones(text) == text else mask_phones(text)
    if isinstance(value, Mapping):
        return {mask_phones(str(k)): _masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(v) for v in value]
    return mask_phones(str(value))


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
    """Writes one log line; `phone` and anything phone-shaped in the message and the
    fields' values (masked before JSON encoding, which would escape what it must
    see) are masked, ids also become labels."""
    if _SEVERITIES[severity] < _SEVERITIES.get(os.environ.get("LOG_LEVEL", "INFO"), 20):
        return
    if fields.get("phone"):
        fields["phone"] = mask_phone(str(fields["phone"]))
    entry = {"severity": severity, "message": mask_phones(message), **_masked(fields)}
    labels = {k: str(entry[k]) for k in _LABELS if entry.get(k)}
    if labels:
        entry["logging.googleapis.com/labels"] = labels
    trace = _trace.get()
    if trace:
        entry["logging.googleapis.com/trace"] = trace
    sys.stdout.write(json.dumps(entry) + "\n")
    sys.stdout.flush()


def debug(message: str, **fields: Any) -> None:
    log("DEBUG", message, **fields)


def info(message: str, **fields: Any) -> None:
    log("INFO", message, **fields)


def warning(message: str, **fields: Any) -> None:
    log("WARNING", message, **fields)


def error(message: str, **fields: Any) -> None:
    log("ERROR", message, **fields)
