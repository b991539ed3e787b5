"""What both kinds of due work share: finding it, claiming it, acting on it.

A `Sweep` is one kind of due work: which messages are due (an `in` filter on
one field and a range on a due-time field, backed by a declared composite
index, so a query's cost follows the number due, not the collection), how one
is claimed under a lease (a precondition write, so overlapping passes and
tasks delivered twice or to two workers never act twice: one claim wins, the others find it
taken), and how it is acted on. The lease *is* the due-time field: a claim
that is never completed makes the message due again when it runs out.
"""

import functools
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from google.cloud.firestore_v1.base_query import FieldFilter
from google.cloud.firestore_v1.query import Query

from functions import config, logs, store
from functions.model import Message
from functions.work_items import Duty

PAGE = 200


class Outcome(StrEnum):
    """What became of one due message; a pass's summary and a task's answer name them so."""

    REVOKED = "revoked"  # revoke_expired: the DELETE was answered 200
    DELIVERED = "delivered"  # the DELETE was answered 404: it reached the user first
    RESENT = "resent"  # a PENDING message's create went through
    SENT = "sent"  # send_fallbacks: the provider took the SMS
    CANCELLED = "cancelled"  # no SMS is needed any more
    UNKNOWN = "unknown"  # an SMS that may or may not have gone out; never sent again
    RETRIED = "retried"  # failed for now, due again later
    FAILED = "failed"  # given up, the reason recorded
    SKIPPED = "skipped"  # claimed by someone else, no longer due, or not ours
    ERRORS = "errors"  # an unexpected error; its lease makes it due again
    LEFT = "left"  # not looked at: the pass's (or the task's) time was spent


Claim = Callable[[Message, datetime, timedelta, str], Message | None]
Act = Callable[[Message], Outcome]
ALWAYS = (Outcome.SKIPPED, Outcome.ERRORS, Outcome.LEFT)  # what any sweep's message can come to


@dataclass(frozen=True)
class Sweep:
    """One kind of due work, whole: its entry point, query, claim, act and outcomes."""

    name: str  # the scheduled entry point that runs it
    duty: Duty  # its name in a work item and a task's name
    fields: tuple[str, str]  # (the field filtered with `in`, the due-time field): a declared composite index
    values: tuple[StrEnum, ...]  # the values of the first field that can be due
    claim: Claim
    act: Act  # returns one of `outcomes`
    outcomes: tuple[Outcome, ...]


def _due_query(sweep: Sweep, until: datetime, after: datetime | None = None) -> Query:
    selector, due_at = sweep.fields
    query = (
        store.messages()
        .where(filter=FieldFilter(selector, "in", [v.value for v in sweep.values]))
        .where(filter=FieldFilter(due_at, "<=", until))
    )
    return query.where(filter=FieldFilter(due_at, ">", after)) if after else query


def due(sweep: Sweep, until: datetime, after: datetime | None = None) -> Iterator[Message]:
    """Every message due by `until` (and, if given, after `after`), earliest first, a page at a time."""
    query, cursor = _due_query(sweep, until, after).order_by(sweep.fields[1]), None
    while True:
        page = store.query((query.start_after(cursor) if cursor else query).limit(PAGE))
        yield from (Message.from_doc(store.found(s)) for s in page)
        if len(page) < PAGE:
            return
        cursor = page[-1]


def due_at(sweep: Sweep, message: Message) -> datetime:
    """When `message`, found by `sweep`'s query, is due: its due-time field."""
    at: datetime = getattr(message, sweep.fields[1])  # set on every message the sweep's query finds
    return at


def _claim_and_act(sweep: Sweep, message_id: str, owner: str, deadline: float | None) -> Outcome:
    """One message: claimed (or found taken) and acted on; a failure stays with it.
    LEFT untouched, for a later pass or task, once the monotonic `deadline` has passed."""
    if deadline is not None and time.monotonic() > deadline:
        return Outcome.LEFT
    now, lease = store.now(), timedelta(seconds=config.lease_seconds())
    try:
        claimed = store.claim_message(message_id, lambda m: sweep.claim(m, now, lease, owner))
        # Taken, no longer due, or another system's message (tracked false): never acted on.
        return sweep.act(claimed) if claimed and claimed.tracked else Outcome.SKIPPED
    except Exception as exc:  # one message's trouble must not stop the others; its lease expires
        logs.error(
            "could not process a message",
            event="sweep_error",
            sweep=sweep.name,
            message_id=message_id,
            reason=repr(exc)[:300],
        )
        return Outcome.ERRORS


@functools.cache
def _executor() -> ThreadPoolExecutor:
    """The calls in flight of this instance, all its tasks (or its pass) together: SWEEP_PARALLELISM at most."""
    return ThreadPoolExecutor(config.sweep_parallelism(), thread_name_prefix="act")


def perform(sweep: Sweep, message_ids: list[str], owner: str, deadline: float | None = None) -> dict[str, Outcome]:
    """Claims and acts on each message, in parallel within the instance's bound;
    answers each message's outcome (one of `sweep.outcomes` or `ALWAYS`)."""
    futures = {i: _executor().submit(_claim_and_act, sweep, i, owner, deadline) for i in dict.fromkeys(message_ids)}
    return {i: f.result() for i, f in futures.items()}
