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
