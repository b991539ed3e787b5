"""The RBM event model: one parser for every payload shape the platform sends.

The webhook classifies with it, the subscribers read with it; nothing else
parses RBM payloads. Unknown fields are kept in `raw` and unknown shapes
become `Kind.UNKNOWN`, which is still forwarded: the platform adds types.
"""

import json
import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from functions import agents


class Kind(StrEnum):
    USER_MESSAGE = "user_message"
    USER_EVENT = "user_event"
    SERVER_EVENT = "server_event"
    AGENT_LAUNCH_EVENT = "agent_launch_event"
    UNKNOWN = "unknown"


class EventError(ValueError):
    """The bytes are not an RBM event at all (not a JSON object)."""


CONTENT_FIELDS = ("text", "userFile", "location", "suggestionResponse")
# What only an agent launch event carries (RBM reference, AgentLaunchEvent).
LAUNCH_FIELDS = ("newLaunchState", "oldLaunchState")
# Pub/Sub's limit on an attribute value (cloud.google.com/pubsub/quotas, "Resource limits").
MAX_ATTRIBUTE_BYTES = 1024


@dataclass(frozen=True)
class Event:
    kind: Kind
    raw: dict[str, Any]
    event_type: str | None = None
    agent_id: str | None = None
    message_id: str | None = None
    event_id: str | None = None
    phone: str | None = None
    send_time: str | None = None

    @property
    def content_type(self) -> str | None:
        """Which of text / userFile / location / suggestionResponse a user message carries."""
        return next((f for f in CONTENT_FIELDS if f in self.raw), None)

    @property
    def time(self) -> datetime | None:
        """`sendTime` as a datetime; RBM sends RFC 3339 with up to nanoseconds."""
        match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", self.send_time or "")
        if not match:
            return None
        whole, fraction, zone = match.groups()
        return datetime.fromisoformat(whole + (fraction or "")[:7] + zone.replace("Z", "+00:00"))

    @property
    def dedupe_id(self) -> str | None:
        """The id that, with the phone, identifies this event among retries and replays."""
        return self.event_id or self.message_id

    def attributes(self) -> dict[str, str]:
        """Pub/Sub attributes subscriptions filter on; never the phone number. A value
        that can't be an attribute (not valid Unicode, over 1,024 bytes in UTF-8) is
        left out: the event still goes through, and its data carries it verbatim."""
        fields = {
            "kind": self.kind.value,
            "event_type": self.event_type,
            "agent_id": self.agent_id,
            "message_id": self.message_id,
            "event_id": self.event_id,
        }
        return {k: v for k, v in fields.items() if v and _fits_attribute(v)}


def is_unicode(value: str) -> bool:
    """Whether `value` is valid Unicode: JSON's `"\\ud83d"` escape yields a str with an
    unpaired surrogate, which no UTF-8 encoder (Pub/Sub, Firestore, HTTP) accepts."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _fits_attribute(value: str) -> bool:
    return is_unicode(value) and len(value.encode()) <= MAX_ATTRIBUTE_BYTES


def _text(payload: dict[str, Any], key: str) -> str | None:
    value = payload.get(key)
    return value if isinstance(value, str) and value else None


def _kind(payload: dict[str, Any]) -> Kind:
    """The kind the signed data itself says. Never the push envelope's `type`
    attribute: the signature does not cover it, so a replayed body could carry any."""
    if any(f in payload for f in LAUNCH_FIELDS):
        return Kind.AGENT_LAUNCH_EVENT
    if _text(payload, "phoneNumber") and _text(payload, "eventType"):
        return Kind.SERVER_EVENT
    if _text(payload, "senderPhoneNumber"):
        if _text(payload, "eventType"):
            return Kind.USER_EVENT
        if any(f in payload for f in CONTENT_FIELDS):
            return Kind.USER_MESSAGE
    return Kind.UNKNOWN


def parse(payload: dict[str, Any]) -> Event:
    """A decoded RBM payload → Event, classified from the payload alone."""
    kind = _kind(payload)
    return Event(
        kind=kind,
        raw=payload,
        event_type=_text(payload, "eventType"),
        agent_id=agents.canonical(_text(payload, "agentId") or "") or None,
        message_id=_text(payload, "messageId"),
        event_id=_text(payload, "eventId"),
        phone=_text(payload, "senderPhoneNumber") or _text(payload, "phoneNumber"),
        send_time=_text(payload, "sendTime"),
    )


def decode(data: bytes) -> Event:
    """Event bytes (the decoded `message.data`) → Event, or EventError."""
    try:
        payload = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EventError("event data is not JSON") from exc
    except RecursionError as exc:
        raise EventError("event data nests arrays and objects too deep to read") from exc
    if not isinstance(payload, dict):
        raise EventError("event data is not a JSON object")
    return parse(payload)
