"""Due work: the scheduled passes, and the work a task brings.

Every commit that makes a message due sets a timer (functions/timers.py): a
Cloud Tasks task that brings process_due_work a work item at the due time, on
the duty's queue, whose rate is the rate into RBM or the SMS provider. So one
flow carries a message from its deadline to its SMS, each step at its own
time: the revoke at the deadline, the SMS when the revoke left it due —
REVOKE_GRACE_SECONDS after a 200, in which a racing DELIVERED cancels it — or
at once after a send answered 404 or a TTL_EXPIRATION_REVOKED.

revoke_expired and send_fallbacks (Cloud Scheduler) each make one short pass
over what is due (`run`). With the duty's queue configured the pass is the
safety net: a message overdue by more than SAFETY_SLACK_SECONDS whose timer
is not in the queue (its enqueue failed after the commit, the queue was
purged, its lease ran out, or its tasks ran out of attempts) gets its task.
Without a queue the pass acts on what is due itself, the simplest deployment.

Nothing is lost, only late, by at most one period and the slack: a task that
never arrives leaves its message due for the next pass. Nothing is done twice: a task
delivered twice, early, late or to two workers at once finds its messages
claimed, done or not due yet (sweep.perform).
"""

import itertools
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from enum import StrEnum
from typing import Any

from functions import config, logs, store, sweep, timers
from functions.model import Message
from functions.replies import Reply, reply
from functions.sweep import ALWAYS, Outcome, Sweep
from functions.work_items import WorkItem

MAX_EARLY_SECONDS = 5.0  # the longest a task's work waits for its due time (a task is not delivered early)
SAFETY_SLACK_SECONDS = 10.0  # a message this overdue has no timer on its way: the safety net enqueues it
# Rerun names one due time of a message may take (`_rescue`): a pass a minute uses at most one, and a
# name is free again an hour after its task ran or was deleted (Cloud Tasks, "Task De-duplication").
MAX_RERUNS = 60


class Rescue(StrEnum):
    """What the safety net did for one overdue message; a pass's summary counts them."""

    ENQUEUED = "enqueued"  # its task created (under its own name, or the first free rerun name)
    PRESENT = "present"  # its task is in the queue (waiting, or being tried): nothing to do
    DONE = "done"  # its timer's task ran since the pass read it: the message moved on
    NOT_ENQUEUED = "not_enqueued"  # Cloud Tasks did not take it: the next pass tries again
    LEFT = "left"  # not looked at: the pass's time was spent


def work(s: Sweep, item: WorkItem, owner: str, deadline: float | None = None) -> dict[str, Outcome]:
    """Acts on `item` (one of sweep `s`'s) at its due time (waiting MAX_EARLY_SECONDS at most);
    answers each message's outcome (sweep.perform)."""
    delay = (item.due_at - store.now()).total_seconds()
    if delay > 0:
        time.sleep(min(delay, MAX_EARLY_SECONDS))
    return sweep.perform(s, list(item.message_ids), owner, deadline)


def _rescue(s: Sweep, message: Message, deadline: float) -> Rescue:
    """The safety net for one overdue message: its timer's task, by its due time, left in
    its queue if there; else created. If that name is taken by no task in the queue
    (ALREADY_EXISTS, and not there: its task ran, was deleted, or its queue was purged, in
    the last hour) and the message, read again, is still due then, the rerun names `-r1`,
    `-r2`, … are tried in turn the same way: the first one free is created, and one still in
    the queue is an earlier pass's rescue, waiting (in a backlog, or being retried), so
    nothing more is done. Passes at once, or a minute apart, make one task between them."""
    if time.monotonic() > deadline:
        return Rescue.LEFT
    due = sweep.due_at(s, message)
    try:
        if timers.exists(message.message_id, s.duty, due):
            return Rescue.PRESENT
        if timers.enqueue(message.message_id, s.duty, due):
            return Rescue.ENQUEUED
        if timers.exists(message.message_id, s.duty, due):  # another pass created it just now
            return Rescue.PRESENT
        # The name's task ran: most often just now, in a backlog the queue drains, so the message
        # is read again (one read, only here) before a rerun doubles a task for work already done.
        if timers.due_at(s.duty, store.get_message(message.message_id)) != due:
            return Rescue.DONE
        for rerun in range(1, MAX_RERUNS + 1):
            if timers.enqueue(message.message_id, s.duty, due, rerun):
                return Rescue.ENQUEUED
            if timers.exists(message.message_id, s.duty, due, rerun):  # an earlier pass's rescue, waiting
                return Rescue.PRESENT
        raise RuntimeError(f"its {MAX_RERUNS} rerun names were all used in the last hour")
    except Exception as exc:  # one message's trouble must not stop the others; the next pass tries again
        logs.error(
            "could not enqueue an overdue message; the next pass tries again",
            event="safety_net_not_enqueued",
            sweep=s.name,
            message_id=message.message_id,
            reason=f"{type(exc).__name__}: {exc}"[:300],
        )
        return Rescue.NOT_ENQUEUED


def _safety_net(s: Sweep, deadline: float) -> Counter[str]:
    # Read within the budget too: a large backlog's messages are left to the next pass. Each
    # message is looked up as soon as it is read, earliest first, so a backlog whose reading
    # alone would spend the budget still gets its earliest rescued by every pass.
    found = sweep.due(s, store.now() - timedelta(seconds=SAFETY_SLACK_SECONDS))
    with ThreadPoolExecutor(config.sweep_parallelism(), thread_name_prefix=s.name) as pool:
        rescuing = [
            pool.submit(_rescue, s, m, deadline)
            for m in itertools.takewhile(lambda _: time.monotonic() < deadline, found)
            if m.tracked
        ]
        rescues = [f.result() for f in rescuing]
    return Counter({"scanned": len(rescuing)}) + Counter(r.value for r in rescues)


def _act(s: Sweep, owner: str, deadline: float) -> Counter[str]:
    due = [m.message_id for m in sweep.due(s, store.now())]
    return Counter({"scanned": len(due)}) + Counter(o.value for o in sweep.perform(s, due, owner, deadline).values())


def run(s: Sweep) -> dict[str, Any]:
    """One scheduled pass over what is due by now, within SWEEP_BUDGET_SECONDS: the safety net
    when the duty has a queue (`Rescue` counts), else acting on it (the sweep's outcomes).
    Answers the summary it also logs. Nothing waits for work to become due."""
    owner, started = f"{s.name}-{uuid.uuid4().hex[:12]}", time.monotonic()
    deadline = started + config.sweep_budget()
    keys: tuple[StrEnum, ...]
    if timers.queue(s.duty):
        counts, keys = _safety_net(s, deadline), tuple(Rescue)
    else:
        counts, keys = _act(s, owner, deadline), (*s.outcomes, *ALWAYS)
    zero: dict[str, int] = dict.fromkeys(("scanned", *keys), 0)
    summary = {**zero, **counts, "seconds": round(time.monotonic() - started, 2)}
    logs.info(f"{s.name} finished", event=f"{s.name}_summary", summary=summary)
    return summary


def scheduled_run(s: Sweep) -> Reply:
    """A scheduled entry point's answer: 200 with the pass's summary (`run`)."""
    return reply(200, run(s))
