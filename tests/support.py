"""Helpers every test tier shares."""

import time


def wait_for(predicate, timeout=20.0, interval=0.1):
    """Polls until `predicate()` is truthy; returns its value or fails the test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


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
