"""Per-message timers: after a commit, one Cloud Tasks task at each due time it set.

A message is due for a duty when the duty's selector field holds a swept value
and its due-time field is set (the sweeps' queries, model.REVOKE_QUERY and
FALLBACK_QUERY). When a commit changes that due time (store.update_message
calls `schedule`), a task named by the message, the duty and the due time
(tasks.task_id) is created on the duty's queue — RBM_TASKS_QUEUE for revokes and
re-sends, SMS_TASKS_QUEUE for SMS — to POST a work item with the message's id
to process_due_work (WORKER_URL) at that time. So an enqueue retried, or
repeated by a second writer that committed the same due time, is refused as
ALREADY_EXISTS instead of doubling the timer, and every new due time (a retry's
backoff, a grace period, a new deadline) is a new task.

A timer is a shortcut, never the truth: an enqueue that fails is logged
(`timer_not_set`) and the message stays due in Firestore, where the scheduled
safety net (dispatch.run) finds it; a task that arrives twice, early or late
finds the message claimed, done or not due (sweep.perform). Due times further
ahead than Cloud Tasks schedules (30 days, its quotas page) are left to the
safety net too.

google-cloud-tasks (functions/tasks.py) is imported on the first enqueue, so a
function that never sets a timer does not load it.
"""

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from functions import config, logs
from functions.model import FALLBACK_QUERY, REVOKE_QUERY, SWEPT_FALLBACKS, SWEPT_STATES, Message
from functions.work_items import Duty, WorkItem

# Cloud Tasks' "Maximum schedule time" is 30 days ahead (quotas page); a margin for clocks.
HORIZON = timedelta(days=30) - timedelta(minutes=10)
PARALLELISM = 16  # enqueues in flight of one schedule_all

# Per duty: (selector field, due-time field), the selector values that are due, its queue setting.
DUTIES: dict[Duty, tuple[tuple[str, str], tuple[StrEnum, ...], Callable[[], str]]] = {
    Duty.REVOKE: (REVOKE_QUERY, SWEPT_STATES, config.rbm_tasks_queue),
    Duty.FALLBACK: (FALLBACK_QUERY, SWEPT_FALLBACKS, config.sms_tasks_queue),
}


def queue(duty: Duty) -> str:
    """The queue of `duty`'s tasks; empty when none is configured (its scheduled function acts itself)."""
    return DUTIES[duty][2]()


def due_at(duty: Duty, message: Message | None) -> datetime | None:
    """When `message` is due for `duty` (its due-time field, if its selector is swept); None otherwise."""
    if message is None or not message.tracked:
        return None
    (selector, field), values, _ = DUTIES[duty]
    at: datetime | None = getattr(message, field) if getattr(message, selector) in values else None
    return at


def name(message_id: str, duty: Duty, due: datetime, rerun: int | None = None) -> str:
    """The task id of a timer (tasks.task_id)."""
    from functions import tasks

    return tasks.task_id(message_id, duty.value, due, rerun)


def enqueue(message_id: str, duty: Duty, due: datetime, rerun: int | None = None) -> bool:
    """Creates the task of a timer on `duty`'s queue: a work item of `message_id` due at `due`,
    for process_due_work at `due`. True when created; False when a task of that name exists or
    ran in the last hour (ALREADY_EXISTS). Raises tasks.EnqueueError (or ValueError)."""
    from functions import tasks

    body = WorkItem(duty, (message_id,), due).encode()
    url = config.worker_url()
    return tasks.enqueue(
        queue(duty), name(message_id, duty, due, rerun), url, body, due, url, config.tasks_service_account()
    )


def exists(message_id: str, duty: Duty, due: datetime, rerun: int | None = None) -> bool:
    """Whether the timer task of `message_id`'s `duty` at `due` (under the rerun name `rerun`, if
    given) is still in its queue. Raises tasks.EnqueueError."""
    from functions import tasks

    return tasks.exists(queue(duty), name(message_id, duty, due, rerun))


def _timers(before: Message | None, after: Message) -> list[tuple[Duty, datetime]]:
    """The (duty, due time) of each timer the change from `before` to `after` sets."""
    now = datetime.now(UTC)
    return [
        (duty, due)
        for duty in DUTIES
        if (due := due_at(duty, after)) is not None
        and due != due_at(duty, before)
        and queue(duty)
        and due - now <= HORIZON
    ]


def _set(message_id: str, duty: Duty, due: datetime) -> None:
    try:
        enqueue(message_id, duty, due)
    except Exception as exc:  # any failure: the message stays due for the safety net
        logs.warning(
            "timer not set; the scheduled safety net will find the message due",
            event="timer_not_set",
            message_id=message_id,
            duty=duty.value,
            reason=f"{type(exc).__name__}: {exc}"[:300],
        )


def schedule(before: Message | None, after: Message) -> None:
    """After a commit that made `after` of `before` (None: created): sets a timer for each duty
    whose due time the commit changed and that has a queue. Never raises (see `_set`)."""
    for duty, due in _timers(before, after):
        _set(after.message_id, duty, due)


def schedule_all(pairs: Iterable[tuple[Message | None, Message]]) -> None:
    """`schedule` for many commits (a batch), PARALLELISM enqueues at a time. Never raises."""
    wanted = [(after.message_id, duty, due) for before, after in pairs for duty, due in _timers(before, after)]
    if not wanted:
        return
    with ThreadPoolExecutor(min(PARALLELISM, len(wanted)), thread_name_prefix="timers") as pool:
        list(pool.map(lambda t: _set(*t), wanted))
