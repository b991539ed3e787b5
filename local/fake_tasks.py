"""A fake of Cloud Tasks (API v2, REST), for tests and demos: Google ships no
emulator, and no maintained stand-in dispatches HTTP targets with OIDC tokens,
name de-duplication, rate limits and retries as the service does.

It answers the calls the official client makes with `transport="rest"` (queues
create / get / list / delete / pause / resume / purge; tasks create / get /
list / delete) in Google's JSON error format, and dispatches each task's HTTP
request at its `scheduleTime`, within the queue's rate and concurrency, with
the documented `X-CloudTasks-*` headers, retrying failures with the queue's
backoff. Facts come from the Cloud Tasks v2 reference (the field docs of
Queue, RateLimits, RetryConfig, Task, HttpRequest, OidcToken and
CreateTaskRequest, cloud.google.com/tasks/docs/reference/rest/v2), "Create
HTTP Target tasks" (cloud.google.com/tasks/docs/creating-http-target-tasks) and
the quotas page (cloud.google.com/tasks/docs/quotas); what each X-CloudTasks-*
header counts, from Firebase's TaskContext reference, which reads them
(firebase.google.com/docs/reference/functions/firebase-functions.tasks.taskcontext).

Where the reference gives behaviour without figures, the fake chooses, and
says so here:
- Ramp-up ("dispatches ramp up slowly when the queue is newly created or
  idle"): the token bucket holds at most one token while nothing is waiting,
  and fills up to `maxBurstSize` only while due tasks wait. So a backlog after
  a quiet spell starts at the queue's rate, not with a burst.
- `maxBurstSize` (output only, "generally at least equal to
  max_dispatches_per_second"): the rate rounded up, at least 1.
- System throttling on 429 / 503 ("Cloud Tasks will use a higher backoff
  rate. The retry specified in the Retry-After HTTP response header is
  considered"): the task's next attempt waits the longer of its backoff and
  Retry-After, and the queue's effective rate halves (down to 1/64 of the
  configured rate), then recovers by a tenth of it per second.
- The OIDC token is an unsigned JWT (alg "none") with Google's claims (iss,
  aud, azp, sub, email, email_verified, iat, exp): what reaches a target
  behind Cloud Run's own check, never a token anything should accept.
- Queue names are free again as soon as a queue is deleted (the service
  waits 3 days), and the App Engine target and RunTask are not spoken.

    with FakeTasks() as tasks:
        client = tasks_v2.CloudTasksClient(
            transport="rest",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": tasks.url},
        )
        ...
        assert max_in_window(tasks.dispatch_times("my-queue"), 1.0) <= 11

    python -m local.fake_tasks --port 8123
"""

import argparse
import base64
import email.utils
import heapq
import http.client
import itertools
import json
import math
import queue as jobs_queue
import random
import re
import select
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from local.fakehttp import FakeServer, Faults, Request, google_error, serve_until_interrupted

# Limits and defaults of the reference (RateLimits, RetryConfig, Task, CreateTaskRequest).
MAX_DISPATCHES_PER_SECOND = 500.0
MAX_CONCURRENT_DISPATCHES = 5000
DEFAULT_RATE_LIMITS = {"maxDispatchesPerSecond": 500.0, "maxConcurrentDispatches": 1000}
DEFAULT_RETRY = {
    "maxAttempts": 100,
    "minBackoff": 0.1,
    "maxBackoff": 3600.0,
    "maxDoublings": 16,
    "maxRetryDuration": 0.0,
}
MAX_SCHEDULE_AHEAD = 30 * 86400.0  # a task's scheduleTime at most 30 days ahead (quotas: "Maximum schedule time")
DISPATCH_DEADLINE = (15.0, 1800.0, 600.0)  # HTTP tasks: minimum, maximum, default
NAME_REUSE_SECONDS = 3600.0  # a task name is refused for 1 hour after its task was deleted or executed
MAX_TASK_BYTES = 1024 * 1024  # maximum task size (quotas)
MAX_URL = 2083
MAX_HEADER_BYTES = 80 * 1024
# HttpRequest.headers: computed or replaced by Cloud Tasks ("Host", "Content-Length", "User-Agent"), or Google's.
IGNORED_HEADERS = ("host", "content-length", "user-agent", "x-google-", "x-appengine-", "x-cloudtasks-")
# The fake's congestion model (see the module docstring).
THROTTLE_FLOOR = 1 / 64
THROTTLE_RECOVERY_PER_SECOND = 0.1

