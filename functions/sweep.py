"""What both kinds of due work share: finding it, claiming it, acting on it.

A `Sweep` is one kind of due work: which messages are due (an `in` filter on
one field and a range on a due-time field, backed by a declared composite
index, so a query's cost follows the number due, not the collection), how one
is claimed under a lease (a precondition write, so overlapping runs and
duplicated work items never act twice: one claim wins, the others find it
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

PAGE = 200

Claim = Callable[[Message, datetime, timedelta, str], Message | None]
Act = Callable[[Message], str]


@dataclass(frozen=True)
class Sweep:
    name: str  # the scheduled entry point that runs it
    duty: str  # its name in a work item
    fields: tuple[str, str]  # (the field filtered with `in`, the due-time field)
    values: tuple[StrEnum, ...]  # the values of the first field that can be due
    claim: Claim
    act: Act  # returns one of `outcomes`
    outcomes: tuple[str, ...]


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
        page = (query.start_after(cursor) if cursor else query).limit(PAGE).get()
        yield from (Message.from_doc(store.found(s)) for s in page)
        if len(page) < PAGE:
            return
        cursor = page[-1]


def due_at(sweep: Sweep, message: Message) -> datetime:
    at: datetime = getattr(message, sweep.fields[1])  # set on every message the sweep's query finds
    return at


def count_due(sweep: Sweep, until: datetime) -> int:
    # google-cloud-firestore annotates Query.count() as returning the AggregationQuery class; it returns an instance.
    return int(_due_query(sweep, until).count().get()[0][0].value)  # type: ignore[call-arg, index]


def _claim_and_act(sweep: Sweep, message_id: str, owner: str, deadline: float | None) -> str:
    """One message: claimed (or found taken) and acted on; a failure stays with it.
    "left" untouched, for a later run, once the monotonic `deadline` has passed."""
    if deadline is not None and time.monotonic() > deadline:
        return "left"
    now, lease = store.now(), timedelta(seconds=config.lease_seconds())
    try:
        claimed = store.claim_message(message_id, lambda m: sweep.claim(m, now, lease, owner))
        return sweep.act(claimed) if claimed and claimed.tracked else "skipped"  # another system's: never acted on
    except Exception as exc:  # one message's trouble must not stop the others; its lease expires
        logs.error(
            "could not process a message",
            event="sweep_error",
            sweep=sweep.name,
            message_id=message_id,
            reason=repr(exc)[:300],
        )
        return "errors"


@functools.cache
def _executor() -> ThreadPoolExecutor:
    """The calls in flight of this instance, all work items together: SWEEP_PARALLELISM at most."""
    return ThreadPoolExecutor(config.sweep_parallelism(), thread_name_prefix="act")


def perform(sweep: Sweep, message_ids: list[str], owner: str, deadline: float | None = None) -> dict[str, str]:
    """Claims and acts on each message, in parallel within the instance's bound;
    answers each message's outcome (one of `sweep.outcomes`, "skipped", "errors" or "left")."""
    futures = {i: _executor().submit(_claim_and_act, sweep, i, owner, deadline) for i in dict.fromkeys(message_ids)}
    return {i: f.result() for i, f in futures.items()}
