"""Firestore access: one client per instance, and read-change-write with a precondition.

Every change reads a document once and commits once, on the condition that
nobody wrote it in between (its update time, or its absence); on a conflict
the change is computed again from the fresh document. Concurrent writers
therefore never interleave, and each change costs one read and one commit.
"""

import functools
from datetime import datetime, timezone
from typing import Callable, TypeVar

from google.api_core import exceptions
from google.cloud import firestore

from functions import config
from functions.model import Conversation, Message, conversation_id, retention

T = TypeVar("T", Message, Conversation)
ATTEMPTS = 20


class ContentionError(RuntimeError):
    """Too many concurrent writers on one document; the caller should retry later."""


@functools.cache
def client() -> firestore.Client:
    return firestore.Client(project=config.project() or None, database=config.firestore_database())


def messages() -> firestore.CollectionReference:
    return client().collection(config.messages_collection())


def conversations() -> firestore.CollectionReference:
    return client().collection(config.conversations_collection())


def now() -> datetime:
    return datetime.now(timezone.utc)


def stamped(doc: dict, at: datetime) -> dict:
    """A document ready to write: its change time and its TTL field set."""
    return doc | {"updated_at": at, "expire_at": retention(at)}


def stage(batch: firestore.WriteBatch, ref, snapshot, doc: dict) -> None:
    """Adds a write of `doc` to `batch` that fails if `ref` changed since `snapshot`."""
    if snapshot.exists:
        batch.update(ref, doc, option=client().write_option(last_update_time=snapshot.update_time))
    else:
        batch.create(ref, doc)


def update(ref, kind: type[T], change: Callable[[T | None], T | None]) -> T | None:
    """Applies `change` to the document at `ref` (None if absent); writes only if it changed."""
    for _ in range(ATTEMPTS):
        snapshot = ref.get()
        current = kind.from_doc(snapshot.to_dict()) if snapshot.exists else None
        new = change(current)
        if new is None or new == current:
            return new
        batch = client().batch()
        stage(batch, ref, snapshot, stamped(new.to_doc(), now()))
        try:
            batch.commit()
            return new
        except (exceptions.FailedPrecondition, exceptions.Conflict, exceptions.AlreadyExists):
            continue
    raise ContentionError(f"{ref.path}: still contended after {ATTEMPTS} attempts")


def update_message(message_id: str, change: Callable[[Message | None], Message | None]) -> Message | None:
    return update(messages().document(message_id), Message, change)


def get_message(message_id: str) -> Message | None:
    snapshot = messages().document(message_id).get()
    return Message.from_doc(snapshot.to_dict()) if snapshot.exists else None


def conversation_ref(agent_id: str, phone: str):
    return conversations().document(conversation_id(agent_id, phone))


def opted_out(agent_id: str, phone: str) -> bool:
    snapshot = conversation_ref(agent_id, phone).get(["opted_out"])
    return bool(snapshot.exists and snapshot.get("opted_out"))