HTTP_METHODS = ["HTTP_METHOD_UNSPECIFIED", "POST", "GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"]
BODY_METHODS = {"POST", "PUT", "PATCH"}
_ID = r"[A-Za-z0-9-]{1,100}"
_QUEUE = re.compile(rf"^projects/([a-z0-9:.-]+)/locations/({_ID})/queues/({_ID})$")
_TASK_ID = re.compile(r"^[A-Za-z0-9_-]{1,500}$")
_DURATION = re.compile(r"^(\d+)(\.\d{1,9})?s$")
_TASK_FIELDS = {"name", "httpRequest", "scheduleTime", "dispatchDeadline"}
_HTTP_FIELDS = {"url", "httpMethod", "headers", "body", "oidcToken"}
_ROUTES = [
    ("POST", re.compile(r"^/v2/(projects/[^/]+/locations/[^/]+)/queues$"), "create_queue"),
    ("GET", re.compile(r"^/v2/(projects/[^/]+/locations/[^/]+)/queues$"), "list_queues"),
    ("GET", re.compile(r"^/v2/(projects/[^/]+/locations/[^/]+/queues/[^/:]+)$"), "get_queue"),
    ("DELETE", re.compile(r"^/v2/(projects/[^/]+/locations/[^/]+/queues/[^/:]+)$"), "delete_queue"),
    ("POST", re.compile(r"^/v2/(projects/[^/]+/locations/[^/]+/queues/[^/:]+):(pause|resume|purge)$"), "queue_state"),
    ("POST", re.compile(r"^/v2/(projects/[^/]+/locations/[^/]+/queues/[^/:]+)/tasks$"), "create_task"),
    ("GET", re.compile(r"^/v2/(projects/[^/]+/locations/[^/]+/queues/[^/:]+)/tasks$"), "list_tasks"),
    ("GET", re.compile(r"^/v2/(projects/[^/]+/locations/[^/]+/queues/[^/:]+/tasks/[^/:]+)$"), "get_task"),
    ("DELETE", re.compile(r"^/v2/(projects/[^/]+/locations/[^/]+/queues/[^/:]+/tasks/[^/:]+)$"), "delete_task"),
    ("GET", re.compile(r"^/fake/stats$"), "stats"),  # the fake's own: its records, for a benchmark of a fake process
]


class Invalid(ValueError):
    """A request the service answers 400 INVALID_ARGUMENT, with this message."""


# Pure rules, no I/O (tests/unit/test_fake_tasks.py)


def parse_duration(text: Any, field_name: str) -> float:
    """Seconds of a protobuf JSON Duration such as "0.100s"; raises Invalid."""
    match = _DURATION.match(str(text))
    if not match:
        raise Invalid(f"Invalid value at '{field_name}' ({text!r}): invalid duration")
    return int(match[1]) + float(match[2] or 0)


def format_duration(seconds: float) -> str:
    """A protobuf JSON Duration: whole seconds as "10s", else up to 9 decimals."""
    return f"{int(seconds)}s" if seconds == int(seconds) else f"{seconds:.9f}".rstrip("0") + "s"


def parse_timestamp(text: Any, field_name: str) -> float:
    """Epoch seconds of an RFC 3339 timestamp in UTC ("...Z"); raises Invalid."""
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise Invalid(f"Invalid value at '{field_name}' ({text!r}): invalid timestamp") from None


