"""Deadline-precise dispatch: the scheduled runs, and the work they hand out.

revoke_expired and send_fallbacks (Cloud Scheduler, every SCHEDULE_PERIOD_SECONDS)
each keep looking, until just before the schedule's next tick, for work due in the coming
second (after a first look at all that is due, only at what became due in the
last LOOKBACK_SECONDS: a backlog is read once per run, not every second), and
dispatch it at its due second: as work items on RBM_WORK_TOPIC for
process_due_work behind a push subscription — Cloud Functions' autoscaling is
the scale-out, and the worker's max instances × SWEEP_PARALLELISM bound the
calls in flight into RBM and the SMS provider — or, without a work topic, acted
on by the run itself. So one flow carries a message from its deadline to its
SMS, each step at its own second: the revoke at the deadline, the SMS when the
revoke left it due — REVOKE_GRACE_SECONDS after a 200, in which a racing
DELIVERED cancels it — or at once after a send answered 404 or a
TTL_EXPIRATION_REVOKED.

Nothing is lost, only late: a run that dies, or an item that never arrives,
leaves its messages due, and the next run dispatches them again. Nothing is
done twice: a duplicated, redelivered or late item finds its messages claimed
or done (sweep.perform).
"""

import math
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

from functions import config, logs, pubsub, store, sweep, work_items
from functions.model import Message
from functions.replies import Reply, reply
from functions.sweep import ALWAYS, Outcome, Sweep
from functions.work_items import WorkItem

POLL_SECONDS = 1.0  # how often a run looks for due work, and how early it dispatches it
WINDOW_SECONDS = 0.5  # messages due this close together share a work item
LOOKBACK_SECONDS = 10.0  # after its first poll, a run reads only work due since this long before its last poll
MAX_EARLY_SECONDS = 5.0  # the longest an item waits for its due second (it is dispatched POLL_SECONDS early)
RUN_ITEMS = 32  # work items a run without a work topic acts on at once
END_MARGIN_SECONDS = 1.0  # a run ends this long before the schedule's next tick
EARLY_SECONDS = 1.0  # a run started this close before a tick belongs to that tick (clock skew)
ZERO = timedelta(0)


def _wait_until(at: datetime, cap: float) -> None:
    delay = (at - store.now()).total_seconds()
    if delay > 0:
        time.sleep(min(delay, cap))


def work(s: Sweep, item: WorkItem, owner: str, deadline: float | None = None) -> Counter[Outcome]:
    """Acts on `item` (one of sweep `s`'s) at its due second; answers the outcomes counted."""
    _wait_until(item.due_at, MAX_EARLY_SECONDS)
    return Counter(sweep.perform(s, list(item.message_ids), owner, deadline).values())


def items(s: Sweep, messages: list[Message]) -> list[WorkItem]:
    """Messages, earliest due first, as work items of at most WORK_ITEM_SIZE ids due
    within WINDOW_SECONDS of each other; an item is due when its last message is."""
    result: list[WorkItem] = []
    group: list[tuple[str, datetime]] = []  # (message id, due time) of the item being filled

    def close() -> None:
        result.append(WorkItem(s.duty, tuple(i for i, _ in group), group[-1][1]))
        group.clear()

    for message in messages:
        at = sweep.due_at(s, message)
        if group and (len(group) >= config.work_item_size() or (at - group[0][1]).total_seconds() > WINDOW_SECONDS):
            close()
        group.append((message.message_id, at))
    if group:
        close()
    return result


def seconds_to_run(started: float, period: float) -> float:
    """How long a run that started at `started` (seconds since the epoch) keeps dispatching:
    until END_MARGIN_SECONDS before the schedule's next tick, whatever its start time.

    Cloud Scheduler fires a job on its cron grid (every `period` seconds, on multiples of
    the period since the epoch for a period that divides an hour) and never starts
    execution n + 1 before execution n has ended: "A scheduled start time will be
    delayed if the previous execution has not ended" (Cloud Scheduler reference,
    `Job.schedule`). A run that started late, or hung for a while, therefore ends at
    its own tick's end, not a period after its start, so the next tick starts on time.
    0 or less: one pass."""
    if period <= 0:
        return 0.0
    next_tick = (math.floor((started + EARLY_SECONDS) / period) + 1) * period
    return max(0.0, next_tick - END_MARGIN_SECONDS - started)


def _queued(s: Sweep, batch: list[WorkItem]) -> bool:
    """Publishes `batch` to the work topic; False, logged, when Pub/Sub did not take it
    (pubsub.PublishError): its messages stay due, for a later poll or run."""
    try:
        work_items.publish(batch)
        return True
    except pubsub.PublishError as exc:
        logs.error(
            "work items not queued; their messages stay due",
            event="work_publish_failed",
            sweep=s.name,
            items=len(batch),
            reason=str(exc),
        )
        return False


def run(s: Sweep) -> dict[str, Any]:
    """One scheduled run: dispatches due work at its due second until just before the
    schedule's next tick (`seconds_to_run`; one pass when SCHEDULE_PERIOD_SECONDS is 0)
    or the budget is spent. Answers the summary it also logs. Items Pub/Sub did not take
    are counted (`unqueued`) and their messages looked at again by the next poll, which
    reads from where the failed one read, or by the next run; the run goes on meanwhile."""
    owner, started = f"{s.name}-{uuid.uuid4().hex[:12]}", time.monotonic()
    period, budget, topic = config.schedule_period(), config.sweep_budget(), config.work_topic()
    deadline, lookahead = started + budget, timedelta(seconds=POLL_SECONDS if period else 0)
    length = min(seconds_to_run(time.time(), period), budget)
    dispatched: dict[str, datetime] = {}  # message id → the due time it was dispatched for
    counts: Counter[str] = Counter()
    since = None  # the first poll reads all that is due; later ones only what became due lately
    with ThreadPoolExecutor(RUN_ITEMS, thread_name_prefix=s.name) as pool:
        running = []
        while True:
            polled, now = time.monotonic(), store.now()
            last = polled + POLL_SECONDS >= started + length
            # The last poll also hands out what falls due before the next run's first poll.
            rest = max(0.0, started + length - polled) + END_MARGIN_SECONDS
            ahead = timedelta(seconds=rest) if last and period else ZERO
            found = sweep.due(s, now + lookahead + ahead, since)
            fresh = [m for m in found if dispatched.get(m.message_id) != sweep.due_at(s, m)]
            batch = items(s, fresh)
            if topic and batch and not _queued(s, batch):
                counts.update(unqueued=len(batch))
            else:
                if batch and not topic:
                    running += [pool.submit(work, s, item, owner, deadline) for item in batch]
                dispatched.update((m.message_id, sweep.due_at(s, m)) for m in fresh)
                counts.update(scanned=len(fresh), items=len(batch))
                since = now - timedelta(seconds=LOOKBACK_SECONDS)
            if last:
                break
            time.sleep(max(0.0, polled + POLL_SECONDS - time.monotonic()))
        for future in running:
            counts.update(future.result())
    zero: dict[str, int] = dict.fromkeys(("scanned", "items", "unqueued", *s.outcomes, *ALWAYS), 0)
    summary = {**zero, **counts, "seconds": round(time.monotonic() - started, 2)}
    logs.info(f"{s.name} finished", event=f"{s.name}_summary", summary=summary)
    return summary


def scheduled_run(s: Sweep) -> Reply:
    """A scheduled entry point's answer: 200 with the run's summary (`run`)."""
    return reply(200, run(s))
