"""Helpers every test tier shares."""

import json
import time
from pathlib import Path

import jsonschema

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