def format_timestamp(epoch: float) -> str:
    """RFC 3339 in UTC with microseconds, as the service writes timestamps."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def retry_delay(retry: dict[str, float], retries: int) -> float:
    """Seconds before retry number `retries` (1 for the first retry).

    RetryConfig.max_doublings: the interval "starts at min_backoff, then
    doubles max_doublings times, then increases linearly, and finally retries
    at intervals of max_backoff", e.g. min 10 s, max 300 s, 3 doublings: 10,
    20, 40, 80, 160, 240, 300, 300 s.
    """
    base, doublings = retry["minBackoff"], int(retry["maxDoublings"])
    doubled = min(retries - 1, doublings)
    delay = base * 2**doubled * (1 + max(0, retries - 1 - doublings))
    return min(delay, retry["maxBackoff"])


def gives_up(retry: dict[str, float], attempts: int, since_first: float) -> bool:
    """Whether a task that failed `attempts` times, the first `since_first`
    seconds ago, is deleted: RetryConfig.max_attempts says Cloud Tasks stops
    "only when max_attempts and max_retry_duration are both satisfied"
    (-1 attempts and 0 duration mean unlimited)."""
    attempts_done = retry["maxAttempts"] != -1 and attempts >= retry["maxAttempts"]
    duration_done = retry["maxRetryDuration"] == 0 or since_first >= retry["maxRetryDuration"]
    return attempts_done and duration_done


def retry_after_seconds(value: str | None, now: float) -> float:
    """Seconds a Retry-After header asks for (delay seconds or an HTTP date), 0 if none or unreadable."""
    if not value:
        return 0.0
    if value.strip().isdigit():
        return float(value.strip())
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return 0.0


def halved_share(share: float) -> float:
    """The share of the configured rate a queue keeps after a 429 or 503 (the fake's model)."""
    return max(THROTTLE_FLOOR, share / 2)


def recovered_share(share: float, since: float) -> float:
    """The share of the configured rate in force `since` seconds after a throttle left `share`."""
    return min(1.0, share + since * THROTTLE_RECOVERY_PER_SECOND)


def max_in_window(times: Sequence[float], window: float = 1.0) -> int:
    """The most of `times` (seconds) that fall in any one window of that length."""
    ordered, best, start = sorted(times), 0, 0
    for end, t in enumerate(ordered):
        while t - ordered[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def oidc_token(email_address: str, audience: str, now: float) -> str:
    """An unsigned JWT (alg "none") with the claims of a Google-signed OIDC
    token for a service account: iss, aud, azp, sub, email, email_verified,
    iat and exp (an hour later)."""
    subject = str(int.from_bytes(email_address.encode()[:8].ljust(8, b"\0"), "big"))

    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj, separators=(",", ":")).encode()).rstrip(b"=").decode()

    claims = {
        "iss": "https://accounts.google.com",
        "aud": audience,
        "azp": subject,
        "sub": subject,
        "email": email_address,
        "email_verified": True,
        "iat": int(now),
        "exp": int(now) + 3600,
    }
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def queue_settings(body: Any) -> tuple[dict[str, float], dict[str, float]]:
    """(rate limits, retry config) of a Queue resource, defaults filled in;
    raises Invalid as Queue, RateLimits and RetryConfig forbid."""
    if not isinstance(body, dict):
        raise Invalid("Invalid JSON payload received.")
    given_rates, given_retry = body.get("rateLimits") or {}, body.get("retryConfig") or {}
    try:
        rates = {**DEFAULT_RATE_LIMITS, **{k: float(v) for k, v in given_rates.items() if k in DEFAULT_RATE_LIMITS}}
        counts = {k: int(v) for k, v in given_retry.items() if k in ("maxAttempts", "maxDoublings")}
    except (TypeError, ValueError):
        raise Invalid("Invalid JSON payload received: queue.rate_limits or queue.retry_config.") from None
    if not 0 < rates["maxDispatchesPerSecond"] <= MAX_DISPATCHES_PER_SECOND:
        raise Invalid("queue.rate_limits.max_dispatches_per_second must be in (0, 500]")
    if not 0 < rates["maxConcurrentDispatches"] <= MAX_CONCURRENT_DISPATCHES:
        raise Invalid("queue.rate_limits.max_concurrent_dispatches must be in [1, 5000]")
    retry = {**DEFAULT_RETRY, **counts}
    for key, value in given_retry.items():
        if key in ("minBackoff", "maxBackoff", "maxRetryDuration"):  # "truncated to the nearest second"
            retry[key] = float(int(parse_duration(value, f"queue.retry_config.{key}")))
    if retry["maxAttempts"] < -1:
        raise Invalid("queue.retry_config.max_attempts must be >= -1")
    if retry["maxDoublings"] < 0 or retry["minBackoff"] > retry["maxBackoff"]:
        raise Invalid("queue.retry_config: min_backoff must not exceed max_backoff; max_doublings must be >= 0")
    return rates, retry


