"""Cloud Scheduler's part, on loopback: each job POSTs its URL on the schedule's grid.

As Cloud Scheduler does (reference, `Job.schedule`): "execution n + 1 of a job will
not begin until execution n has finished … A scheduled start time will be delayed
if the previous execution has not ended". A job fires at the ticks of its cron
grid (multiples of `period` seconds since the epoch, as `*/N * * * *` fires in
UTC); a run that outlives its tick delays the next execution to the moment it
ends, once, however many ticks it outlived (late, never doubled); two executions
of one job never overlap. Different jobs run independently.
"""

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import requests

# Loopback only: never route through a proxy from the environment.
_http = requests.Session()
_http.trust_env = False


@dataclass(frozen=True)
class Execution:
    """One execution of a job: its URL, when it was scheduled, began and ended (time.time()),
    and the HTTP status (None: no answer)."""

    url: str
    scheduled: float
    began: float
    ended: float
    status: int | None


def next_tick(after: float, period: float) -> float:
    """The first tick of the grid of `period` seconds strictly after `after` (seconds since the epoch)."""
    return (math.floor(after / period) + 1) * period


class Scheduler:
    """Calls each of `urls` on the grid of `period` seconds until stop(), one execution
    of a URL at a time; `executions` lists them. `at_once`: each job's first execution
    is at start-up rather than at the next tick (then on the grid). `call`
    (default: POST `{}` with `timeout`) answers the status of one execution."""

    def __init__(
        self,
        urls: list[str],
        period: float,
        timeout: float = 180.0,
        at_once: bool = True,
        call: Callable[[str], int | None] | None = None,
    ):
        if period <= 0:
            raise ValueError("period must be positive")
        self.urls, self.period, self.timeout, self.at_once = urls, period, timeout, at_once
        self.call = call or self._post
        self.executions: list[Execution] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._job, args=(url,), name="scheduler", daemon=True) for url in urls]

    def _post(self, url: str) -> int | None:
        try:
            return _http.post(url, json={}, timeout=self.timeout).status_code
        except requests.RequestException:
            return None  # a process restarted by a fault test, or stopping: the next tick calls again

    def start(self) -> "Scheduler":
        for thread in self._threads:
            thread.start()
        return self

    def _job(self, url: str) -> None:
        scheduled = time.time() if self.at_once else next_tick(time.time(), self.period)
        while not self._stop.wait(max(0.0, scheduled - time.time())):
            began = time.time()
            status = self.call(url)
            self.executions.append(Execution(url, scheduled, began, time.time(), status))
            # The next tick of the grid; if this execution outlived it, at once (delayed, not doubled).
            scheduled = max(next_tick(scheduled, self.period), math.floor(time.time() / self.period) * self.period)

    def stop(self) -> None:
        """No execution begins after this; one in flight ends with its call."""
        self._stop.set()
