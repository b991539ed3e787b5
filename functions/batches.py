"""Batches in Firestore: a send_batch request stored once, its progress, its cancelling.

`take` keeps "nothing is sent before the answer" in three steps, each safe to
repeat. (1) Store: the batch document (`rbm_batches/{batch_id}`, with the
request's fingerprint), then every accepted message as a PENDING document
*parked* — due for nothing, so no timer is set and no scheduled pass finds it
(transitions.parked) — created in bulk (store.create_messages: create-if-absent,
so a retry after a call cut short writes only the rest, and nothing twice).
(2) Answer: the answer recorded in the batch document (`stored`). (3) Release:
each of the batch's messages still parked made due at once
(transitions.released, RELEASE_PAGE to a commit), its timer set
(timers.schedule_all), and `released_at` recorded; send_batch answers 202 after
it. A call that fails before its answer is recorded has sent nothing; a retry
with the same request finishes it (stores what is missing, or releases what is
still parked). What remains: creates begin while the release runs, so the 202
follows the first creates by up to that release's seconds, and a call that dies
in the release has started part of a batch it never answered — its retry
releases the rest, and sets again the timers of those released but not yet
tried, which that call may have died before setting. A batch cancelled before
its release releases nothing: its parked messages are withdrawn instead
(transitions.cancel_pending).

This module calls neither RBM's create nor the SMS provider: the RBM queue
(RBM_TASKS_QUEUE) paces the creates, which revoke_expired's re-send of a PENDING
message makes (rbm_create.send), at the rate it shares with revokes; without a
queue the scheduled revoke_expired pass makes them. With the pre-check, a number
users.batchGet reports unreachable is stored UNREACHABLE (as a create answered
404), its SMS parked like a create and due at the release.
"""

import dataclasses
import functools
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any, TypeVar

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from google.cloud.firestore_v1.document import DocumentReference

from functions import conversations, logs, outcomes, rbm, store
from functions.batch_request import Batch as Request
from functions.batch_request import Rejected
from functions.model import BATCHES_COLLECTION, Batch, Fallback, Message, State
from functions.transitions import Fact, cancel_pending, learn, parked, released

OPTED_OUT = "the user unsubscribed from this agent"  # send_message's reason, word for word
UNREACHABLE = "RBM users.batchGet: not reachable over RCS"
CANCELLED = "batch cancelled"
CANCEL_PAGE = 100  # messages one cancelling commit changes: each with its two outcome events
RELEASE_PAGE = 200  # messages one release commit changes: a due time each, no outcome event
RATE_WINDOW_SECONDS = 60  # progress: the rate of creates over this last window


T = TypeVar("T")


class Conflict(ValueError):
    """The batch id was used for a different request."""


def collection() -> firestore.CollectionReference:
    return store.client().collection(BATCHES_COLLECTION)


def answer(batch: Batch) -> dict[str, Any]:
    """send_batch's 202 body for a stored batch."""
    body = {"batch_id": batch.batch_id, "accepted": batch.accepted, "rejected": batch.rejected()}
    return body | ({"unreachable": batch.unreachable} if batch.precheck else {})


def _screened(request: Request) -> tuple[list[tuple[int, Any]], list[Rejected]]:
    """The accepted messages of users who have not opted out, and all rejected ones."""
    opted_out = conversations.opted_out_among([(o.agent_id, o.phone) for _, o in request.accepted])
    kept = [(i, o) for i, o in request.accepted if (o.agent_id, o.phone) not in opted_out]
    gone = [Rejected(i, OPTED_OUT) for i, o in request.accepted if (o.agent_id, o.phone) in opted_out]
    return kept, [*request.rejected, *gone]


def _unreachable(messages: list[Message]) -> set[str]:
    """Message ids whose number users.batchGet leaves out of reachableUsers, a call per agent
    and MAX_BATCH_GET_USERS numbers; an answer without reachableUsers reaches none of them
    (proto3 JSON leaves an empty list out). A call that fails leaves its numbers to their create."""
    found: set[str] = set()
    by_agent: dict[str, list[Message]] = {}
    for m in messages:
        by_agent.setdefault(m.agent_id or "", []).append(m)
    for agent, mine in by_agent.items():
        for i in range(0, len(mine), rbm.MAX_BATCH_GET_USERS):
            page = mine[i : i + rbm.MAX_BATCH_GET_USERS]
            result = rbm.client().reachable_users([m.phone for m in page], agent)
            reachable = result.body.get("reachableUsers", [])
            if result.outcome is not rbm.Outcome.OK or not isinstance(reachable, list):
                logs.warning("pre-check failed; creates decide", event="precheck_failed", reason=result.error)
                continue
            found |= {m.message_id for m in page if m.phone not in set(reachable)}
    return found


def _records(request: Request, kept: list[tuple[int, Any]], now: datetime) -> list[Message]:
    """The documents of the kept messages, parked: PENDING (outbound.record), or UNREACHABLE
    with its SMS DUE where the pre-check says so."""
    records = [o.record(now, 0, request.batch_id) for _, o in kept]
    unreachable = _unreachable(records) if request.precheck else set()
    return [
        parked(learn(m, Fact.UNREACHABLE, now, error=UNREACHABLE)) if m.message_id in unreachable else m
        for m in records
    ]


