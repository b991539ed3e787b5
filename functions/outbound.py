"""send_message's request: validated here, with no I/O, so every rule is unit-tested."""

import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from functions.model import Fallback, Message

E164 = re.compile(r"\+[1-9]\d{6,14}")
TRAFFIC_TYPES = {"AUTHENTICATION", "SERVICEREQUEST", "ACKNOWLEDGEMENT", "PROMOTION", "TRANSACTION"}
MIN_REVOKE_SECONDS = 10  # the platform advises at least 10 s
MAX_REVOKE_SECONDS = 30 * 86400  # the platform keeps an undelivered message 30 days
MAX_SMS_TEXT = 1600  # Twilio's limit on a message body (ten concatenated segments)


class InvalidRequest(ValueError):
    """The request can't be sent as it is; the reason is safe to show the caller."""


@dataclass(frozen=True)
class Outbound:
    phone: str
    content: dict
    agent_id: str
    message_id: str
    revoke_after_seconds: int | None = None
    traffic_type: str | None = None
    fallback_text: str | None = None
    time_sensitive: bool = False

    def record(self, now: datetime, resend_after: float) -> Message:
        """The PENDING document stored before RBM is called."""
        return Message(
            message_id=self.message_id,
            phone=self.phone,
            agent_id=self.agent_id,
            content=self.content,
            traffic_type=self.traffic_type,
            fallback=Fallback.WAITING if self.fallback_text else Fallback.NONE,
            fallback_text=self.fallback_text,
            time_sensitive=self.time_sensitive,
            revoke_at=now + timedelta(seconds=self.revoke_after_seconds) if self.revoke_after_seconds else None,
            next_action_at=now + timedelta(seconds=resend_after),
            created_at=now,
        )


def _require(condition: bool, reason: str) -> None:
    if not condition:
        raise InvalidRequest(reason)


def parse(body, default_agent: str) -> Outbound:
    _require(isinstance(body, dict), "body must be a JSON object")
    phone, content = body.get("phone"), body.get("content")
    _require(isinstance(phone, str) and E164.fullmatch(phone) is not None, "phone must be an E.164 number like +14155550123")
    _require(isinstance(content, dict) and bool(content), "content must be a non-empty RBM contentMessage object")
    agent_id = body.get("agent_id") or default_agent
    _require(isinstance(agent_id, str) and bool(agent_id), "agent_id missing and no RBM_AGENT_ID configured")
    message_id = body.get("message_id") or str(uuid.uuid4())
    try:
        message_id = str(uuid.UUID(message_id))
    except (ValueError, TypeError, AttributeError):
        raise InvalidRequest("message_id must be a UUID") from None
    revoke_after = body.get("revoke_after_seconds")
    _require(revoke_after is None or (type(revoke_after) is int and MIN_REVOKE_SECONDS <= revoke_after <= MAX_REVOKE_SECONDS),
             f"revoke_after_seconds must be an integer from {MIN_REVOKE_SECONDS} to {MAX_REVOKE_SECONDS}")
    traffic_type = body.get("traffic_type")
    _require(traffic_type is None or traffic_type in TRAFFIC_TYPES, f"traffic_type must be one of {sorted(TRAFFIC_TYPES)}")
    fallback = body.get("fallback")
    _require(fallback is None or isinstance(fallback, dict), "fallback must be an object")
    text = (fallback or {}).get("text")
    time_sensitive = (fallback or {}).get("time_sensitive", False)
    if fallback is not None:
        _require(isinstance(text, str) and 0 < len(text.strip()) and len(text) <= MAX_SMS_TEXT,
                 f"fallback.text must be non-empty text of at most {MAX_SMS_TEXT} characters")
        _require(isinstance(time_sensitive, bool), "fallback.time_sensitive must be true or false")
    return Outbound(phone, content, agent_id, message_id, revoke_after, traffic_type, text, time_sensitive)
