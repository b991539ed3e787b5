"""What both scheduled sweeps share.

Find due messages with an indexed query (its cost follows the number due, not
the collection), page by page; claim each under a lease with a precondition
write, so overlapping sweeps never act twice; act with bounded parallelism;
stop taking work when the time budget is spent and leave the rest for the
next run.
"""

import time
import uuid
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from datetime import datetime, timedelta
from typing import Callable, Iterator

from google.cloud.firestore_v1.base_query import FieldFilter

from functions import config, logs, store
from functions.model import Message

PAGE = 200

Claim = Callable[[Message, datetime, timedelta, str], Message | None]
Act = Callable[[Message], str]


def _due_query(fields: tuple[str, str], values: tuple, now: datetime):
    selector, due_at = fields
    return (store.messages()
            .where(filter=FieldFilter(selector, "in", [v.value for v in values]))
            .where(filter=FieldFilter(due_at, "<=", now)))


def due(fields: tuple[str, str], values: tuple, now: datetime) -> Iterator[Message]:
    """Every message due at `now`, oldest first, a page at a time."""
    query, cursor = _due_query(fields, values, now).order_by(fields[1]), None
    while True:
        page = (query.start_after(cursor) if cursor else query).limit(PAGE).get()
        yield from (Message.from_doc(s.to_dict()) for s in page)
        if len(page) < PAGE:
            return
        cursor = page[-1]


def _claim_and_act(message_id: str, claim: Claim, act: Act, owner: str) -> str:
    """One message: claimed (or found taken) and acted on; a failure stays with it."""
    now, lease = store.now(), timedelta(seconds=config.lease_seconds())
    try:
        claimed = store.update_message(message_id, lambda m: m and claim(m, now, lease, owner))
        return act(claimed) if claimed and claimed.tracked else "skipped"  # another system's: dropped, never acted on
    except Exception as exc:  # one message's trouble must not stop the sweep; its lease expires
        logs.error("sweep could not process a message", event="sweep_error", message_id=message_id, reason=repr(exc)[:300])
        return "errors"


def run(name: str, fields: tuple[str, str], values: tuple, claim: Claim, act: Act, outcomes: tuple[str, ...]) -> dict:
    """One sweep; answers the summary it also logs: how many were scanned, each
    of `outcomes` (what `act` returns), and how many are left for the next run."""
    owner, started, budget = f"{name}-{uuid.uuid4().hex[:12]}", time.monotonic(), config.sweep_budget()
    limit = config.sweep_parallelism()
    counts: Counter = Counter()
    now = store.now()
    with ThreadPoolExecutor(limit, thread_name_prefix=name) as pool:
        running = set()
        for message in due(fields, values, now):
            if time.monotonic() - started > budget:
                break
            counts["scanned"] += 1
            running.add(pool.submit(_claim_and_act, message.message_id, claim, act, owner))
            if len(running) >= limit:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                counts.update(f.result() for f in done)
        counts.update(f.result() for f in wait(running).done)
    counts["left"] = int(_due_query(fields, values, now).count().get()[0][0].value)
    summary = {"scanned": 0, **dict.fromkeys(outcomes, 0), **counts, "seconds": round(time.monotonic() - started, 2)}
    logs.info(f"{name} finished", event=f"{name}_summary", summary=summary)
    return summary
