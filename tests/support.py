"""Helpers every test tier shares."""

import base64
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import requests

from functions import store
from functions.model import Fallback, Message, State

# Every outcome event the tests see is checked against the published schema.
OUTCOME_SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "infra" / "outcome_event.schema.json").read_text())
jsonschema.Draft202012Validator.check_schema(OUTCOME_SCHEMA)
_OUTCOME_VALIDATOR = jsonschema.Draft202012Validator(OUTCOME_SCHEMA)


def valid_outcome(event: dict) -> dict:
    """`event` if it matches infra/outcome_event.schema.json; else the test fails with the mismatch."""
    _OUTCOME_VALIDATOR.validate(event)
    return event


def wait_for(predicate, timeout=20.0, interval=0.1):
    """Polls until `predicate()` is truthy; returns its value or fails the test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def push_direct(url: str, data: bytes, attributes: dict[str, str], timeout: float = 30) -> requests.Response:
    """POSTs `data` to the CloudEvent function at `url` in Pub/Sub's push envelope, as
    its push subscription would; answers the function's response."""
    envelope = {
        "message": {
            "data": base64.b64encode(data).decode(),
            "attributes": attributes,
            "messageId": uuid.uuid4().hex,
            "publishTime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        },
        "subscription": "projects/test/subscriptions/direct",
    }
    return requests.post(url, json=envelope, timeout=timeout)


def wait_until_steady(read, seconds=2.0, timeout=30.0):
    """Polls `read()` until its value has not changed for `seconds`; returns that value or fails the test."""
    deadline = time.monotonic() + timeout
    value, since = read(), time.monotonic()
    while time.monotonic() < deadline:
        if time.monotonic() - since >= seconds:
            return value
        time.sleep(0.1)
        if (latest := read()) != value:
            value, since = latest, time.monotonic()
    raise AssertionError(f"still changing after {timeout} s")


AGENT = "agent@rbm.goog"
# Sweeps on local time: leases of seconds, quick retries, one pass per call, and a
# revoke's SMS due at once (the tests of the grace window set it themselves).
SWEEP_ENV = {
    "RBM_AGENT_ID": AGENT,
    "LEASE_SECONDS": "2",
    "RETRY_BACKOFF_SECONDS": "0.2",
    "RBM_RETRY_SECONDS": "0.3",
    "REVOKE_GRACE_SECONDS": "0",
}


def expire(client, as_of):
    """Deletes what Firestore's TTL policy would have deleted by `as_of`: every
    document, in every collection and subcollection, whose `expire_at` is past.
    Like the policy, it leaves a deleted document's subcollections in place.
    Returns the paths deleted."""
    deleted = []

    def sweep(collection):
        for ref in collection.list_documents():
            snapshot = ref.get()
            expire_at = snapshot.get("expire_at") if snapshot.exists else None
            if expire_at is not None and expire_at <= as_of:
                ref.delete()
                deleted.append(ref.path)
            for sub in ref.collections():
                sweep(sub)

    for collection in client.collections():
        sweep(collection)
    return deleted


def sms_due(message_id: str, phone: str, text: str, fallback: Fallback = Fallback.DUE, **fields: Any) -> Message:
    """A revoked, time-sensitive message of AGENT whose SMS fell due a second ago — or,
    with `fallback` SENDING, whose send's lease ran out then; other fallbacks get no due
    time. `fields` set any other field. Not stored: `store_message` does that."""
    past = store.now() - timedelta(seconds=1)
    return Message(
        message_id,
        phone,
        AGENT,
        state=State.REVOKED,
        fallback=fallback,
        fallback_text=text,
        time_sensitive=True,
        revoke_at=past,
        **{"fallback_at": past if fallback in (Fallback.DUE, Fallback.SENDING) else None} | fields,
    )


def store_message(m: Message) -> str:
    """Writes `m` as it is (no precondition, no due-time rule) and returns its id."""
    store.messages().document(m.message_id).set(m.to_doc())
    return m.message_id
