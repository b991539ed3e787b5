"""Outcome events: what a change of a message tells its sender. Pure functions, no I/O.

Each committed change of a tracked message's `state` (except into PENDING), of
its `fallback` into SENT, FAILED, UNKNOWN or CANCELLED, and of the SMS leg's own
status into DELIVERED or UNDELIVERED / FAILED (receive_sms_status) is one event on the
outcomes topic (README "Outcome events"; the contract is issue 18's). Events
are numbered per message by `seq`, 1, 2, 3… in commit order, continuing the
last number stored on the message (`Message.outcome_seq`), so a consumer that
keeps the highest `seq` per message holds the latest truth whatever order
Pub/Sub delivers them in. A change that changes neither field yields nothing,
so a redelivered receipt or a repeated task publishes nothing new.
"""

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from functions.model import Fallback, Message, SmsStatus, State


class Fate(StrEnum):
    """The message's outcome so far, whichever leg reached the user."""

    PENDING = "pending"
    RCS = "rcs"  # delivered or read over RCS
    SMS = "sms"  # the fallback SMS was accepted by the provider
    FAILED = "failed"  # neither channel can reach the user, or the user opted out
    UNKNOWN = "unknown"  # an SMS whose sending cannot be known


class Channel(StrEnum):
    RCS = "rcs"
    SMS = "sms"


# The fallback states that are an event, and the status each is published as.
FALLBACK_STATUS = {
    Fallback.SENT: "SMS_SENT",
    Fallback.FAILED: "SMS_FAILED",
    Fallback.UNKNOWN: "SMS_UNKNOWN",
    Fallback.CANCELLED: "SMS_CANCELLED",
}
# The SMS leg's own statuses that are an event (the provider's status callbacks), as published.
SMS_LEG_STATUS = {
    SmsStatus.DELIVERED: "SMS_DELIVERED",
    SmsStatus.UNDELIVERED: "SMS_UNDELIVERED",
    SmsStatus.FAILED: "SMS_UNDELIVERED",
}
# The states and fallbacks whose event carries a reason (`Message.last_error`'s cause).
_WITH_REASON = {"UNREACHABLE", "FAILED", "REVOKE_FAILED", "SMS_FAILED", "SMS_UNKNOWN", "SMS_CANCELLED"}
# The time of the fact behind a status, where the message keeps one; else the commit's time.
_FACT_TIME = {
    "SENT": "sent_at",
    "DELIVERED": "delivered_at",
    "READ": "read_at",
    "REVOKED": "revoked_at",
    "SMS_SENT": "fallback_sent_at",
    "SMS_DELIVERED": "sms_status_at",
    "SMS_UNDELIVERED": "sms_status_at",
}
_DELIVERED = (State.DELIVERED, State.READ)
_NO_RCS = (State.UNREACHABLE, State.FAILED, State.REVOKED)


@dataclass(frozen=True)
class OutcomeEvent:
    """One outcome event; `data()` is the published JSON, `attributes()` its Pub/Sub attributes."""

    message_id: str
    seq: int
    status: str
    channel: Channel
    fate: Fate
    final: bool
    agent_id: str | None
    phone: str
    occurred_at: datetime
    client_ref: str | None = None
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)
    reason: str | None = None
    batch_id: str | None = None  # the send_batch request the message came in

    @property
    def event_id(self) -> str:
        return f"{self.message_id}:{self.seq}"

    def data(self) -> dict[str, Any]:
        """The event as published: JSON-ready, `occurred_at` in RFC 3339 (UTC, `Z`) whatever
        offset the fact's time came with (a sendTime may carry one; Firestore gives it back in UTC),
        `metadata` by key (Firestore gives a map back in an order of its own): a copy republished
        from the outbox is the same bytes as the first publish."""
        return {
            "event_id": self.event_id,
            "message_id": self.message_id,
            "seq": self.seq,
            "status": self.status,
            "channel": self.channel.value,
            "fate": self.fate.value,
            "final": self.final,
            "client_ref": self.client_ref,
            "metadata": dict(sorted(self.metadata.items())),
            "agent_id": self.agent_id,
            "phone": self.phone,
            "occurred_at": self.occurred_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "reason": self.reason,
            "batch_id": self.batch_id,
        }

    def attributes(self) -> dict[str, str]:
        """Pub/Sub attributes a subscription can filter on; `client_ref` and `batch_id` only when set."""
        attributes = {
            "event_id": self.event_id,
            "message_id": self.message_id,
            "status": self.status,
            "fate": self.fate.value,
            "agent_id": self.agent_id or "",
        }
        return (
            attributes
            | ({"client_ref": self.client_ref} if self.client_ref else {})
            | ({"batch_id": self.batch_id} if self.batch_id else {})
        )

    def to_doc(self) -> dict[str, Any]:
        """The event as its outbox document holds it (Firestore keeps the datetime)."""
        return self.data() | {"occurred_at": self.occurred_at}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> "OutcomeEvent":
        return cls(
            message_id=doc["message_id"],
            seq=doc["seq"],
            status=doc["status"],
            channel=Channel(doc["channel"]),
            fate=Fate(doc["fate"]),
            final=doc["final"],
            agent_id=doc.get("agent_id"),
            phone=doc["phone"],
            occurred_at=doc["occurred_at"],
            client_ref=doc.get("client_ref"),
            metadata=doc.get("metadata") or {},
            reason=doc.get("reason"),
            batch_id=doc.get("batch_id"),
        )


