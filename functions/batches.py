"""Batches in Firestore: a send_batch request stored once, its progress, its cancelling.

`take` stores a parsed batch (batch_request.parse): its document first
(`rbm_batches/{batch_id}`, with the request's fingerprint), then every accepted
message as a PENDING document due at once, created in bulk
(store.create_messages: create-if-absent, so a retry after a call cut short
writes only the rest, and nothing twice), then each message's timer
(timers.schedule_all), then the answer into the batch document. Nothing is
sent here: the RBM queue (RBM_TASKS_QUEUE) paces the creates, which
revoke_expired's re-send of a PENDING message makes (rbm_create.send), at the
rate it shares with revokes; without a queue the scheduled revoke_expired pass
makes them. With the pre-check, a number users.batchGet reports unreachable
is stored UNREACHABLE (as a create answered 404), its SMS due at once.
"""

import dataclasses
import time
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from functions import conversations, logs, outcomes, rbm, store
from functions.batch_request import Batch as Request
from functions.batch_request import Rejected
from functions.model import BATCHES_COLLECTION, Batch, Message, State
from functions.transitions import Fact, cancel_pending, learn

OPTED_OUT = "the user unsubscribed from this agent"  # send_message's reason, word for word
UNREACHABLE = "RBM users.batchGet: not reachable over RCS"
CANCELLED = "batch cancelled"
CANCEL_PAGE = 100  # messages one cancelling commit changes: each with its two outcome events
RATE_WINDOW_SECONDS = 60  # progress: the rate of creates over this last window


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
    """The documents of the kept messages: PENDING and due at once, or UNREACHABLE (SMS due
    at once) where the pre-check says so."""
    records = [o.record(now, 0, request.batch_id) for _, o in kept]
    unreachable = _unreachable(records) if request.precheck else set()
    return [learn(m, Fact.UNREACHABLE, now, error=UNREACHABLE) if m.message_id in unreachable else m for m in records]


def _set_timers(created: list[Message]) -> None:
    """Each created message's timer (its create, or its SMS). Messages an earlier try created
    got theirs then, or, if that try died first, the scheduled safety net sets them."""
    from functions import timers  # loads google-cloud-tasks only where timers are set

    timers.schedule_all([(None, m) for m in created])


def _rejections(rejected: list[Rejected]) -> list[dict[str, Any]]:
    """The rejected messages grouped by error, so a batch of 10,000 fits its document."""
    grouped: dict[str, list[int]] = {}
    for r in sorted(rejected, key=lambda r: r.index):
        grouped.setdefault(r.error, []).append(r.index)
    return [{"error": error, "indexes": indexes} for error, indexes in grouped.items()]


def take(request: Request) -> Batch:
    """The stored batch of `request`, its messages stored and their timers set: at once for a
    request already stored, else after storing what is missing. Conflict if the batch id
    belongs to another request; UnstorableError / ContentionError from store."""
    ref = collection().document(store.document_id(request.batch_id, "batch_id"))
    fresh = Batch(
        request.batch_id, request.fingerprint, len(request.accepted) + len(request.rejected), request.precheck
    )
    batch = store.update(ref, Batch, lambda current: current or dataclasses.replace(fresh, created_at=store.now()))
    if batch.fingerprint != request.fingerprint:
        raise Conflict("batch_id already used for a different request")
    if batch.stored:
        return batch
    started = time.monotonic()
    kept, rejected = _screened(request)
    records = _records(request, kept, store.now())
    screened = time.monotonic()
    created = store.create_messages(records)
    stored_at = time.monotonic()
    _set_timers(created)
    timed = time.monotonic()
    unreachable = sum(1 for m in records if m.state is State.UNREACHABLE)
    done = dataclasses.replace(
        batch, stored=True, accepted=len(kept), unreachable=unreachable, rejections=_rejections(rejected)
    )
    stored = store.update(ref, Batch, lambda current: current if current and current.stored else done)
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
            "store": round(stored_at - screened, 2),
            "timers": round(timed - stored_at, 2),
        },
    )
    return stored


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


def _cancel_page(ids: list[str], now: datetime) -> list[Message]:
    docs = [(store.message_ref(i), Message) for i in ids]
    changed: list[Message | None] = store.update_all(
        docs, lambda found: [m and cancel_pending(m, now, CANCELLED) for m in found]
    )
    return [m for m in changed if m]  # one deleted meanwhile (an erasure) is gone


def cancel(batch_id: str, wait_seconds: float) -> dict[str, int]:
    """Withdraws the batch's messages not yet created (cancel_pending), CANCEL_PAGE to a
    commit, each with its outcome events; a create in flight finishes, and a message it
    leaves PENDING (a transient failure) is withdrawn by the next pass, passes repeated
    until none is in flight or `wait_seconds` have passed. The batch document records
    when it was cancelled. Returns {"cancelled", "in_flight"} (in flight when it gave up);
    LookupError if there is no such batch."""

    def marked(current: Batch | None) -> Batch:
        if current is None:
            raise LookupError(f"no batch {batch_id}")
        return current if current.cancelled_at else dataclasses.replace(current, cancelled_at=store.now())

    store.update(collection().document(store.document_id(batch_id, "batch_id")), Batch, marked)
    cancelled, deadline = 0, time.monotonic() + wait_seconds
    while True:
        ids = [m.message_id for m in of_batch(batch_id, State.PENDING)]
        now = store.now()
        after = [m for i in range(0, len(ids), CANCEL_PAGE) for m in _cancel_page(ids[i : i + CANCEL_PAGE], now)]
        cancelled += len([m for m in after if m.state is State.FAILED and m.last_error == CANCELLED])
        in_flight = len([m for m in after if m.state is State.PENDING])
        if not in_flight or time.monotonic() > deadline:
            logs.info(
                "batch cancelled", event="batch_cancelled", batch_id=batch_id, cancelled=cancelled, in_flight=in_flight
            )
            return {"cancelled": cancelled, "in_flight": in_flight}
        time.sleep(1)
