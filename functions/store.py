"""Firestore access: one client per instance, and read-change-write with a precondition.

Every change reads its documents once (one or several, in one round trip) and
commits once, on the condition that nobody wrote them in between (their update
time, or their absence); on a conflict the change is computed again from the
fresh documents. Concurrent writers therefore never interleave, and each change
costs one read and one commit. Before a commit every written document is checked
against Firestore's limits, so what it can never store fails at once with
UnstorableError and the reason, rather than in every retry.
"""

import functools
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

from google.api_core import exceptions
from google.api_core import retry as retries
from google.cloud import firestore
from google.cloud.firestore_v1.base_document import DocumentSnapshot
from google.cloud.firestore_v1.document import DocumentReference
from google.cloud.firestore_v1.query import Query

from functions import config, outcomes
from functions.model import Batch, Conversation, Message, UserMessage, expiry
from functions.outcomes import OutcomeEvent
from functions.transitions import due_from

T = TypeVar("T", Message, Conversation, UserMessage, Batch)
ATTEMPTS = 20
# Firestore's limit on the writes of one commit ("Quotas and limits").
BATCH_WRITES = 500
# Messages created in one commit: each with at most one outcome event (UNREACHABLE, for a batch
# message the pre-check found unreachable), and room left for the outbox marks (100) a commit carries.
CREATE_PAGE = 200
CREATE_PARALLELISM = 8  # commits of create_messages in flight at once
# Each Firestore call (reads, queries, commits) gives up after this long, its retries
# of UNAVAILABLE included, so a request in an outage gets an answer (503, or a Pub/Sub
# redelivery) instead of hanging until the platform ends it; the library's own
# defaults retry a query for 300 s. Every call passes RETRY and CALL_SECONDS.
CALL_SECONDS = 15.0
RETRY = retries.Retry(initial=0.1, maximum=2.0, timeout=CALL_SECONDS)

# Firestore's hard limits ("Quotas and limits": collections, documents and fields),
# with sizes counted as its "Storage size calculations" page counts them.
MAX_DOCUMENT_BYTES = 1_048_576
MAX_VALUE_BYTES = 1_048_487  # of one field's value
MAX_ID_BYTES = 1_500  # a document id, and a field name
MAX_DEPTH = 20  # of maps and arrays inside a field
_RESERVED = re.compile(r"__.*__", re.DOTALL)
INT64 = range(-(2**63), 2**63)  # the integers Firestore stores
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class ContentionError(RuntimeError):
    """Too many concurrent writers on one document; the caller should retry later."""


class UnstorableError(ValueError):
    """Firestore can never store this: an id it refuses, or a document over its limits."""


@functools.cache
def client() -> firestore.Client:
    return firestore.Client(project=config.project() or None, database=config.firestore_database())


def messages() -> firestore.CollectionReference:
    return client().collection(config.messages_collection())


def conversations() -> firestore.CollectionReference:
    return client().collection(config.conversations_collection())


def now() -> datetime:
    return datetime.now(UTC)


def stamped(ref: DocumentReference, doc: dict[str, Any], at: datetime) -> dict[str, Any]:
    """`doc` ready to write at `ref`: its change time and its TTL field set (model.expiry)."""
    return doc | {"updated_at": at, "expire_at": expiry(doc, at, ref.parent.id)}


def stage(
    batch: firestore.WriteBatch,
    ref: DocumentReference,
    snapshot: DocumentSnapshot[DocumentReference],
    doc: dict[str, Any],
) -> None:
    """Adds a write of `doc` to `batch` that fails if `ref` changed since `snapshot`."""
    if snapshot.exists:
        batch.update(ref, doc, option=client().write_option(last_update_time=snapshot.update_time))
    else:
        batch.create(ref, doc)


def storable_text(value: str | None, what: str) -> str:
    """`value` if it is valid Unicode (UTF-8 encodable), else UnstorableError (also when missing)."""
    if value is None:
        raise UnstorableError(f"{what} is missing")
    if _LONE_SURROGATE.search(value):
        raise UnstorableError(f"{what} is not valid Unicode (a lone UTF-16 surrogate)")
    return value