@dataclass
class TokenBucket:
    """The queue's token bucket (RateLimits.max_burst_size): `rate` tokens a
    second up to `burst` while tasks wait, up to one while the queue is idle
    (the fake's ramp-up). Times are passed in, so it is tested without a clock."""

    rate: float
    burst: int
    tokens: float = 0.0
    last: float = 0.0
    waiting: bool = False  # whether tasks have been waiting since the last call

    def take(self, now: float, factor: float = 1.0) -> bool:
        """Tasks wait: refill at `factor` × rate since the last call (up to one
        token if the queue was idle until now) and spend one token if there is one."""
        cap = float(self.burst) if self.waiting else 1.0
        self.tokens = min(cap, self.tokens + (now - self.last) * self.rate * factor)
        self.last, self.waiting = now, True
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def idle(self, now: float) -> None:
        """Nothing is waiting: keep at most one token for the next task."""
        self.tokens = min(1.0, self.tokens + (now - self.last) * self.rate)
        self.last, self.waiting = now, False

    def wait(self, factor: float = 1.0) -> float:
        """Seconds until the next token."""
        return max(0.0, (1.0 - self.tokens) / (self.rate * factor))


def validated_task(queue: str, body: Any, now: float) -> dict:
    """The task a CreateTaskRequest body asks for, defaults filled in; raises Invalid."""
    if not isinstance(body, dict) or not isinstance(body.get("task"), dict):
        raise Invalid("Invalid JSON payload received. task is required.")
    task = body["task"]
    request = task.get("httpRequest")
    unknown = sorted(set(task) - _TASK_FIELDS) + sorted(
        set(request if isinstance(request, dict) else ()) - _HTTP_FIELDS
    )
    if unknown:
        raise Invalid(f'Invalid JSON payload received. Unknown name "{unknown[0]}": Cannot find field.')
    if len(json.dumps(task)) > MAX_TASK_BYTES:
        raise Invalid("Task size exceeds the maximum of 1 MB.")
    name = task.get("name") or f"{queue}/tasks/{random.randrange(10**18, 10**19)}"
    if not name.startswith(f"{queue}/tasks/") or not _TASK_ID.match(name.rsplit("/", 1)[1]):
        raise Invalid(f"Task name {name!r} must be {queue}/tasks/TASK_ID (letters, digits, - and _, up to 500).")
    eta = parse_timestamp(task["scheduleTime"], "task.schedule_time") if task.get("scheduleTime") else now
    if eta > now + MAX_SCHEDULE_AHEAD:
        raise Invalid("Task.schedule_time is too far in the future: at most 30 days ahead.")
    low, high, default = DISPATCH_DEADLINE
    deadline = (
        parse_duration(task["dispatchDeadline"], "task.dispatch_deadline") if "dispatchDeadline" in task else default
    )
    if not low <= deadline <= high:
        raise Invalid("Task.dispatch_deadline must be between 15 seconds and 30 minutes.")
    # "If schedule_time is not set or is in the past then Cloud Tasks will set it to the current time."
    return {
        **http_target(task.get("httpRequest")),
        "name": name,
        "eta": max(eta, now),
        "created": now,
        "deadline": deadline,
    }


def http_target(request: Any) -> dict:
    """url, method, headers (less those Cloud Tasks ignores or replaces), body
    and oidc of a task's HttpRequest; raises Invalid as HttpRequest forbids."""
    if not isinstance(request, dict):
        raise Invalid("Task.http_request is required: the fake speaks HTTP targets only.")
    url = str(request.get("url", ""))
    if not url.startswith(("http://", "https://")) or len(url) > MAX_URL:
        raise Invalid("HttpRequest.url must begin with http:// or https:// and be at most 2083 characters.")
    method = request.get("httpMethod", 0)
    method = HTTP_METHODS[method] if isinstance(method, int) and 0 <= method < len(HTTP_METHODS) else str(method)
    method = "POST" if method == "HTTP_METHOD_UNSPECIFIED" else method
    if method not in HTTP_METHODS:
        raise Invalid(f"Invalid value at 'task.http_request.http_method' ({method!r})")
    try:
        body = base64.b64decode(request.get("body", ""), validate=True)
    except ValueError:
        raise Invalid("Invalid value at 'task.http_request.body': not base64") from None
    if body and method not in BODY_METHODS:
        raise Invalid("HttpRequest.body is allowed only if the HTTP method is POST, PUT or PATCH.")
    given = {str(k): str(v) for k, v in (request.get("headers") or {}).items()}
    if sum(len(k) + len(v) for k, v in given.items()) >= MAX_HEADER_BYTES:
        raise Invalid("HttpRequest.headers must be less than 80KB.")
    headers = {k: v for k, v in given.items() if not k.lower().startswith(IGNORED_HEADERS)}
    oidc = request.get("oidcToken")
    if oidc is not None and not (isinstance(oidc, dict) and oidc.get("serviceAccountEmail")):
        raise Invalid("OidcToken.service_account_email is required.")
    return {"url": url, "method": method, "headers": headers, "body": body, "oidc": oidc}


