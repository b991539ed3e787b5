"""send_batch's request: validated here, with no I/O, so every rule is unit-tested.

A batch is `{"batch_id"?, "defaults"?, "messages": [...], "precheck"?}`. Each
message is a send_message request merged over `defaults` (a shallow merge: a
field the message gives replaces the default's whole value) and checked by
send_message's own rules (outbound.parse). Its message id is derived from the
batch id and its index (`message_id`), so a retried batch writes the same
documents. Within one batch a phone may appear once per agent: a later entry
for the same (agent, phone) is rejected, naming the index of the first.
"""

import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from functions import outbound, store

MAX_MESSAGES = 10_000  # Twilio's Bulk Messaging takes as many per request; so does one users.batchGet
# Cloud Run functions refuse an HTTP request body over 32 MiB ("Quotas": max HTTP request size);
# 10,000 messages of ~3 KB each fit, a batch of 10,000 full-size rich cards (250 KB each) does not.
MAX_BODY_BYTES = 32 * 1024 * 1024
BATCH_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
BATCH_ID_RULE = "1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit"
# Fields a batch sets itself: a message's id is derived, a default phone would send every message to one number.
NOT_IN_DEFAULTS = ("phone", "message_id")
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "rbm-relay:send_batch")
# The batch document records every rejection in one field, `rejections` (batches._rejections):
# a map {"error", "indexes"} per distinct reason. Firestore's "Storage size calculations" count
# a string as its UTF-8 bytes + 1, an integer as 8 and a field name as its bytes + 1: a reason
# takes its text + 15 bytes, an index 8. Room is kept for the reason the opt-out check adds
# when the batch is taken (batches.OPTED_OUT).
REASON_BYTES, INDEX_BYTES, LATER_REASON_BYTES = 15, 8, 64


class InvalidBatch(ValueError):
    """The batch as a whole can't be taken; the reason is safe to show the caller."""


class TooLarge(InvalidBatch):
    """More messages, or more bytes, than one batch takes."""


@dataclass(frozen=True)
class Rejected:
    index: int
    error: str


@dataclass(frozen=True)
class Batch:
    batch_id: str
    fingerprint: str  # request_fingerprint, of the request without its batch_id: what makes a retry the same request
    precheck: bool
    accepted: list[tuple[int, outbound.Outbound]]  # (index, message), in index order
    rejected: list[Rejected]


def message_id(batch_id: str, index: int) -> str:
    """The message id of the batch's `index`-th message: a UUID (version 5) of both."""
    return str(uuid.uuid5(_NAMESPACE, f"{batch_id}:{index}"))


def request_fingerprint(merged: list[Any], precheck: bool) -> str:
    """sha256 hex of the request as canonical JSON (sorted keys, no spaces), its messages
    `merged` over the defaults: a field given in `defaults` or in every message is the same
    request, as send_message's fingerprint is taken after its defaults."""
    canonical = {"messages": merged, "precheck": precheck}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _recorded_bytes(rejected: list[Rejected], size: int) -> int:
    """The most the batch document's `rejections` can take: every reason in `rejected`, an
    index for each of the batch's `size` messages, and the reason added later."""
    reasons = {r.error for r in rejected}
    return sum(len(e.encode()) + REASON_BYTES for e in reasons) + INDEX_BYTES * size + LATER_REASON_BYTES


def _check(condition: bool, reason: str) -> None:
    if not condition:
        raise InvalidBatch(reason)


def _one(item: Any, batch_id: str, index: int, agent: str, segments: int | None) -> outbound.Outbound:
    """The message of a batch entry already merged over the defaults (which never set message_id)."""
    if not isinstance(item, dict):
        raise outbound.InvalidRequest("message must be a JSON object")
    if "message_id" in item:
        raise outbound.InvalidRequest("message_id is set by the batch (from batch_id and the index); use client_ref")
    return outbound.parse(item | {"message_id": message_id(batch_id, index)}, agent, segments)


def parse(body: Any, default_agent: str, sms_max_segments: int | None = None) -> Batch:
    """The batch a send_batch body asks for: each message accepted (as outbound.Outbound,
    defaults applied) or rejected with send_message's reason, or a later duplicate of an
    (agent, phone). InvalidBatch for a body that is not a batch at all: not an object, no
    messages, bad defaults, batch_id or precheck, or rejections more than its document can
    record (_recorded_bytes); TooLarge (an InvalidBatch) for more than MAX_MESSAGES."""
    _check(isinstance(body, dict), "body must be a JSON object")
    messages, defaults, precheck = body.get("messages"), body.get("defaults"), body.get("precheck", False)
    defaults = {} if defaults is None else defaults
    _check(isinstance(messages, list) and len(messages) > 0, "messages must be a non-empty array")
    if len(messages) > MAX_MESSAGES:
        raise TooLarge(f"a batch holds at most {MAX_MESSAGES:,} messages")
    _check(isinstance(defaults, dict), "defaults must be an object of send_message fields")
    _check(not any(f in defaults for f in NOT_IN_DEFAULTS), f"defaults may not set {' or '.join(NOT_IN_DEFAULTS)}")
    _check(isinstance(precheck, bool), "precheck must be true or false")
    batch_id = body.get("batch_id")
    batch_id = str(uuid.uuid4()) if batch_id is None else batch_id  # absent: a new id; "" or 0 is a bad one
    _check(
        isinstance(batch_id, str) and BATCH_ID.fullmatch(batch_id) is not None,
        f"batch_id must be {BATCH_ID_RULE}",
    )
    accepted: list[tuple[int, outbound.Outbound]] = []
    rejected: list[Rejected] = []
    first: dict[tuple[str, str], int] = {}
    merged = [defaults | item if isinstance(item, dict) else item for item in messages]
    for index, item in enumerate(merged):
        try:
            wanted = _one(item, batch_id, index, default_agent, sms_max_segments)
        except RecursionError:
            rejected.append(Rejected(index, "message nests maps and arrays too deep"))
            continue
        except outbound.InvalidRequest as exc:
            rejected.append(Rejected(index, str(exc)))
            continue
        key = (wanted.agent_id, wanted.phone)
        if key in first:
            rejected.append(Rejected(index, f"phone already in this batch for this agent, at index {first[key]}"))
            continue
        first[key] = index
        accepted.append((index, wanted))
    if _recorded_bytes(rejected, len(messages)) > store.MAX_VALUE_BYTES:
        raise InvalidBatch(
            f"the rejected messages' reasons ({len({r.error for r in rejected}):,} different ones) are more than"
            f" the batch can record; the first, at index {rejected[0].index}: {rejected[0].error}"
        )
    return Batch(batch_id, request_fingerprint(merged, precheck), precheck, accepted, rejected)