def fate(m: Message) -> tuple[Fate, bool]:
    """(fate, final) of a message: its outcome so far, and whether our own actions can
    still change it (a READ may still follow `rcs`; a late DELIVERED may follow an SMS)."""
    if m.state in _DELIVERED:
        return Fate.RCS, True
    if _sms_leg(m) == "SMS_UNDELIVERED":
        return Fate.FAILED, True  # the carrier could not deliver the SMS (sms_error_code says why)
    if m.fallback is Fallback.SENT:
        return Fate.SMS, True
    if m.fallback is Fallback.UNKNOWN:
        return Fate.UNKNOWN, True
    if m.fallback in (Fallback.FAILED, Fallback.CANCELLED):
        return Fate.FAILED, True  # the SMS failed, or the user opted out
    if m.fallback is Fallback.NONE and m.state in _NO_RCS:
        return Fate.FAILED, True
    return Fate.PENDING, False


def cause(last_error: str | None) -> str | None:
    """The reason an event carries: our own cause, the part of `last_error` before its
    first ": ". Errors are written "<cause>: <detail>" (e.g. "RBM 404: <Google's message>",
    "gave up after 8 attempts: …"), and the detail, which can quote a provider's reply
    and so a phone number, is never published."""
    return last_error.split(": ", 1)[0][:200] if last_error else None


def changes(before: Message | None, after: Message, at: datetime) -> list[OutcomeEvent]:
    """The events of the change `before` → `after` (None: a new message) committed at
    `at`, numbered from `before.outcome_seq`: a state event, then a fallback event.
    None for an untracked message, or a change of neither `state` nor `fallback`."""
    if not after.tracked:
        return []
    state = None if before is None else before.state
    fallback = None if before is None else before.fallback
    statuses: list[tuple[str, Channel]] = []
    if after.state is not state and after.state is not State.PENDING:
        statuses.append((after.state.value, Channel.RCS))
    if after.fallback is not fallback and after.fallback in FALLBACK_STATUS:
        statuses.append((FALLBACK_STATUS[after.fallback], Channel.SMS))
    leg = _sms_leg(after)
    if leg and leg != (None if before is None else _sms_leg(before)):
        statuses.append((leg, Channel.SMS))
    outcome, final = fate(after)
    last = 0 if before is None else before.outcome_seq
    return [
        OutcomeEvent(
            message_id=after.message_id,
            seq=last + i,
            status=status,
            channel=channel,
            fate=outcome,
            final=final,
            agent_id=after.agent_id,
            phone=after.phone,
            occurred_at=_fact_time(after, status) or at,
            client_ref=after.client_ref,
            metadata=dict(after.metadata or {}),
            reason=after.sms_error_code if status == "SMS_UNDELIVERED" else _reason(after, status),
            batch_id=after.batch_id,
        )
        for i, (status, channel) in enumerate(statuses, start=1)
    ]


def _sms_leg(m: Message) -> str | None:
    """The SMS leg's own status as published, if it is one that makes an event."""
    return None if m.sms_status is None else SMS_LEG_STATUS.get(m.sms_status)


def _reason(m: Message, status: str) -> str | None:
    """The cause a status carries. An SMS cancelled because RCS reached the user has none:
    `last_error` then still holds an earlier failure (a revoke retried), not why it was cancelled."""
    if status not in _WITH_REASON or (status == "SMS_CANCELLED" and m.state in _DELIVERED):
        return None
    return cause(m.last_error)


def _fact_time(m: Message, status: str) -> datetime | None:
    name = _FACT_TIME.get(status)
    value: datetime | None = getattr(m, name) if name else None
    return value


def numbered(before: Message | None, after: Message, at: datetime) -> tuple[Message, list[OutcomeEvent]]:
    """`after` with `outcome_seq` advanced past the events of the change, and those events."""
    events = changes(before, after, at)
    return (dataclasses.replace(after, outcome_seq=events[-1].seq) if events else after), events