# The service


@dataclass
class _Queue:
    name: str
    rates: dict[str, float]
    retry: dict[str, float]
    bucket: TokenBucket
    state: str = "RUNNING"
    purged: float | None = None
    tasks: dict[str, dict] = field(default_factory=dict)
    due: list[tuple[float, int, str]] = field(default_factory=list)  # (eta, seq, task name), a heap with stale entries
    running: int = 0
    throttle: float = 1.0  # share of the configured rate in force, after 429 / 503
    throttled_at: float = 0.0

    def factor(self, now: float) -> float:
        return recovered_share(self.throttle, now - self.throttled_at)

    def resource(self) -> dict:
        retry = {
            k: (format_duration(v) if k.endswith(("Backoff", "Duration")) else int(v)) for k, v in self.retry.items()
        }
        out = {
            "name": self.name,
            "rateLimits": {
                "maxDispatchesPerSecond": self.rates["maxDispatchesPerSecond"],
                "maxBurstSize": self.bucket.burst,
                "maxConcurrentDispatches": int(self.rates["maxConcurrentDispatches"]),
            },
            "retryConfig": retry,
            "state": self.state,
        }
        if self.purged is not None:
            out["purgeTime"] = format_timestamp(self.purged)
        return out


class FakeTasks(FakeServer):
    """Cloud Tasks v2 on 127.0.0.1, dispatching from a thread of its own.

    Records: `dispatches(queue)` (one dict per attempt: task, time, status or
    None when no answer came, retry count), `dispatch_times(queue)`,
    `operations()` (API calls plus delivery attempts, as Cloud Tasks bills
    them) and `max_running(queue)` (the most dispatches ever in flight at once);
    `GET /fake/stats` answers them all (stats()) from a fake run as a process.
    The Authorization header of API calls is ignored.
    """

    def __init__(self, port: int = 0):
        super().__init__(port)
        self._seq = itertools.count()
        self._stopping = False
        self._dispatcher: threading.Thread | None = None
        self._jobs: jobs_queue.SimpleQueue[tuple | None] = jobs_queue.SimpleQueue()
        self._workers = self._idle = 0  # delivery threads, and those waiting for a job
        self.reset()

    def reset(self) -> None:
        """Forget every queue, task, name and record."""
        with self._lock:
            self._queues: dict[str, _Queue] = {}
            self._tombstones: dict[str, float] = {}  # task name → until when it can't be reused
            self._dispatches: dict[str, list[dict]] = {}
            self._max_running: dict[str, int] = {}
            self._operations = 0
            self._faults = Faults()

    def script(self, call: str, statuses: list[int]) -> None:
        """The next API calls of a kind (e.g. "create_task", "get_queue") answer
        these statuses in turn, as Google's JSON errors; a 2xx entry means
        "behave normally". For callers' handling of 429, 500, 503 and the like."""
        with self._lock:
            self._faults.script(call, statuses)

    # Records

    def dispatches(self, queue: str) -> list[dict]:
        """Every delivery attempt of the queue (its short id or full name), oldest first."""
        with self._lock:
            return [dict(d) for d in self._dispatches.get(queue.rsplit("/", 1)[-1], [])]

    def dispatch_times(self, queue: str) -> list[float]:
        return [d["time"] for d in self.dispatches(queue)]

    def max_running(self, queue: str) -> int:
        with self._lock:
            return self._max_running.get(queue.rsplit("/", 1)[-1], 0)

    def operations(self) -> int:
        with self._lock:
            return self._operations

    def stats(self) -> dict:
        """Every record, as GET /fake/stats answers it: operations, and per
        queue (short id) its deliveries, most in flight and tasks pending."""
        with self._lock:
            queues = {name.rsplit("/", 1)[1]: len(q.tasks) for name, q in self._queues.items()}
            return {
                "operations": self._operations,
                "queues": {
                    short: {
                        "dispatches": [dict(d) for d in self._dispatches.get(short, [])],
                        "max_running": self._max_running.get(short, 0),
                        "pending": queues.get(short, 0),
                    }
                    for short in sorted(set(queues) | set(self._dispatches))
                },
            }

    def pending(self, queue: str) -> int:
        """Tasks the queue still holds (waiting, being dispatched or awaiting a retry)."""
        with self._lock:
            return sum(
                len(q.tasks) for q in self._queues.values() if q.name.rsplit("/", 1)[-1] == queue.rsplit("/", 1)[-1]
            )

    # Lifecycle

    def start(self, port: int | None = None) -> "FakeTasks":
        super().start(port)
        if self._dispatcher is None:
            self._stopping = False
            self._dispatcher = threading.Thread(target=self._dispatch_loop, daemon=True, name="FakeTasks-dispatch")
            self._dispatcher.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._dispatcher is not None:
            self._dispatcher.join()
            self._dispatcher = None
        with self._lock:
            for _ in range(self._workers):
                self._jobs.put(None)
            self._workers = self._idle = 0
        super().stop()

    # API

    def handle(self, request: Request) -> tuple:
        route = next(
            ((r, m) for verb, pattern, r in _ROUTES if verb == request.method and (m := pattern.match(request.path))),
            None,
        )
        if route is None:
            return google_error(404, f"The requested URL {request.path} was not found on this server.")
        action, match = route
        if action == "stats":
            return 200, self.stats()
        try:
            body = request.json() if request.body else {}
        except ValueError:
            return google_error(400, "Invalid JSON payload received.")
        with self._lock:
            self._operations += 1
            if (status := self._faults.next_error(action, action)) is not None:
                return google_error(status)
            try:
                answer: tuple = getattr(self, "_" + action)(*match.groups(), body, request.query)
            except Invalid as exc:
                answer = google_error(400, str(exc))
            self._lock.notify_all()
        return answer

    def _create_queue(self, parent: str, body: Any, query: dict) -> tuple:
        name = body.get("name", "") if isinstance(body, dict) else ""
        match = _QUEUE.match(name)
        if not match or not name.startswith(parent + "/queues/"):
            raise Invalid(f"Queue name {name!r} must be {parent}/queues/QUEUE_ID (letters, digits and hyphens).")
        if name in self._queues:
            return google_error(409, "Queue already exists")
        rates, retry = queue_settings(body)
        burst = max(1, math.ceil(rates["maxDispatchesPerSecond"]))
        self._queues[name] = _Queue(
            name, rates, retry, TokenBucket(rates["maxDispatchesPerSecond"], burst, 0.0, time.time())
        )
        return 200, self._queues[name].resource()

    def _list_queues(self, parent: str, body: Any, query: dict) -> tuple:
        queues = [q.resource() for name, q in sorted(self._queues.items()) if name.startswith(parent + "/")]
        return 200, {"queues": queues} if queues else {}

    def _queue(self, name: str) -> _Queue:
        if name not in self._queues:
            raise _NotFound(f"Queue {name} does not exist.")
        return self._queues[name]

    def _get_queue(self, name: str, body: Any, query: dict) -> tuple:
        return self._guard(lambda: (200, self._queue(name).resource()))

    def _delete_queue(self, name: str, body: Any, query: dict) -> tuple:
        def delete() -> tuple:
            queue = self._queue(name)
            self._bury(queue, list(queue.tasks))
            del self._queues[name]
            return 200, {}

        return self._guard(delete)

    def _queue_state(self, name: str, verb: str, body: Any, query: dict) -> tuple:
        def change() -> tuple:
            queue = self._queue(name)
            if verb == "purge":  # "All tasks created before this method is called are permanently deleted."
                queue.purged = time.time()
                self._bury(queue, list(queue.tasks))
            else:
                queue.state = "PAUSED" if verb == "pause" else "RUNNING"
                queue.bucket.idle(time.time())  # dispatches ramp up again when "the queue being unpaused"
            return 200, queue.resource()

        return self._guard(change)

    def _create_task(self, queue_name: str, body: Any, query: dict) -> tuple:
        def create() -> tuple:
            queue = self._queue(queue_name)
            now = time.time()
            task = validated_task(queue_name, body, now)
            name = task["name"]
            if name in queue.tasks:
                return google_error(409, "Requested entity already exists")
            if self._tombstones.get(name, 0.0) > now:
                return google_error(
                    409, "The task cannot be created because a task with this name existed too recently."
                )
            task.update(dispatch_count=0, response_count=0, first_attempt=None, last_status=None, running=False)
            queue.tasks[name] = task
            heapq.heappush(queue.due, (task["eta"], next(self._seq), name))
            return 200, _task_resource(task, _full(body.get("responseView")))

        return self._guard(create)

    def _list_tasks(self, queue_name: str, body: Any, query: dict) -> tuple:
        def listing() -> tuple:
            queue, full = self._queue(queue_name), _full(query.get("responseView"))
            tasks = [_task_resource(t, full) for t in sorted(queue.tasks.values(), key=lambda t: t["eta"])]
            return 200, {"tasks": tasks} if tasks else {}

        return self._guard(listing)

    def _get_task(self, name: str, body: Any, query: dict) -> tuple:
        def get() -> tuple:
            task = self._queue(name.rsplit("/tasks/", 1)[0]).tasks.get(name)
            if task is None:
                raise _NotFound(f"Task {name} does not exist.")
            return 200, _task_resource(task, _full(query.get("responseView")))

        return self._guard(get)

    def _delete_task(self, name: str, body: Any, query: dict) -> tuple:
        def delete() -> tuple:
            queue = self._queue(name.rsplit("/tasks/", 1)[0])
            if name not in queue.tasks:
                raise _NotFound(f"Task {name} does not exist.")
            self._bury(queue, [name])
            return 200, {}

        return self._guard(delete)

    @staticmethod
    def _guard(action: Any) -> tuple:
        try:
            answer: tuple = action()
        except _NotFound as exc:
            return google_error(404, str(exc))
        return answer

    def _bury(self, queue: _Queue, names: list[str]) -> None:
        """Delete tasks (the caller holds the lock); their names stay taken for an hour."""
        until = time.time() + NAME_REUSE_SECONDS
        for name in names:
            queue.tasks.pop(name, None)
            self._tombstones[name] = until

    # Dispatch

    def _dispatch_loop(self) -> None:
        with self._lock:
            while not self._stopping:
                self._lock.wait(self._start_due(time.time()))

    def _start_due(self, now: float) -> float:
        """Start every attempt the queues allow now (the caller holds the lock);
        returns how long to sleep before the next could start."""
        sleep = 0.5
        for queue in list(self._queues.values()):
            if queue.state != "RUNNING":
                continue
            while queue.due and queue.due[0][2] not in queue.tasks:
                heapq.heappop(queue.due)  # a deleted task's entry
            if not queue.due or queue.due[0][0] > now:
                queue.bucket.idle(now)
                sleep = min(sleep, queue.due[0][0] - now) if queue.due else sleep
                continue
            factor = queue.factor(now)
            while queue.due and queue.due[0][0] <= now and queue.running < queue.rates["maxConcurrentDispatches"]:
                eta, _, name = queue.due[0]
                task = queue.tasks.get(name)
                if task is None or task["running"] or task["eta"] != eta:
                    heapq.heappop(queue.due)  # stale: deleted, or rescheduled under a later entry
                    continue
                if not queue.bucket.take(now, factor):
                    sleep = min(sleep, queue.bucket.wait(factor))
                    break
                heapq.heappop(queue.due)
                self._begin(queue, task, now)
        return max(sleep, 0.001)

    def _begin(self, queue: _Queue, task: dict, now: float) -> None:
        short = queue.name.rsplit("/", 1)[1]
        task["running"] = True
        queue.running += 1
        self._max_running[short] = max(self._max_running.get(short, 0), queue.running)
        self._operations += 1
        record = {
            "task": task["name"].rsplit("/", 1)[1],
            "time": now,
            "status": None,
            "retry_count": task["dispatch_count"],
        }
        self._dispatches.setdefault(short, []).append(record)
        headers = {
            **task["headers"],
            "User-Agent": "Google-Cloud-Tasks",
            "X-CloudTasks-QueueName": short,
            "X-CloudTasks-TaskName": record["task"],
            "X-CloudTasks-TaskRetryCount": str(task["dispatch_count"]),
            "X-CloudTasks-TaskExecutionCount": str(task["response_count"]),
            "X-CloudTasks-TaskETA": f"{task['eta']:.6f}",
        }
        if task["last_status"] is not None:
            headers["X-CloudTasks-TaskPreviousResponse"] = str(task["last_status"])
        if task["oidc"]:
            audience = task["oidc"].get("audience") or task["url"]  # OidcToken.audience: "If not specified, the URI"
            headers["Authorization"] = "Bearer " + oidc_token(task["oidc"]["serviceAccountEmail"], audience, now)
        if self._idle == 0:  # a thread per attempt in flight, reused: no thread start per delivery
            self._workers += 1
            threading.Thread(target=self._deliver_jobs, daemon=True, name="FakeTasks-delivery").start()
        else:
            self._idle -= 1
        self._jobs.put((queue, task, record, headers))

    def _deliver_jobs(self) -> None:
        while (job := self._jobs.get()) is not None:
            self._attempt(*job)
            with self._lock:
                self._idle += 1

    def _attempt(self, queue: _Queue, task: dict, record: dict, headers: dict) -> None:
        """One delivery, outside the lock, then its outcome under it."""
        status, retry_after = deliver(task["method"], task["url"], headers, task["body"], task["deadline"])
        with self._lock:
            now = time.time()
            record["status"] = status
            queue.running -= 1
            task["running"] = False
            task["dispatch_count"] += 1
            task["first_attempt"] = task["first_attempt"] or record["time"]
            if status is not None and status < 500:
                task["response_count"] += 1  # X-CloudTasks-TaskExecutionCount leaves out 5xx failures
            task["last_status"] = status
            done = status is not None and 200 <= status < 300
            if task["name"] not in queue.tasks:
                pass  # deleted or purged while in flight
            elif done or gives_up(queue.retry, task["dispatch_count"], now - task["first_attempt"]):
                self._bury(queue, [task["name"]])
            else:
                delay = retry_delay(queue.retry, task["dispatch_count"])
                if status in (429, 503):
                    delay = max(delay, retry_after_seconds(retry_after, now))
                    queue.throttle = halved_share(queue.factor(now))
                    queue.throttled_at = now
                task["eta"] = now + delay
                heapq.heappush(queue.due, (task["eta"], next(self._seq), task["name"]))
            self._lock.notify_all()


