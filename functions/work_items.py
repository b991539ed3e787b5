"""Work items: the body of a Cloud Tasks task, due work on its way to process_due_work.

JSON `{"duty": "revoke" | "fallback", "message_ids": [...], "due_at": RFC 3339}`.
A per-message timer (functions/timers.py) carries one id; the format allows
more, for callers that hand over many messages due at one time. An item only
says "look at these messages at this time": the message documents hold the
truth, so an item delivered twice, early, late, or to two workers at once
changes nothing more.
"""

import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Duty(StrEnum):
    """What a work item asks for: the kind of due work (one per sweep)."""

    REVOKE = "revoke"
    FALLBACK = "fallback"


MAX_IDS = 1000  # an item beyond it is not ours


class WorkItemError(ValueError):
    """The bytes are not a work item."""


@dataclass(frozen=True)
class WorkItem:
    duty: Duty
    message_ids: tuple[str, ...]
    due_at: datetime

    def encode(self) -> bytes:
        """The item as a task's JSON body."""
        data = {"duty": self.duty, "message_ids": list(self.message_ids), "due_at": self.due_at.isoformat()}
        return json.dumps(data).encode()


def decode(data: bytes) -> WorkItem:
    """A task's body → WorkItem; WorkItemError for anything else (not JSON, an unknown
    duty, no ids or more than MAX_IDS, a `due_at` without its offset, JSON nested deeper
    than the parser reads)."""
    try:
        body = json.loads(data)
        duty, ids, due_at = body["duty"], body["message_ids"], datetime.fromisoformat(body["due_at"])
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise WorkItemError(f"not a work item: {type(exc).__name__}") from None
    if (
        duty not in tuple(Duty)  # compared, not hashed: a JSON list or object is no duty either
        or not isinstance(ids, list)
        or not 0 < len(ids) <= MAX_IDS
        or not all(isinstance(i, str) and i for i in ids)
        or due_at.tzinfo is None
    ):
        raise WorkItemError("not a work item: bad duty, message_ids or due_at")
    return WorkItem(Duty(duty), tuple(ids), due_at)
