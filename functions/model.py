"""The Firestore schema: one definition of every document rbm-relay writes and reads.

A message document (collection `rbm_messages`, id = the RBM messageId) carries
two independent states: `state`, how far RCS delivery got, and `fallback`,
how far the SMS fallback got. The README documents every field.
"""

import dataclasses
import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from functions import agents, config


class State(StrEnum):
    PENDING = "PENDING"  # recorded; RBM has not accepted it yet
    SENT = "SENT"
    DELIVERED = "DELIVERED"
    READ = "READ"
    REVOKED = "REVOKED"
    REVOKE_FAILED = "REVOKE_FAILED"  # expired, revoke did not take; waiting for DELIVERED or another revoke
    UNREACHABLE = "UNREACHABLE"  # RBM answered 404 at send: no RCS
    FAILED = "FAILED"  # permanent send error


class Fallback(StrEnum):
    NONE = "NONE"  # no fallback configured
    WAITING = "WAITING"
    DUE = "DUE"
    SENDING = "SENDING"
    CHECKING = "CHECKING"  # an ambiguous Twilio send: its Messages list will say whether it went out
    SENT = "SENT"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"  # delivered after all, or opted out
    UNKNOWN = "UNKNOWN"  # the SMS may have gone out and will not be tried again; always reported


class SmsStatus(StrEnum):
    """The SMS leg's own fate, as the provider's status callbacks report it: Twilio's
    message statuses (Messages resource, "Message status values",
    https://www.twilio.com/docs/messaging/api/message-resource#message-status-values),
    in upper case; the signed gateway's callbacks use the same words."""

    ACCEPTED = "ACCEPTED"  # a Messaging Service took it and picks the sender
    SCHEDULED = "SCHEDULED"
    QUEUED = "QUEUED"
    SENDING = "SENDING"
    SENT = "SENT"  # handed to the carrier
    CANCELED = "CANCELED"  # a scheduled message cancelled before it went
    FAILED = "FAILED"  # never sent (ErrorCode says why)
    UNDELIVERED = "UNDELIVERED"  # the carrier could not deliver it (30003 unreachable, 30005, 30006, 30007, 30008)
    DELIVERED = "DELIVERED"  # the carrier confirmed delivery to the handset
    READ = "READ"  # a read receipt (channels that have them)


# The SMS leg's status only moves up this order, so callbacks arriving late,
# duplicated or out of order end in the same status (a late SENT never hides
# DELIVERED). The three ends rank above every step on the way; a delivery receipt
# ranks above an earlier failure report (carriers correct a DLR, never the reverse).
SMS_STATUS_RANK = {
    s: i
    for i, s in enumerate(
        [
            SmsStatus.ACCEPTED,
            SmsStatus.SCHEDULED,
            SmsStatus.QUEUED,
            SmsStatus.SENDING,
            SmsStatus.SENT,
            SmsStatus.CANCELED,
            SmsStatus.FAILED,
            SmsStatus.UNDELIVERED,
            SmsStatus.DELIVERED,
            SmsStatus.READ,
        ]
    )
}


# Delivery states ordered so that a later state never gives way to an earlier
# one: the state of a message is the maximum of everything known about it, so
# any arrival order of the same facts ends in the same state.
RANK = {
    s: i
    for i, s in enumerate(
        [
            State.PENDING,
            State.FAILED,
            State.UNREACHABLE,
            State.SENT,
            State.REVOKE_FAILED,
            State.REVOKED,
            State.DELIVERED,
            State.READ,
        ]
    )
}
# States in which revoke_expired still has work: re-send, revoke, revoke again.
SWEPT_STATES = (State.PENDING, State.SENT, State.REVOKE_FAILED)
# Fallback states send_fallbacks looks at: due ones, sends whose lease ran out, and
# ambiguous sends to look up in the provider's records.
SWEPT_FALLBACKS = (Fallback.DUE, Fallback.SENDING, Fallback.CHECKING)
# The sweeps' queries: an `in` filter on the first field, a range on the second.
REVOKE_QUERY = ("state", "next_action_at")
FALLBACK_QUERY = ("fallback", "fallback_at")
# The composite indexes behind them (infra declares the same ones).
# The outbox of outcome events (functions/outbox.py): one document per event, id = event_id,
# and its republisher's query: unpublished events, oldest first.
OUTCOMES_COLLECTION = "rbm_outcomes"
# send_batch's requests (functions/batches.py): one document per batch, id = batch_id. Its
# messages are found by equality on `batch_id` (and `state`), which single-field indexes serve.
BATCHES_COLLECTION = "rbm_batches"
OUTBOX_QUERY = ("published", "created_at")
# The operator's `python -m functions outcomes --since … --fate …`: recent events of one fate.
RECENT_BY_FATE_QUERY = ("fate", "created_at")
COMPOSITE_INDEXES = (
    ("rbm_messages", REVOKE_QUERY),
    ("rbm_messages", FALLBACK_QUERY),
    (OUTCOMES_COLLECTION, OUTBOX_QUERY),
    (OUTCOMES_COLLECTION, RECENT_BY_FATE_QUERY),
)

