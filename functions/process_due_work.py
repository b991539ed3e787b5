"""process_due_work: the HTTP target of every Cloud Tasks task; acts on the work item it brings.

A timer (functions/timers.py) or the scheduled safety net (dispatch.run) creates
the task; its body is a work item (work_items.decode) and it arrives with an
OIDC token of TASKS_SERVICE_ACCOUNT, which Cloud Run checks before the request
gets here (only that account may invoke the function). The answer tells Cloud
Tasks what to do with the task ("Create HTTP Target tasks": any status outside
200-299 is a failure, retried with the queue's backoff; 429 and 503 also slow
the queue, and a Retry-After is considered):

- 200 `{"duty", "outcomes": {message id: outcome}}` once every message is acted
  on or skipped (claimed by another, done, or not due: a task twice, early or
  late does nothing more);
- 503 with Retry-After when a message came out RETRIED (RBM or the SMS provider
  failed for now, a 429 included: the queue slows down; the message's own
  retry timer was set by its commit, so the queue's retry of this task finds
  nothing due) or LEFT (the time ran out), or for fallback work when no SMS
  provider is ready;
- 500 when a message hit an unexpected error (its lease makes it due again, for
  the safety net);
- 400 for a body that is not a work item, or one naming a message id that can
  never be a Firestore document id (logged; Cloud Tasks retries it until the
  queue's max attempts, harmlessly, without a Firestore call).
"""

import math
import time
import uuid
from collections import Counter

import flask

from functions import config, dispatch, logs, revoke_expired, send_fallbacks, store, work_items
from functions.replies import Reply, reject, reply
from functions.sweep import Outcome

SWEEPS = {s.duty: s for s in (revoke_expired.REVOKE, send_fallbacks.FALLBACK)}
# Claims stop this long after the request began: well inside the function's timeout
# (60 s, infra/functions.json), as a task's work is one message or a few.
BUDGET_SECONDS = 40.0
LATER = (Outcome.RETRIED, Outcome.LEFT)  # outcomes that answer 503: try again later


def _retry_after() -> dict[str, str]:
    """Retry-After for a 503: no sooner than a failed message's first backoff (RETRY_BACKOFF_SECONDS)."""
    return {"Retry-After": str(max(1, math.ceil(config.retry_backoff_seconds())))}


def handle(request: flask.Request) -> Reply:
    """Acts on the work item in the request body; answers as the module docstring says."""
    logs.bind_trace(request.headers)
    if request.method != "POST":
        return reject(405, "method not allowed")
    try:
        item = work_items.decode(request.get_data())
        for message_id in item.message_ids:
            store.document_id(message_id, "messageId")
    except (work_items.WorkItemError, store.UnstorableError) as exc:
        logs.error("not a work item", event="work_item_invalid", reason=str(exc))
        return reply(400, {"error": str(exc)})
    s = SWEEPS[item.duty]
    if s is send_fallbacks.FALLBACK and (reason := send_fallbacks.unconfigured("a fallback task came")):
        return reply(503, {"error": reason}, _retry_after())
    started = time.monotonic()
    outcomes = dispatch.work(s, item, f"process_due_work-{uuid.uuid4().hex[:12]}", started + BUDGET_SECONDS)
    counts = Counter(outcomes.values())
    logs.info(
        "work item done",
        event="work_item_done",
        duty=item.duty,
        due_at=item.due_at,
        task=request.headers.get("X-CloudTasks-TaskName"),
        retries=request.headers.get("X-CloudTasks-TaskRetryCount"),
        summary=dict(counts),
    )
    body = {"duty": item.duty.value, "outcomes": {i: o.value for i, o in outcomes.items()}}
    if counts[Outcome.ERRORS]:
        return reply(500, body)
    if any(counts[o] for o in LATER):
        return reply(503, body, _retry_after())
    return reply(200, body)
