"""send_message's request: validated here, with no I/O, so every rule is unit-tested.

A request that passes `parse` can be stored in Firestore and is not one RBM
documents it will refuse; anything else is an `InvalidRequest` naming the field.
"""

import dataclasses
import hashlib
import json
import math
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from functions import agents, sms_text
from functions.events import MAX_ATTRIBUTE_BYTES
from functions.model import Fallback, Message
from functions.store import INT64

E164 = re.compile(r"\+[1-9]\d{6,14}")
TRAFFIC_TYPES = {"AUTHENTICATION", "SERVICEREQUEST", "ACKNOWLEDGEMENT", "PROMOTION", "TRANSACTION"}
MIN_REVOKE_SECONDS = 10  # the platform advises at least 10 s
MAX_REVOKE_SECONDS = 30 * 86400  # the platform keeps an undelivered message 30 days
# The sender's own reference and key/values, echoed in every outcome event (issue 18's contract).
MAX_CLIENT_REF = 128
MAX_METADATA_KEYS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 10, 64, 256

# RBM's documented limits on a contentMessage. Sources: the "Send messages" guide
# (guides/build/messages/send: "The maximum size of the entire stringified
# AgentMessage is 250 KB … The text portion of the message has its own limit of
# 3072 characters") and the REST reference (reference/rest/v1/phones.agentMessages:
# AgentContentMessage, CardContent, CarouselCard, SuggestedReply, SuggestedAction).
MAX_AGENT_MESSAGE_BYTES = 250_000  # "250 KB"; read as the smaller of 250,000 and 256,000
CONTENT_KINDS = ("text", "fileName", "uploadedRbmFile", "richCard", "contentInfo")  # the union: exactly one
_CARDS = ("richCard.standaloneCard.cardContent", "richCard.carouselCard.cardContents[]")
_SUGGESTIONS = ("suggestions[]", *(f"{card}.suggestions[]" for card in _CARDS))
MAX_CHARACTERS = (
    {"text": 3072}
    | {f"{card}.title": 200 for card in _CARDS}
    | {f"{card}.description": 2000 for card in _CARDS}
    | {f"{s}.{kind}.text": 25 for s in _SUGGESTIONS for kind in ("reply", "action")}
)
ITEMS = {"suggestions": (0, 11), "richCard.carouselCard.cardContents": (2, 10)} | {
    f"{card}.suggestions": (0, 4) for card in _CARDS
}

# What Firestore stores (cloud.google.com/firestore/quotas, "Collections, documents,
# and fields"; each seen refused by the emulator): maps and arrays nested at most 20
# deep, the document's own field counting as 1 (the emulator takes one level more),
# a field path of at most 1,500 bytes, no empty or `__.*__` field name, no array
# directly in an array, no integer outside 64 bits (store.INT64). The 1 MiB document
# limit needs no rule of its own: content within RBM's 250 KB and an SMS of 1,600
# units keep a message document far below it.
MAX_NESTING = 20
MAX_FIELD_PATH_BYTES = 1500
RESERVED_FIELD_NAME = re.compile(r"__.*__", re.DOTALL)


# A path named in an error is cut to this many characters: field names are the caller's, of any
# length, and a reason is echoed in answers, logs and a batch's document (1 MiB in all).
MAX_SHOWN_PATH = 60


class InvalidRequest(ValueError):
    """The request can't be sent as it is; the reason is safe to show the caller."""