APPLIED_KEEP = 50  # event ids remembered per message; far more than one message gets


@dataclass
class Message:
    message_id: str
    phone: str
    agent_id: str | None = None
    state: State = State.PENDING
    fallback: Fallback = Fallback.NONE
    content: dict[str, Any] | None = None  # the RBM contentMessage, kept to re-send a PENDING message
    traffic_type: str | None = None
    fallback_text: str | None = None
    time_sensitive: bool = False
    tracked: bool = True  # False: a receipt for a message another system sent; recorded, never acted on
    fingerprint: str | None = None  # sha256 of the canonical send_message request (outbound.fingerprint)
    revoke_at: datetime | None = None  # the deadline
    next_action_at: datetime | None = None  # when revoke_expired acts next; a claim's lease end
    fallback_at: datetime | None = None  # when send_fallbacks acts next; a claim's lease end
    lease_owner: str | None = None
    revoking: bool = False  # a DELETE is in flight; still true at the next claim: it was interrupted
    revoke_uncertain: bool = False  # a DELETE was interrupted: a later 404 may mean "revoked", not "delivered"
    attempts: int = 0  # send / revoke attempts by the sweep
    fallback_attempts: int = 0  # SMS sends and lookups of the provider's records
    fallback_tried_at: datetime | None = None  # when the last SMS attempt began: where a lookup starts
    fallback_uncertain: bool = False  # an SMS attempt may have reached the provider: a give-up is UNKNOWN, not FAILED
    fallback_segments: int | None = None  # SMS segments the fallback text takes (sms_text.count): its cost
    last_error: str | None = None
    sms_id: str | None = None
    sms_status: SmsStatus | None = None  # the SMS leg's fate from the provider's status callbacks
    sms_error_code: str | None = None  # the provider's error code with that status, e.g. "30003"
    sms_status_at: datetime | None = None  # when that status was first reported
    created_at: datetime | None = None
    sent_at: datetime | None = None
    delivered_at: datetime | None = None
    read_at: datetime | None = None
    revoked_at: datetime | None = None
    fallback_sent_at: datetime | None = None
    applied: list[str] = field(default_factory=list)  # ids of the RBM events applied
    client_ref: str | None = None  # the sender's reference, echoed in every outcome event
    metadata: dict[str, str] = field(default_factory=dict)  # the sender's key/values, echoed likewise
    batch_id: str | None = None  # the send_batch request that made it, echoed in every outcome event
    # A batch message's deadline counts from its own accepted create (transitions.learn), not from the
    # batch's acceptance: it waits in the queue PENDING with revoke_at unset and this duration kept.
    revoke_after_seconds: int | None = None
    outcome_seq: int = 0  # seq of the last outcome event committed (functions.outcomes)
    updated_at: datetime | None = None
    expire_at: datetime | None = None  # TTL policy field

    @classmethod
    def from_doc(cls, data: dict[str, Any]) -> "Message":
        known = {f.name for f in dataclasses.fields(cls)}
        message = cls(**{k: v for k, v in data.items() if k in known})
        message.state, message.fallback = State(message.state), Fallback(message.fallback)
        message.agent_id = message.agent_id and agents.canonical(message.agent_id)  # stored as given before
        message.sms_status = None if message.sms_status is None else SmsStatus(message.sms_status)
        return message

    def to_doc(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {
            "state": self.state.value,
            "fallback": self.fallback.value,
            "sms_status": None if self.sms_status is None else self.sms_status.value,
        }


def retention(now: datetime) -> datetime:
    """The TTL field's value for a document changed at `now`."""
    return now + timedelta(days=config.retention_days())


def expiry(doc: dict[str, Any], now: datetime, collection: str) -> datetime | None:
    """The TTL field's value for `doc` written at `now` into `collection`: `retention(now)`,
    except None (never deleted by the TTL policy) for a conversation that holds an opt-out,
    and for a batch document. An opt-out lasts until the user opts back in (CTIA Messaging
    Principles and Best Practices, 5.1.2; Twilio and AWS End User Messaging keep opt-out
    lists indefinitely). A batch's id is its messages' `batch_id` and derives their ids
    (batch_request.message_id), and a message is kept until RETENTION_DAYS after its last
    change, which may come any time (a late READ): a batch document deleted before them
    would let a new batch under the same id find them in place, count them as its own and
    send nothing. A batch document holds no phone number."""
    return None if collection == BATCHES_COLLECTION or doc.get("opted_out") else retention(now)


def conversation_id(agent_id: str, phone: str, key: bytes = b"") -> str:
    """A conversation's document id: stable per (agent, user), with no phone number in
    it; HMAC-SHA256 under `key`, so the id does not lead back to the number without the
    key. With no key: sha256, the unkeyed id of documents written before ids were keyed."""
    text = f"{agents.canonical(agent_id)}|{phone}".encode()
    digest = hmac.new(key, text, hashlib.sha256).hexdigest() if key else hashlib.sha256(text).hexdigest()
    return digest[:32]


CONVERSATION_APPLIED_KEEP = 200  # event ids remembered per conversation: typing events come often


@dataclass
class Conversation:
    """rbm_conversations/{conversation_id}: one per (agent, user); user messages below it."""

    agent_id: str
    phone: str
    opted_out: bool = False
    subscription_changed_at: datetime | None = None  # sendTime of the latest opt-out / opt-in applied
    last_activity_at: datetime | None = None
    last_typing_at: datetime | None = None
    applied: list[str] = field(default_factory=list)  # ids of the user events applied (IS_TYPING, (UN)SUBSCRIBE)
    updated_at: datetime | None = None
    expire_at: datetime | None = None

    @classmethod
    def from_doc(cls, data: dict[str, Any]) -> "Conversation":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_doc(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def conversation_of(found: list[Conversation | None], agent_id: str, phone: str) -> Conversation:
    """The conversation of (agent, user) from its stored documents, keyed first then
    unkeyed (conversations.refs): the first that exists, else a new one; with its phone
    filled in (an erasure's opt-out marker keeps none)."""
    current = next((c for c in found if c), None) or Conversation(agent_id, phone)
    return current if current.phone else dataclasses.replace(current, phone=phone)


@dataclass
class UserMessage:
    """rbm_conversations/{conversation_id}/messages/{messageId or eventId}: a user message.
    Its content (`text`, `userFile`, `location` or `suggestionResponse`) is stored as
    RBM sent it, as a top-level field of the same name."""

    message_id: str
    agent_id: str
    send_time: datetime
    content_type: str | None
    content: dict[str, Any] = field(default_factory=dict)  # {content_type: value}
    received_at: datetime | None = None
    updated_at: datetime | None = None
    expire_at: datetime | None = None

    @classmethod
    def from_doc(cls, data: dict[str, Any]) -> "UserMessage":
        known = {f.name for f in dataclasses.fields(cls)} - {"content"}
        return cls(
            **{k: v for k, v in data.items() if k in known}, content={k: v for k, v in data.items() if k not in known}
        )

    def to_doc(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        return {k: v for k, v in doc.items() if k != "content"} | self.content


@dataclass
class Batch:
    """rbm_batches/{batch_id}: one send_batch request, so a retry of it answers the same.

    Written when the request is first taken (`stored` false), completed once every
    accepted message is stored, parked (`stored` true, the answer filled in), and marked
    once those messages are released (`released_at`; functions/batches.py): a retry of a
    batch whose storing was cut short stores the rest, one of a stored batch releases what
    is still parked, one of a released batch reads the answer."""

    batch_id: str
    fingerprint: str  # of the request (batch_request.request_fingerprint): a retry must match it
    size: int  # messages in the request
    precheck: bool = False
    stored: bool = False
    accepted: int = 0
    unreachable: int = 0  # accepted messages the pre-check found unreachable: no create, SMS at once
    rejections: list[dict[str, Any]] = field(default_factory=list)  # [{"error", "indexes": [...]}], by error
    created_at: datetime | None = None
    stored_at: datetime | None = None
    released_at: datetime | None = None  # its parked messages made due (or, cancelled first, withdrawn)
    cancelled_at: datetime | None = None
    updated_at: datetime | None = None
    expire_at: datetime | None = None

    @classmethod
    def from_doc(cls, data: dict[str, Any]) -> "Batch":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_doc(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def rejected(self) -> list[dict[str, Any]]:
        """The rejected messages as send_batch answers them: [{"index", "error"}], by index."""
        return sorted(
            ({"index": i, "error": r["error"]} for r in self.rejections for i in r["indexes"]), key=lambda r: r["index"]
        )