_connections = threading.local()  # each delivery thread's keep-alive connections, by (scheme, host:port)


def deliver(
    method: str, url: str, headers: dict[str, str], body: bytes, deadline: float
) -> tuple[int | None, str | None]:
    """Sends one task's request; returns (status, Retry-After), or (None, None)
    when no answer came within the deadline or the connection failed."""
    parts = urlsplit(url)
    pool: dict[tuple[str, str], http.client.HTTPConnection] = _connections.__dict__.setdefault("pool", {})
    key = (parts.scheme, parts.netloc)
    connection = pool.get(key)
    if connection is None or connection.sock is None or _closed_by_peer(connection.sock):
        kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        connection = pool[key] = kind(parts.netloc, timeout=deadline)
    connection.timeout = deadline
    if connection.sock is not None:
        connection.sock.settimeout(deadline)
    try:
        connection.request(method, (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), body, headers)
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("Retry-After")
    except (OSError, http.client.HTTPException):
        connection.close()
        return None, None


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether an idle keep-alive connection was closed by the target (it reads as ready)."""
    return bool(select.select([sock], [], [], 0)[0])


class _NotFound(LookupError):
    """A queue or task that does not exist: 404 NOT_FOUND."""


def _full(view: Any) -> bool:
    """Whether a responseView asks for the FULL view (2), body included."""
    return view in (2, "2", "FULL")


def _task_resource(task: dict, full: bool) -> dict:
    """The Task resource as the API returns it, BASIC view without the body."""
    http: dict[str, Any] = {"url": task["url"], "httpMethod": task["method"], "headers": task["headers"]}
    if full and task["body"]:
        http["body"] = base64.b64encode(task["body"]).decode()
    if task["oidc"]:
        http["oidcToken"] = task["oidc"]
    out = {
        "name": task["name"],
        "httpRequest": http,
        "scheduleTime": format_timestamp(task["eta"]),
        "createTime": format_timestamp(int(task["created"])),
        "dispatchDeadline": format_duration(task["deadline"]),
        "dispatchCount": task["dispatch_count"],
        "responseCount": task["response_count"],
        "view": "FULL" if full else "BASIC",
    }
    if task["first_attempt"] is not None:
        out["firstAttempt"] = {"dispatchTime": format_timestamp(task["first_attempt"])}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m local.fake_tasks", description="Fake Cloud Tasks v2 REST API on 127.0.0.1."
    )
    parser.add_argument("--port", type=int, default=0, help="port to bind; a free one by default")
    serve_until_interrupted(FakeTasks(), parser.parse_args(argv).port)


if __name__ == "__main__":
    main()