def repaired(value: Any) -> Any:
    """`value` (JSON-shaped) with each lone UTF-16 surrogate in its strings replaced by
    U+FFFD, as a UTF-8 decoder replaces what it cannot decode; map keys are left as they are."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {k: repaired(v) for k, v in value.items()}
    if isinstance(value, list):
        return [repaired(v) for v in value]
    return value


def document_id(value: str, what: str = "document id") -> str:
    """`value` if Firestore accepts it as a document id, else UnstorableError naming `what`."""
    if not value or "/" in value or value in (".", "..") or _RESERVED.fullmatch(value):
        raise UnstorableError(f"{what} {value[:40]!r} cannot be a Firestore document id")
    if len(storable_text(value, what).encode()) > MAX_ID_BYTES:
        raise UnstorableError(f"{what} is over {MAX_ID_BYTES} bytes")
    return value


def _size(value: object, depth: int, where: str) -> int:
    """Storage size of a field value in bytes; UnstorableError for what Firestore refuses."""
    if isinstance(value, str):
        return len(storable_text(value, where).encode()) + 1
    if isinstance(value, bool) or value is None:
        return 1
    if isinstance(value, int):
        if value not in INT64:
            raise UnstorableError(f"{where} is an integer outside 64 bits")
        return 8
    if isinstance(value, (float, datetime)):
        return 8
    if depth > MAX_DEPTH:
        raise UnstorableError(f"{where} nests maps / arrays deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        return _fields_size(value, depth + 1, where)
    if isinstance(value, list):
        if any(isinstance(v, list) for v in value):
            raise UnstorableError(f"{where} holds an array directly inside an array")
        return sum(_size(v, depth + 1, where) for v in value)
    raise UnstorableError(f"{where} is a {type(value).__name__}, not a Firestore value")


def _fields_size(fields: dict[Any, Any], depth: int, where: str) -> int:
    total = 0
    for name, value in fields.items():
        if not isinstance(name, str) or not name or _RESERVED.fullmatch(name):
            raise UnstorableError(f"{where} has a field name Firestore reserves or refuses: {str(name)[:40]!r}")
        if len(storable_text(name, f"a field name in {where}").encode()) > MAX_ID_BYTES:
            raise UnstorableError(f"{where} has a field name over {MAX_ID_BYTES} bytes")
        path = f"{where}.{name[:40]}" if where != "document" else name[:40]
        size = _size(value, depth, path)
        if size > MAX_VALUE_BYTES:
            raise UnstorableError(f"{path} is a value of {size} bytes, over Firestore's {MAX_VALUE_BYTES}")
        total += len(name.encode()) + 1 + size
    return total


def check(ref: DocumentReference, doc: dict[str, Any]) -> dict[str, Any]:
    """`doc` if Firestore can store it at `ref`, else UnstorableError saying why: its
    strings valid Unicode, integers within 64 bits, no array directly in an array,
    field names neither empty nor `__.*__` nor over 1,500 bytes, at most 20 levels of
    maps and arrays, a value at most 1 MiB - 89 bytes and the document at most 1 MiB,
    counted as Firestore counts storage size."""
    name = sum(len(part.encode()) + 1 for part in ref.path.split("/")) + 16
    size = name + _fields_size(doc, 1, "document") + 32
    if size > MAX_DOCUMENT_BYTES:
        raise UnstorableError(f"document of {size} bytes is over Firestore's {MAX_DOCUMENT_BYTES}")
    return doc


def _read(refs: list[DocumentReference]) -> list[DocumentSnapshot[DocumentReference]]:
    """Snapshots of `refs`, in their order, in one round trip."""
    snapshots = {s.reference.path: s for s in client().get_all(refs, retry=RETRY, timeout=CALL_SECONDS)}
    return [snapshots[ref.path] for ref in refs]


def _with_outcomes(current: list[Any], new: list[Any], at: datetime) -> tuple[list[Any], list[OutcomeEvent]]:
    """`new` with each changed message's outcome events numbered (outcomes.numbered), and
    those events: written in the same commit as the messages (the outbox), so none is lost."""
    numbered, events = [], []
    for c, n in zip(current, new, strict=True):
        if isinstance(n, Message) and n != c:
            n, more = outcomes.numbered(c, n, at)
            events += more
        numbered.append(n)
    return numbered, events


def update_all(docs: list[tuple[DocumentReference, type[Any]]], change: Callable[[list[Any]], list[Any]]) -> list[Any]:
    """Applies `change` to documents read together and writes those it changed in one
    commit, each on the condition that nobody wrote it since it was read (or that it is
    still absent); on a conflict `change` runs again on fresh documents.

    `docs` is [(ref, kind)], kind a schema class of functions.model; `change` takes the
    current objects (None where absent) and returns the new ones, in the same order
    (None or an equal object: not written). Returns the new objects. Raises
    UnstorableError (nothing written) if a changed document breaks Firestore's limits,
    ContentionError if writers kept conflicting."""
    refs = [ref for ref, _ in docs]
    for _ in range(ATTEMPTS):
        snapshots = _read(refs)
        current = [
            kind.from_doc(s.to_dict()) if s.exists else None for s, (_, kind) in zip(snapshots, docs, strict=True)
        ]
        at = now()
        new, events = _with_outcomes(current, change(current), at)
        writes = [
            (ref, s, n) for ref, s, c, n in zip(refs, snapshots, current, new, strict=True) if n is not None and n != c
        ]
        if not writes:
            return new
        batch = client().batch()
        for ref, snapshot, n in writes:
            stage(batch, ref, snapshot, check(ref, stamped(ref, n.to_doc(), at)))
        if _commit(batch, events, at):
            return new
    raise ContentionError(f"{refs[0].path}: still contended after {ATTEMPTS} attempts")


def _commit(batch: firestore.WriteBatch, events: list[OutcomeEvent], at: datetime) -> bool:
    """Commits `batch` with the outbox documents of `events` (outbox.stage) and publishes them
    once committed. False, nothing written, when a precondition failed (a document written,
    created or deleted since it was read): the caller reads again."""
    marks: dict[str, float] = {}
    if events:  # imported here: a function that never changes a message never loads Pub/Sub
        from functions import outbox

        marks = outbox.stage(batch, events, at)
    try:
        batch.commit(retry=RETRY, timeout=CALL_SECONDS)
    except (exceptions.FailedPrecondition, exceptions.Conflict, exceptions.AlreadyExists):
        if marks:
            outbox.unstage(marks)
        return False
    except exceptions.NotFound:  # an outbox document to mark is gone: drop the marks, not the change
        if not marks:
            raise
        outbox.forget_marks()
        return False
    if events:
        outbox.deliver(events)
    return True


def create_messages(new: list[Message]) -> list[Message]:
    """Creates the documents of `new` that are absent, CREATE_PAGE to a commit with their
    outcome events' outbox documents, pages in parallel (CREATE_PARALLELISM); a message
    whose document exists (written by an earlier try of the same request) is left as it
    is. Returns the messages this call created, as stored. UnstorableError if one can't be
    stored (its page and the pages not yet committed are not written), ContentionError if
    a page kept conflicting."""
    pages = [new[i : i + CREATE_PAGE] for i in range(0, len(new), CREATE_PAGE)]
    with ThreadPoolExecutor(CREATE_PARALLELISM, thread_name_prefix="create") as pool:
        return [m for created in pool.map(_create_page, pages) for m in created]


def _create_page(page: list[Message]) -> list[Message]:
    absent = [(message_ref(m.message_id), m) for m in page]
    for _ in range(ATTEMPTS):
        if not absent:
            return []
        at, batch, events, created = now(), client().batch(), [], []
        for ref, message in absent:
            numbered, more = outcomes.numbered(None, message, at)
            batch.create(ref, check(ref, stamped(ref, numbered.to_doc(), at)))
            events += more
            created.append(numbered)
        if _commit(batch, events, at):
            return created
        exist = {s.reference.path for s in _read([ref for ref, _ in absent]) if s.exists}
        absent = [(ref, m) for ref, m in absent if ref.path not in exist]
    raise ContentionError(f"{absent[0][0].path}: still contended after {ATTEMPTS} attempts")


def update(ref: DocumentReference, kind: type[T], change: Callable[[T | None], T]) -> T:
    """Applies `change` to the document at `ref` (None if absent); writes only if it changed."""
    new: T = update_all([(ref, kind)], lambda current: [change(current[0])])[0]
    return new


def message_ref(message_id: str) -> DocumentReference:
    """The message document of an RBM messageId; UnstorableError if it cannot be a document id."""
    return messages().document(document_id(message_id, "messageId"))


def _due_now(current: Message | None, new: Message) -> Message:
    """`new`, if it changed `current`, with its past due times as the time of writing
    (transitions.due_from): its timer runs at once."""
    return new if new == current else due_from(new, now())


def update_message(message_id: str, change: Callable[[Message | None], Message], timer: bool = True) -> Message:
    """The message as `change` makes it from the stored one (None if absent), written
    (due times as `_due_now` says) if it changed; then, unless `timer` is False, a timer
    for each due time the write set (timers.schedule, against the stored message the
    last try saw). A failed timer is logged, never raised: the message stays due."""
    seen: list[Message | None] = [None]

    def changed(current: Message | None) -> Message:
        seen[0] = current
        return _due_now(current, change(current))

    after = update(message_ref(message_id), Message, changed)
    if timer and after != seen[0]:
        from functions import timers  # imported here: a function that never writes a message never loads it

        timers.schedule(seen[0], after)
    return after


def change_message(message_id: str, change: Callable[[Message], Message]) -> Message:
    """`update_message` for a message known to exist (one a caller has just read or
    claimed); LookupError if it does not."""

    def existing(current: Message | None) -> Message:
        if current is None:
            raise LookupError(f"message {message_id!r} does not exist")
        return change(current)

    return update_message(message_id, existing)


def claim_message(message_id: str, claim: Callable[[Message], Message | None]) -> Message | None:
    """The message as `claim` makes it, written if it changed; None (nothing written) when
    the message is absent or `claim` answers None (taken, or no longer due)."""

    def claimed(current: Message | None) -> Message | None:
        new = None if current is None else claim(current)
        return None if new is None else _due_now(current, new)

    result: Message | None = update_all([(message_ref(message_id), Message)], lambda current: [claimed(current[0])])[0]
    return result


def found(snapshot: DocumentSnapshot[DocumentReference]) -> dict[str, Any]:
    """The fields of a document a query found (so one that exists); LookupError if it is gone."""
    data = snapshot.to_dict()
    if data is None:
        raise LookupError(f"{snapshot.reference.path} does not exist")
    return data


def query(q: Query) -> list[DocumentSnapshot[DocumentReference]]:
    """The documents query `q` finds, read within CALL_SECONDS (DeadlineExceeded or
    RetryError after them)."""
    return list(q.get(retry=RETRY, timeout=CALL_SECONDS))


def get_messages(message_ids: list[str]) -> list[Message]:
    """The stored messages among `message_ids`, in their order, in one round trip; those
    absent are left out."""
    snapshots = _read([message_ref(i) for i in message_ids]) if message_ids else []
    return [Message.from_doc(found(s)) for s in snapshots if s.exists]


def get_message(message_id: str) -> Message | None:
    snapshot = message_ref(message_id).get(retry=RETRY, timeout=CALL_SECONDS)
    data = snapshot.to_dict()
    return None if data is None else Message.from_doc(data)