@dataclass(frozen=True)
class Outbound:
    phone: str
    content: dict[str, Any]
    agent_id: str
    message_id: str
    revoke_after_seconds: int | None = None
    traffic_type: str | None = None
    fallback_text: str | None = None
    time_sensitive: bool = False
    client_ref: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return fingerprint(
            self.phone,
            self.agent_id,
            self.content,
            self.traffic_type,
            self.revoke_after_seconds,
            self.fallback_text,
            self.time_sensitive,
            self.client_ref,
            self.metadata,
        )

    def record(self, now: datetime, resend_after: float, batch_id: str | None = None) -> Message:
        """The PENDING document stored before RBM is called. A batch message (`batch_id` set)
        is stored parked, due for nothing until its batch is answered (transitions.released,
        from batches.take), and keeps its deadline as a duration that counts from its
        accepted create (transitions.learn): the wait in the queue never eats into its RCS
        window."""
        deadline = timedelta(seconds=self.revoke_after_seconds) if self.revoke_after_seconds else None
        return Message(
            message_id=self.message_id,
            phone=self.phone,
            agent_id=self.agent_id,
            content=self.content,
            traffic_type=self.traffic_type,
            fallback=Fallback.WAITING if self.fallback_text else Fallback.NONE,
            fallback_text=self.fallback_text,
            fallback_segments=sms_text.count(self.fallback_text).segments if self.fallback_text else None,
            time_sensitive=self.time_sensitive,
            revoke_at=now + deadline if deadline and not batch_id else None,
            next_action_at=None if batch_id else now + timedelta(seconds=resend_after),
            created_at=now,
            fingerprint=self.fingerprint,
            client_ref=self.client_ref,
            metadata=dict(self.metadata),
            batch_id=batch_id,
            revoke_after_seconds=self.revoke_after_seconds if batch_id else None,
        )


def fingerprint(
    phone: str,
    agent_id: str | None,
    content: dict[str, Any] | None,
    traffic_type: str | None,
    revoke_after_seconds: int | None,
    fallback_text: str | None,
    time_sensitive: bool,
    client_ref: str | None = None,
    metadata: dict[str, str] | None = None,
) -> str:
    """sha256 hex of the canonical request (JSON, sorted keys, no spaces), after
    defaults are applied: two requests that would send the same thing share it.
    `client_ref` and `metadata` are in it only when set, so a message stored before
    they existed is still the same request as a retry of it without them."""
    extra = ({"client_ref": client_ref} if client_ref is not None else {}) | (
        {"metadata": metadata} if metadata else {}
    )
    canonical = extra | {
        "phone": phone,
        "agent_id": agent_id,
        "content": content,
        "traffic_type": traffic_type,
        "revoke_after_seconds": revoke_after_seconds,
        "fallback_text": fallback_text,
        "time_sensitive": time_sensitive,
    }
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def stored_fingerprint(m: Message) -> str:
    """The fingerprint of the request that created `m`. A document written before
    fingerprints were stored gets it from its own fields: they keep the request
    (the deadline as `revoke_at - created_at`, both set from one clock reading)."""
    if m.fingerprint:
        return m.fingerprint
    revoke_after = round((m.revoke_at - m.created_at).total_seconds()) if m.revoke_at and m.created_at else None
    return fingerprint(
        m.phone,
        m.agent_id,
        m.content,
        m.traffic_type,
        revoke_after,
        m.fallback_text,
        m.time_sensitive,
        m.client_ref,
        m.metadata,
    )


def conflict(stored: Message, wanted: Outbound) -> str | None:
    """Why `wanted` may not reuse the message_id of `stored`, or None if it is the same request."""
    if not stored.tracked:
        return "message_id belongs to a message another sender sent"
    if (stored.phone, stored.agent_id) != (wanted.phone, wanted.agent_id):  # both canonical (Message.from_doc)
        return "message_id already used for another recipient"
    # A document stored before agent ids were canonical holds the fingerprint of the
    # agent id as its request gave it: the same request matches it in either form.
    same = {dataclasses.replace(wanted, agent_id=agent).fingerprint for agent in agents.spellings(wanted.agent_id)}
    if stored_fingerprint(stored) not in same:
        return (
            "message_id already used for a different request"
            " (content, deadline, traffic type, fallback, client_ref or metadata)"
        )
    return None


def _require(condition: bool, reason: str) -> None:
    if not condition:
        raise InvalidRequest(reason)