def _rejections(rejected: list[Rejected]) -> list[dict[str, Any]]:
    """The rejected messages grouped by error, so a batch of 10,000 fits its document."""
    grouped: dict[str, list[int]] = {}
    for r in sorted(rejected, key=lambda r: r.index):
        grouped.setdefault(r.error, []).append(r.index)
    return [{"error": error, "indexes": indexes} for error, indexes in grouped.items()]


def _paged(ids: list[str], size: int, page: Callable[[list[str]], list[T]]) -> list[T]:
    """`page` applied to `ids`, `size` at a time, store.CREATE_PARALLELISM pages at once; their results in order."""
    pages = [ids[i : i + size] for i in range(0, len(ids), size)]
    with ThreadPoolExecutor(store.CREATE_PARALLELISM, thread_name_prefix="batch") as pool:
        return [r for done in pool.map(page, pages) for r in done]


def _store(request: Request, ref: DocumentReference, batch: Batch) -> Batch:
    """Steps (1) and (2): the kept messages stored parked, then the answer recorded."""
    started = time.monotonic()
    kept, rejected = _screened(request)
    records = _records(request, kept, store.now())
    screened = time.monotonic()
    created = store.create_messages(records)
    # What an earlier try stored stands (its pre-check may have answered otherwise): counted as stored.
    new_ids = {m.message_id for m in created}
    earlier = store.get_messages([m.message_id for m in records if m.message_id not in new_ids])
    unreachable = sum(1 for m in [*created, *earlier] if m.state is State.UNREACHABLE)

    def answered(current: Batch | None) -> Batch:  # keeps a `cancelled_at` written meanwhile
        if current and current.stored:
            return current
        return dataclasses.replace(
            current or batch,
            stored=True,
            stored_at=store.now(),
            accepted=len(kept),
            unreachable=unreachable,
            rejections=_rejections(rejected),
        )

    stored = store.update(ref, Batch, answered)
    logs.info(
        "batch stored",
        event="batch_stored",
        batch_id=request.batch_id,
        accepted=stored.accepted,
        rejected=len(rejected),
        unreachable=unreachable,
        created=len(created),
        seconds={
            "screen": round(screened - started, 2),  # opt-outs read, and the pre-check
            "store": round(time.monotonic() - screened, 2),
        },
    )
    return stored


def _untried(m: Message) -> bool:
    """Whether the work of a released message's timer has not begun: a create never claimed, or
    an SMS never tried. Its timer is set again by a retry, in case the call that released it
    died before setting it (a task of the same name is refused as ALREADY_EXISTS, timers.enqueue)."""
    return (m.state is State.PENDING and not m.attempts) or (m.fallback is Fallback.DUE and not m.fallback_attempts)


def _release_page(ids: list[str], now: datetime) -> list[Message]:
    """The parked messages among `ids` made due at `now` (transitions.released) in one commit;
    returns the page's untried messages, released now or before."""
    docs = [(store.message_ref(i), Message) for i in ids]
    after: list[Message | None] = store.update_all(docs, lambda found: [m and released(m, now) for m in found])
    return [m for m in after if m is not None and _untried(m)]


def _release(request: Request, ref: DocumentReference, batch: Batch) -> Batch:
    """Step (3): the batch's parked messages released and their timers set — or, once the batch
    is cancelled, withdrawn (cancel_pending) — then `released_at` recorded."""
    started, now = time.monotonic(), store.now()
    ids = [o.message_id for _, o in request.accepted]  # those never stored (opted out) are absent: skipped
    withdrawn: list[tuple[Message, Message]] = []
    untried: list[Message] = []
    if batch.cancelled_at:
        withdrawn = _paged(ids, CANCEL_PAGE, functools.partial(_cancel_page, now=now))
    else:
        untried = _paged(ids, RELEASE_PAGE, functools.partial(_release_page, now=now))
    committed = time.monotonic()
    from functions import timers  # loads google-cloud-tasks only where timers are set

    timers.schedule_all([(None, m) for m in untried])

    def recorded(current: Batch | None) -> Batch:
        current = current or batch
        return current if current.released_at else dataclasses.replace(current, released_at=store.now())

    done = store.update(ref, Batch, recorded)
    logs.info(
        "batch released",
        event="batch_released",
        batch_id=request.batch_id,
        untried=len(untried),  # released by this call, or by an earlier one and not yet begun
        cancelled=sum(1 for before, after in withdrawn if after != before),
        seconds={"release": round(committed - started, 2), "timers": round(time.monotonic() - committed, 2)},
    )
    return done


