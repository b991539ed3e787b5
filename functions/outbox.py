"""The outcome events' outbox: none lost between a Firestore commit and its publish.

store.update_all writes one outbox document per outcome event (collection
`rbm_outcomes`, id = event_id, `published` false) in the same commit as the
message change it describes (`stage`); once committed the events are published
to the outcomes topic, ordering key = message_id (`deliver`). Their mark
(`published` true) costs no commit of its own: it rides in the instance's next
commit that records events, through `stage` (one more write there, no round trip). A process that
dies before its publish, or a publish that fails, leaves them unpublished; a
mark that never rides (the instance idle or gone) leaves them unmarked: each
scheduled run publishes what has been left unmarked longer than
OUTBOX_GRACE_SECONDS and marks it in one batched write (`republish`).
Publishing is at least once; a duplicate carries the same event_id and the
same data.
"""

import json
import threading
import time
from datetime import datetime, timedelta

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from functions import config, logs, pubsub, store
from functions.model import OUTBOX_QUERY, OUTCOMES_COLLECTION, RECENT_BY_FATE_QUERY, Message, retention
from functions.outcomes import OutcomeEvent

REPUBLISH_PAGE = 500  # events a scheduled run republishes at most; the next run takes the rest
# Marks of published events one commit carries at most: a commit holds at most 500
# writes (Firestore "Quotas and limits"), and the change itself comes first.
MARKS_PER_COMMIT = 100

# This instance's published events awaiting their mark: event_id -> when published
# (time.monotonic). Losing them (the instance gone, the commit carrying them failed) costs a
# duplicate publish, never an event.
_unmarked: dict[str, float] = {}
_lock = threading.Lock()


def collection() -> firestore.CollectionReference:
    return store.client().collection(OUTCOMES_COLLECTION)


def stage(batch: firestore.WriteBatch, events: list[OutcomeEvent], at: datetime) -> dict[str, float]:
    """Adds to `batch` (a message's commit) the creation of each event's outbox document
    and takes, for it alone, the marks of this instance's published events younger than
    the grace (older ones are left to the republisher); returns the marks taken, for
    `unstage` if the commit fails on a conflict."""
    for event in events:
        ref = collection().document(event.event_id)
        doc = event.to_doc() | {"published": False, "created_at": at, "expire_at": retention(at)}
        batch.create(ref, store.check(ref, doc))
    young = time.monotonic() - config.outbox_grace()
    with _lock:
        for event_id in [i for i, t in _unmarked.items() if t < young]:
            del _unmarked[event_id]
        marks = {i: _unmarked.pop(i) for i in list(_unmarked)[:MARKS_PER_COMMIT]}
    for event_id in marks:
        batch.update(collection().document(event_id), {"published": True})
    return marks


def unstage(marks: dict[str, float]) -> None:
    """Gives back the marks `stage` took, for the next commit (this one conflicted)."""
    with _lock:
        _unmarked.update(marks)


def forget_marks() -> None:
    """Drops all the marks awaiting a commit: one failed on an outbox document that is gone
    (the outbox changed by hand, an emptied database); the republisher marks them."""
    with _lock:
        _unmarked.clear()


def _publish(events: list[OutcomeEvent]) -> bool:
    """Publishes `events`; False (logged) when Pub/Sub fails. Never raises."""
    try:
        pubsub.publish_batch(
            config.outcomes_topic(),
            [(json.dumps(e.data()).encode(), e.attributes()) for e in events],
            ordering_keys=[e.message_id for e in events],
        )
        return True
    except Exception as exc:  # the republisher takes them later
        logs.warning(
            "outcome events not published; left for the republisher",
            event="outcomes_unpublished",
            event_ids=[e.event_id for e in events],
            reason=f"{type(exc).__name__}: {exc}"[:300],
        )
        return False


def deliver(events: list[OutcomeEvent]) -> bool:
    """Publishes committed events and leaves their marks to this instance's next commit;
    False (logged, left to `republish`) when Pub/Sub fails. Never raises: the change is committed."""
    if not _publish(events):
        return False
    at = time.monotonic()
    with _lock:
        _unmarked.update(dict.fromkeys((e.event_id for e in events), at))
    return True


def republish(now: datetime) -> int:
    """Publishes the events left unmarked for longer than the grace (never published, or
    published by an instance whose next commit never came), oldest first, up to
    REPUBLISH_PAGE, and marks them in one commit; returns how many were published.
    Never raises: a scheduled run's own work goes on, and the next run tries again."""
    published, due = OUTBOX_QUERY
    before = now - timedelta(seconds=config.outbox_grace())
    query = (
        collection()
        .where(filter=FieldFilter(published, "==", False))
        .where(filter=FieldFilter(due, "<", before))
        .order_by(due)
        .limit(REPUBLISH_PAGE)
    )
    try:
        found = query.get(retry=store.RETRY, timeout=store.CALL_SECONDS)
    except Exception as exc:  # Firestore unavailable: the next run looks again
        logs.warning("outbox not read", event="outcomes_republish_failed", reason=f"{type(exc).__name__}"[:100])
        return 0
    events = []
    for snapshot in found:
        try:
            events.append(OutcomeEvent.from_doc(store.found(snapshot)))
        except (LookupError, TypeError, ValueError) as exc:  # not an event: skipped, the others go on
            logs.error(
                "outbox document is not an outcome event; skipped",
                event="outcomes_republish_failed",
                event_id=snapshot.id,
                reason=type(exc).__name__,
            )
    events.sort(key=lambda e: (e.message_id, e.seq))  # each message's in seq order, as the ordering key keeps them
    if not events or not _publish(events):
        return 0
    batch = store.client().batch()
    for event in events:
        batch.update(collection().document(event.event_id), {"published": True})
    try:
        batch.commit(retry=store.RETRY, timeout=store.CALL_SECONDS)
    except Exception as exc:  # published, not marked: the next run publishes them again (duplicates)
        logs.warning("outbox not marked", event="outcomes_republish_failed", reason=f"{type(exc).__name__}"[:100])
    logs.info("outcome events republished", event="outcomes_republished", count=len(events))
    return len(events)


def history(message: Message) -> list[OutcomeEvent]:
    """The outcome events of `message` committed so far, by seq (one read of their
    documents by id, `message_id:1` … `message_id:outcome_seq`; those the TTL removed are left out)."""
    refs = [collection().document(f"{message.message_id}:{seq}") for seq in range(1, message.outcome_seq + 1)]
    found = [s for s in store.client().get_all(refs, retry=store.RETRY, timeout=store.CALL_SECONDS) if s.exists]
    return sorted((OutcomeEvent.from_doc(store.found(s)) for s in found), key=lambda e: e.seq)


def recent(since: datetime, fate: str | None, limit: int) -> list[OutcomeEvent]:
    """Outcome events committed since `since`, oldest first, only those of `fate` if given
    (its query on (fate, created_at) is a declared index), at most `limit`."""
    selector, at = RECENT_BY_FATE_QUERY
    query = collection().where(filter=FieldFilter(at, ">=", since))
    if fate:
        query = query.where(filter=FieldFilter(selector, "==", fate))
    found = query.order_by(at).limit(limit).get(retry=store.RETRY, timeout=store.CALL_SECONDS)
    return [OutcomeEvent.from_doc(store.found(s)) for s in found]
