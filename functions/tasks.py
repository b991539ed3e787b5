"""Enqueueing on Cloud Tasks: one client per instance, one CreateTask call per
task, with a name that makes a retried enqueue harmless.

Cloud Tasks refuses a task whose name is used by a task that exists, or that
ran or was deleted in the last hour, with ALREADY_EXISTS (CreateTaskRequest,
"Task De-duplication", cloud.google.com/tasks/docs/reference/rest/v2/projects.locations.queues.tasks/create).
So a task's name is derived from what it is for (message, duty, due time),
and ALREADY_EXISTS means "already enqueued": the call is retried on transient
errors within its deadline without doubling a timer. The due time is the
attempt: a retry, a lease or a new deadline moves it, so each is a new task.
The same reference recommends hashed task ids or hashed prefixes, as
sequential ones raise latency and error rates: the name starts with a hash of
the message id.

The client speaks REST, in production as against the local fake
(local/fake_tasks.py), so the tested path is the deployed one.
"""

import functools
import hashlib
import re
from datetime import UTC, datetime, timedelta

from google.api_core import exceptions
from google.api_core import retry as retries
from google.auth.credentials import AnonymousCredentials
from google.cloud import tasks_v2

from functions import config

_PART = re.compile(r"^[A-Za-z0-9_]{1,64}$")  # a duty in a task id: letters, digits, underscores (no separator)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class EnqueueError(RuntimeError):
    """Cloud Tasks did not confirm the task in time: the caller must count it as not enqueued."""


def task_id(message_id: str, duty: str, due_at: datetime, rerun: int | None = None) -> str:
    """The task id of a message's duty due at `due_at` (timezone-aware), e.g.
    "3f2a…9c-revoke-1764650000123": 32 hex digits of the message id's SHA-256
    first, so ids spread evenly, then the duty and the due time in whole
    milliseconds since the epoch; with `rerun` (the safety net's further names
    for one due time, 1, 2, …), "…-r1" after it. Cloud Tasks allows
    letters, digits, hyphens and underscores, up to 500 characters; raises
    ValueError for a duty outside them, a naive or pre-epoch due time, or a
    negative rerun."""
    if not _PART.match(duty) or due_at.tzinfo is None or due_at < _EPOCH or (rerun is not None and rerun < 0):
        raise ValueError("a task's duty is letters, digits and underscores; its due time aware and after 1970")
    millis = (due_at - _EPOCH) // timedelta(milliseconds=1)
    name = f"{hashlib.sha256(message_id.encode()).hexdigest()[:32]}-{duty}-{millis}"
    return name if rerun is None else f"{name}-r{rerun}"


@functools.cache
def _client() -> tasks_v2.CloudTasksClient:
    endpoint = config.tasks_endpoint()
    if endpoint.startswith("http://"):  # the local fake: plain HTTP, no credentials
        return tasks_v2.CloudTasksClient(
            transport="rest", credentials=AnonymousCredentials(), client_options={"api_endpoint": endpoint}
        )
    return tasks_v2.CloudTasksClient(transport="rest", client_options={"api_endpoint": endpoint} if endpoint else None)


def _retry(timeout: float) -> retries.Retry:
    """Retries of 429, 5xx and connection failures, with backoff, for at most `timeout` seconds."""
    return retries.Retry(initial=0.05, maximum=1.0, timeout=timeout, predicate=retries.if_transient_error)


def _already_exists(exc: exceptions.GoogleAPICallError) -> bool:
    """Whether a failed CreateTask was refused as ALREADY_EXISTS (REST answers it as a 409)."""
    if isinstance(exc, exceptions.AlreadyExists):
        return True
    if not isinstance(exc, exceptions.Conflict) or exc.response is None:
        return False
    try:
        return bool(exc.response.json()["error"]["status"] == "ALREADY_EXISTS")
    except (ValueError, KeyError, TypeError):
        return False


def enqueue(
    queue: str,
    name: str,
    url: str,
    body: bytes,
    schedule_time: datetime,
    audience: str,
    service_account: str,
) -> bool:
    """Creates an HTTP task on `queue` (projects/P/locations/L/queues/Q) named
    `name` (a task_id) that POSTs `body` (JSON) to `url` at `schedule_time`
    (timezone-aware), with an OIDC token of `service_account` for `audience`.

    Returns True when created, False when a task of that name already exists or
    ran in the last hour (already enqueued, by an earlier call or an earlier try
    of this one). Retries 429, 5xx and connection
    failures with backoff for at most TASKS_TIMEOUT_SECONDS; then, or on any
    other refusal, raises EnqueueError.
    """
    if schedule_time.tzinfo is None:
        raise ValueError("schedule_time must be timezone-aware")
    task = tasks_v2.Task(
        name=f"{queue}/tasks/{name}",
        schedule_time=schedule_time,
        http_request=tasks_v2.HttpRequest(
            url=url,
            http_method=tasks_v2.HttpMethod.POST,
            headers={"Content-Type": "application/json"},
            body=body,
            oidc_token=tasks_v2.OidcToken(service_account_email=service_account, audience=audience),
        ),
    )
    timeout = config.tasks_timeout()
    try:
        _client().create_task(
            parent=queue,
            task=task,
            timeout=timeout,
            retry=_retry(timeout),
        )
    except exceptions.GoogleAPICallError as exc:
        if _already_exists(exc):
            return False
        raise EnqueueError(f"{type(exc).__name__}: {exc.message}"[:300]) from exc
    except Exception as exc:  # retries spent (RetryError), connection failures: not confirmed
        raise EnqueueError(f"{type(exc).__name__}: {exc}"[:300]) from exc
    return True


def exists(queue: str, name: str) -> bool:
    """Whether the task `name` (a task_id) is in `queue`: waiting, or being tried
    (GetTask; a task that ran or was deleted is gone). Retries like enqueue;
    raises EnqueueError when Cloud Tasks did not answer in time or refused."""
    timeout = config.tasks_timeout()
    try:
        _client().get_task(
            name=f"{queue}/tasks/{name}",
            timeout=timeout,
            retry=_retry(timeout),
        )
    except exceptions.NotFound:
        return False
    except Exception as exc:
        raise EnqueueError(f"{type(exc).__name__}: {exc}"[:300]) from exc
    return True
