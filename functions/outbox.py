"""The outcome events' outbox: none lost between a Firestore commit and its publish.

store.update_all writes one outbox document per outcome event (collection
`rbm_outcomes`, id = event_id, `published` false) in the same commit as the
message change it describes (`stage`); once committed the events are published
to the outcomes topic, ordering key = message_id, and marked published in one
batched write (`deliver`). A process that dies in between, or a publish that
fails, leaves them unpublished: each scheduled run first publishes what has been
left longer than OUTBOX_GRACE_SECONDS (`republish`). Publishing is at least
once; a duplicate carries the same event_id and the same data.
"""

import json
from datetime import datetime, timedelta

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from functions import config, logs, pubsub, store
from functions.model import OUTBOX_QUERY, OUTCOMES_COLLECTION, RECENT_BY_FATE_QUERY, Message, retention
from functions.outcomes import OutcomeEvent

REPUBLISH_PAGE = 500  # events a scheduled run republishes at most; the next run takes the rest


def collection() -> firestore.CollectionReference:
    return store.client().collection(OUTCOMES_COLLECTION)


def stage(batch: firestore.WriteBatch, events: list[OutcomeEvent], at: datetime) -> None:
    """Adds the creation of each event's outbox document to `batch` (the message's commit)."""
    for event in events:
        ref = collection().document(event.event_id)
        doc = event.to_doc() | {"published": False, "created_at": at, "expire_at": retention(at)}
        batch.create(ref, store.check(ref, doc))


def deliver(events: list[OutcomeEvent]) -> bool:
    """Publishes committed events and marks them published; False (logged, left to
    `republish`) when Pub/Sub or the mark fails. Never raises: the change is committed."""
    try:
        pubsub.publish_batch(
            config.outcomes_topic(),
            [(json.dumps(e.data()).encode(), e.attributes()) for e in events],
            ordering_keys=[e.message_id for e in events],
        )
        batch = store.client().batch()
        for event in events:
            batch.update(collection().document(event.event_id), {"published": True})
        batch.commit(retry=store.RETRY, timeout=store.CALL_SECONDS)
        return True
    except Exception as exc:  # publish or mark failed: the republisher takes them later
        logs.warning(
            "outcome events not published; left for the republisher",
            event="outcomes_unpublished",
            event_ids=[e.event_id for e in events],
            reason=f"{type(exc).__name__}: {exc}"[:300],
        )
        return False


def republish(now: datetime) -> int:
    """Publishes the events left unpublished for longer than the grace, oldest first,
    up to REPUBLISH_PAGE; returns how many were published. Never raises: a scheduled
    run's own work goes on, and the next run tries again."""
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
    events = [OutcomeEvent.from_doc(store.found(s)) for s in found]
    events.sort(key=lambda e: (e.message_id, e.seq))  # each message's in seq order, as the ordering key keeps them
    if events and deliver(events):
        logs.info("outcome events republished", event="outcomes_republished", count=len(events))
        return len(events)
    return 0


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