def _shown(path: str) -> str:
    """`path` as an error names it: at most MAX_SHOWN_PATH characters, then `…`."""
    return path if len(path) <= MAX_SHOWN_PATH else f"{path[:MAX_SHOWN_PATH]}…"


def _nodes(value: Any, path: str = "", depth: int = 0) -> Iterator[tuple[str, object]]:
    """Every value of a JSON tree with its path (`a.b[2].c`). The body is the
    document (depth 0) and its fields are depth 1: a tree nested deeper than
    Firestore stores is refused before it is walked further."""
    _require(depth <= MAX_NESTING, f"{_shown(path)} nests maps and arrays more than {MAX_NESTING} deep")
    yield path, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _nodes(item, f"{path}.{key}" if path else key, depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _nodes(item, f"{path}[{i}]", depth + 1)


def _unicode(text: str) -> bool:
    """False for a str that holds an unpaired UTF-16 surrogate (JSON allows `"\\ud83d"`)."""
    try:
        text.encode()
        return True
    except UnicodeEncodeError:
        return False


def _check_unicode(body: dict[str, Any]) -> None:
    for path, value in _nodes(body):
        keys = value.keys() if isinstance(value, dict) else ()
        _require(all(_unicode(k) for k in keys), f"{_shown(path) or 'body'} has a field name that is not valid Unicode")
        _require(
            not isinstance(value, str) or _unicode(value),
            f"{_shown(path)} is not valid Unicode text (an unpaired surrogate)",
        )


def _check_storable(content: dict[str, Any]) -> None:
    for path, value in _nodes(content, "content", 1):
        if isinstance(value, dict):
            for key in value:
                _require(
                    bool(key) and not RESERVED_FIELD_NAME.fullmatch(key),
                    f"{_shown(path)} has a field name Firestore can't store: empty or __reserved__",
                )
        _require(
            len(path.encode()) <= MAX_FIELD_PATH_BYTES,
            f"{_shown(path)} is a field path over {MAX_FIELD_PATH_BYTES} bytes",
        )
        _require(
            not (isinstance(value, list) and any(isinstance(v, list) for v in value)),
            f"{_shown(path)} holds an array directly in an array, which Firestore can't store",
        )
        _require(
            not isinstance(value, int) or isinstance(value, bool) or value in INT64,
            f"{_shown(path)} is an integer outside 64 bits, which Firestore can't store",
        )


def _check_rbm(content: dict[str, Any], traffic_type: str | None) -> None:
    kinds = [k for k in CONTENT_KINDS if k in content]
    _require(len(kinds) == 1, f"content must have exactly one of {', '.join(CONTENT_KINDS)}")
    for path, value in _nodes(content, "content", 1):
        pattern = re.sub(r"\[\d+\]", "[]", path).removeprefix("content.")
        _require(
            not isinstance(value, float) or math.isfinite(value),
            f"{_shown(path)} is not a JSON number (NaN and Infinity are not JSON: RBM's request could not carry it)",
        )
        if pattern in MAX_CHARACTERS:
            _require(
                isinstance(value, str) and len(value) <= MAX_CHARACTERS[pattern],
                f"{path} must be text of at most {MAX_CHARACTERS[pattern]} characters",
            )
        if pattern in ITEMS:
            low, high = ITEMS[pattern]
            _require(
                isinstance(value, list) and low <= len(value) <= high, f"{path} must be a list of {low} to {high} items"
            )
    body = {"contentMessage": content} | ({"messageTrafficType": traffic_type} if traffic_type else {})
    _require(
        len(json.dumps(body, separators=(",", ":")).encode()) <= MAX_AGENT_MESSAGE_BYTES,
        f"content is over RBM's {MAX_AGENT_MESSAGE_BYTES:,} bytes for a whole message",
    )


def _sender_fields(body: dict[str, Any]) -> tuple[str | None, dict[str, str]]:
    """The request's `client_ref` and `metadata`, checked against their limits."""
    client_ref, metadata = body.get("client_ref"), body.get("metadata")
    _require(
        client_ref is None or (isinstance(client_ref, str) and len(client_ref) <= MAX_CLIENT_REF),
        f"client_ref must be text of at most {MAX_CLIENT_REF} characters",
    )
    _require(
        metadata is None
        or (
            isinstance(metadata, dict)
            and len(metadata) <= MAX_METADATA_KEYS
            and all(0 < len(k) <= MAX_METADATA_KEY and not RESERVED_FIELD_NAME.fullmatch(k) for k in metadata)
            and all(isinstance(v, str) and len(v) <= MAX_METADATA_VALUE for v in metadata.values())
        ),
        f"metadata must be an object of at most {MAX_METADATA_KEYS} keys of 1 to {MAX_METADATA_KEY} characters"
        f" (not __reserved__) to text values of at most {MAX_METADATA_VALUE} characters",
    )
    return client_ref, dict(metadata or {})


def parse(body: Any, default_agent: str, sms_max_segments: int | None = None) -> Outbound:
    """The request a send_message body asks for, defaults applied; InvalidRequest
    (naming the field) for anything that can't be stored, that RBM documents it refuses,
    or whose fallback text the SMS provider would refuse (sms_text.refusal; `sms_max_segments`:
    the gateway's own limit, None for none)."""
    _require(isinstance(body, dict), "body must be a JSON object")
    _check_unicode(body)
    phone, content = body.get("phone"), body.get("content")
    _require(
        isinstance(phone, str) and E164.fullmatch(phone) is not None, "phone must be an E.164 number like +14155550123"
    )
    _require(isinstance(content, dict) and bool(content), "content must be a non-empty RBM contentMessage object")
    agent_id = body.get("agent_id") or default_agent
    _require(isinstance(agent_id, str) and bool(agent_id), "agent_id missing and no RBM_AGENT_ID configured")
    agent_id = agents.canonical(agent_id)
    _require(agents.well_formed(agent_id), "agent_id must be an RBM agent id: x_agent or x_agent@rbm.goog")
    _require(
        len(agent_id.encode()) <= MAX_ATTRIBUTE_BYTES,
        f"agent_id must be at most {MAX_ATTRIBUTE_BYTES:,} bytes: outcome events carry it as a Pub/Sub attribute",
    )
    message_id = body.get("message_id") or str(uuid.uuid4())
    try:
        message_id = str(uuid.UUID(message_id))
    except (ValueError, TypeError, AttributeError):
        raise InvalidRequest("message_id must be a UUID") from None
    revoke_after = body.get("revoke_after_seconds")
    _require(
        revoke_after is None
        or (type(revoke_after) is int and MIN_REVOKE_SECONDS <= revoke_after <= MAX_REVOKE_SECONDS),
        f"revoke_after_seconds must be an integer from {MIN_REVOKE_SECONDS} to {MAX_REVOKE_SECONDS}",
    )
    traffic_type = body.get("traffic_type")
    _require(
        traffic_type is None or (isinstance(traffic_type, str) and traffic_type in TRAFFIC_TYPES),
        f"traffic_type must be one of {sorted(TRAFFIC_TYPES)}",
    )
    _check_storable(content)
    _check_rbm(content, traffic_type)
    fallback = body.get("fallback")
    _require(fallback is None or isinstance(fallback, dict), "fallback must be an object")
    text = (fallback or {}).get("text")
    time_sensitive = (fallback or {}).get("time_sensitive", False)
    if fallback is not None:
        _require(isinstance(text, str) and len(text.strip()) > 0, "fallback.text must be non-empty text")
        too_long = sms_text.refusal(str(text), sms_max_segments)
        _require(too_long is None, too_long or "")
        _require(isinstance(time_sensitive, bool), "fallback.time_sensitive must be true or false")
    client_ref, metadata = _sender_fields(body)
    return Outbound(
        phone, content, agent_id, message_id, revoke_after, traffic_type, text, time_sensitive, client_ref, metadata
    )
