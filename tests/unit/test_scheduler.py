"""The local stand-in for Cloud Scheduler (local/scheduler.py): on the grid, never two
executions of one job at once, a late start delayed and not doubled."""

import itertools
import threading
import time

from local.scheduler import Scheduler, next_tick
from tests.support import wait_for

PERIOD = 0.2


def test_the_next_tick_is_on_the_grid():
    assert next_tick(120.0, 60.0) == 180.0
    assert next_tick(121.5, 60.0) == 180.0
    assert next_tick(179.9, 60.0) == 180.0


def test_a_job_never_overlaps_itself_and_a_late_start_is_delayed_not_doubled():
    running, overlaps = set(), []
    lock = threading.Lock()

    def call(url: str) -> int:
        with lock:
            if url in running:
                overlaps.append(url)
            running.add(url)
        time.sleep(PERIOD * 2.5 if url == "slow" and calls["slow"] == 1 else 0.01)  # the second run hangs
        with lock:
            running.discard(url)
            calls[url] += 1
        return 200

    calls = {"slow": 0, "quick": 0}
    scheduler = Scheduler(["slow", "quick"], PERIOD, call=call).start()
    try:
        wait_for(lambda: calls["slow"] >= 5 and calls["quick"] >= 5, timeout=10)
    finally:
        scheduler.stop()
    assert not overlaps
    slow = [e for e in list(scheduler.executions) if e.url == "slow"]
    for before, after in itertools.pairwise(slow):
        assert after.began >= before.ended, "two executions of one job at once"
        assert after.scheduled > before.scheduled, "one tick run twice"
    hung = slow[1]
    after_hang = [e for e in slow if e.scheduled < hung.ended and e is not hung and e.scheduled > hung.scheduled]
    assert len(after_hang) == 1, "the ticks the hung run outlived run once, late"
    on_grid = [e for e in slow[1:] if e.scheduled >= hung.ended]
    assert all(abs(e.scheduled / PERIOD - round(e.scheduled / PERIOD)) < 1e-6 for e in on_grid)