def take(request: Request) -> Batch:
    """The batch of `request`, answered: its messages stored and released (or, if it was
    cancelled first, withdrawn). At once for a batch already released; else what is missing
    is stored, the answer recorded, and what is still parked released. Conflict if the batch
    id belongs to another request; UnstorableError / ContentionError from store."""
    ref = collection().document(store.document_id(request.batch_id, "batch_id"))
    fresh = Batch(
        request.batch_id, request.fingerprint, len(request.accepted) + len(request.rejected), request.precheck
    )
    batch = store.update(ref, Batch, lambda current: current or dataclasses.replace(fresh, created_at=store.now()))
    if batch.fingerprint != request.fingerprint:
        raise Conflict("batch_id already used for a different request")
    if batch.released_at:
        return batch
    if not batch.stored:
        batch = _store(request, ref, batch)
    return _release(request, ref, batch)


def of_batch(batch_id: str, state: State | None = None) -> list[Message]:
    query = store.messages().where(filter=FieldFilter("batch_id", "==", batch_id))
    if state:
        query = query.where(filter=FieldFilter("state", "==", state.value))
    return [Message.from_doc(store.found(s)) for s in store.query(query)]


def get(batch_id: str) -> Batch | None:
    snapshot = collection().document(batch_id).get(retry=store.RETRY, timeout=store.CALL_SECONDS)
    data = snapshot.to_dict()
    return None if data is None else Batch.from_doc(data)


def progress(batch_id: str, now: datetime) -> dict[str, Any]:
    """How far the batch got: counts by state, fallback and fate, creates per second (over the
    last RATE_WINDOW_SECONDS, or the seconds since the first create if fewer, at least one;
    and on average since the first) and the time the PENDING ones still need at the recent
    rate (None while nothing is being created). The mean counts the gaps between creates:
    n creates over `span` seconds are n - 1 a span."""
    messages = of_batch(batch_id)
    sent = sorted(m.sent_at for m in messages if m.sent_at)
    window = min(RATE_WINDOW_SECONDS, max(1.0, (now - sent[0]).total_seconds())) if sent else RATE_WINDOW_SECONDS
    recent = sum(1 for at in sent if at > now - timedelta(seconds=window)) / window
    span = (sent[-1] - sent[0]).total_seconds() if len(sent) > 1 else 0.0
    pending = sum(1 for m in messages if m.state is State.PENDING)
    return {
        "messages": len(messages),
        "state": dict(Counter(m.state.value for m in messages)),
        "fallback": dict(Counter(m.fallback.value for m in messages)),
        "fate": dict(Counter(outcomes.fate(m)[0].value for m in messages)),
        "creates_per_second": {"recent": round(recent, 2), "mean": round((len(sent) - 1) / span, 2) if span else None},
        "seconds_left": round(pending / recent) if recent else (0 if not pending else None),
    }


def _cancel_page(ids: list[str], now: datetime) -> list[tuple[Message, Message]]:
    """cancel_pending on the messages among `ids`, in one commit: (before, after) of each that
    exists (one deleted meanwhile, an erasure, is gone)."""
    seen: list[Message | None] = []

    def cancelled(found: list[Message | None]) -> list[Message | None]:
        seen[:] = found
        return [m and cancel_pending(m, now, CANCELLED) for m in found]

    after = store.update_all([(store.message_ref(i), Message) for i in ids], cancelled)
    return [(b, a) for b, a in zip(seen, after, strict=True) if b is not None and a is not None]


def cancel(batch_id: str, wait_seconds: float) -> dict[str, int]:
    """Withdraws the batch's messages whose create was never attempted (cancel_pending),
    CANCEL_PAGE to a commit, each with its outcome events, and the SMS not yet under way of
    its messages without RCS. A message whose create was attempted is in flight: it finishes (sent, or
    given up), never withdrawn; passes are repeated until none is PENDING or `wait_seconds`
    have passed. The batch document records when it was cancelled, so a send_batch call
    still storing it, or its retry, releases nothing. Returns {"cancelled", "in_flight"}
    (withdrawn by this call; still PENDING when it gave up); LookupError if there is no such
    batch."""

    def marked(current: Batch | None) -> Batch:
        if current is None:
            raise LookupError(f"no batch {batch_id}")
        return current if current.cancelled_at else dataclasses.replace(current, cancelled_at=store.now())

    store.update(collection().document(store.document_id(batch_id, "batch_id")), Batch, marked)
    # The UNREACHABLE messages' SMS not yet under way (parked, or due): the first pass withdraws them.
    unreachable = [m.message_id for m in of_batch(batch_id, State.UNREACHABLE) if m.fallback is Fallback.DUE]
    cancelled, deadline = 0, time.monotonic() + wait_seconds
    while True:
        ids = [*unreachable, *(m.message_id for m in of_batch(batch_id, State.PENDING))]
        unreachable = []
        pairs = _paged(ids, CANCEL_PAGE, functools.partial(_cancel_page, now=store.now()))
        cancelled += sum(1 for before, after in pairs if after != before)
        in_flight = sum(1 for _, after in pairs if after.state is State.PENDING)
        if not in_flight or time.monotonic() > deadline:
            logs.info(
                "batch cancelled", event="batch_cancelled", batch_id=batch_id, cancelled=cancelled, in_flight=in_flight
            )
            return {"cancelled": cancelled, "in_flight": in_flight}
        time.sleep(1)
