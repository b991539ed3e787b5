"""process_due_work: one work item, pushed by Pub/Sub from RBM_WORK_TOPIC, acted on at its due second.

The scheduled runs (revoke_expired, send_fallbacks) publish the items; see
dispatch for the flow. An item is always acknowledged: a message it could not
finish stays due (or leased), and the next scheduled run dispatches it again.
"""

import base64
import binascii
import time
import uuid

from cloudevents.http import CloudEvent

from functions import config, dispatch, logs, revoke_expired, send_fallbacks, work_items

SWEEPS = {s.duty: s for s in (revoke_expired.REVOKE, send_fallbacks.FALLBACK)}


def handle(cloud_event: CloudEvent) -> None:
    """`cloud_event.data` is a Pub/Sub push envelope, `{"message": {"data": base64 of a work item, ...}}`
    (work_items.decode); anything else is logged and acknowledged."""
    message = (cloud_event.data or {}).get("message") or {}
    try:
        item = work_items.decode(base64.b64decode(message.get("data") or "", validate=True))
    except (work_items.WorkItemError, binascii.Error, ValueError) as exc:
        logs.error("not a work item; acknowledged", event="work_item_invalid", reason=str(exc))
        return
    s = SWEEPS[item.duty]
    if s is send_fallbacks.FALLBACK and send_fallbacks.unconfigured("a fallback work item"):
        return
    started = time.monotonic()
    counts = dispatch.work(s, item, f"process_due_work-{uuid.uuid4().hex[:12]}", started + config.sweep_budget())
    logs.info("work item done", event="work_item_done", duty=item.duty, due_at=item.due_at, summary=dict(counts))
