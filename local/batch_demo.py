"""The batch demo (`make run ARGS="--batch N"`): N messages as one send_batch, through the whole stack.

The users are the demo's kinds that need no per-message fault (`KINDS`, from
local/demo.py: read, delivered late, never online, no RCS), one device each in
the simulator. One send_batch request stores them all (202); the rbm-calls
queue then paces their creates at its configured rate (infra/topology.json
"queues"), and the timers revoke and text the ones not delivered by their
deadline. A live line shows accepted, created, delivered and texted; the end
is the batch's table of counts by state, fallback and fate
(functions.batches.progress, what `python -m functions batch ID` prints), its
creates/s against the queue's rate, and the demo's checks of every fate, the
one-SMS rule and the outcome events (local/demo.py).
"""

import sys
import time
import uuid
from typing import Any, TextIO

from functions import batch_request, batches, store
from functions.model import Fallback, Message
from functions.outcomes import Fate, fate
from local import demo
from local.fake_tasks import max_in_window
from local.stack import QUEUES, TOPOLOGY

KINDS = ("online", "late", "never", "not_rcs")
RBM_RATE = TOPOLOGY["queues"]["rbm"]["max_dispatches_per_second"]  # the creates' pace
SMS_RATE = TOPOLOGY["queues"]["sms"]["max_dispatches_per_second"]


def plan(batch_id: str, size: int) -> list[demo.Planned]:
    """`size` users, the kinds taken in turn, each with the message id send_batch gives its index."""
    return [
        demo.Planned(p.kind, p.phone, batch_request.message_id(batch_id, i))
        for i, p in enumerate(demo.plan(size, KINDS))
    ]


def request(batch_id: str, planned: list[demo.Planned], deadline: int) -> dict[str, Any]:
    """The send_batch body: the deadline in the defaults, each user's texts in its own entry."""
    return {
        "batch_id": batch_id,
        "defaults": {"revoke_after_seconds": deadline},
        "messages": [
            {"phone": p.phone, "content": {"text": f"Hello {p.kind}"}, "fallback": {"text": f"SMS for {p.kind}"}}
            for p in planned
        ],
    }


def documents(batch_id: str, planned: list[demo.Planned]) -> dict[str, Message | None]:
    """Every planned message's document (None where none is stored), in one query of the batch."""
    found = {m.message_id: m for m in batches.of_batch(batch_id)}
    return {p.message_id: found.get(p.message_id) for p in planned}


def progress_line(accepted: int, docs: dict[str, Message | None], started: float) -> str:
    """accepted (send_batch's answer), created (RBM accepted the create), delivered (over RCS) and
    texted (SMS sent), and how many have reached a fate that our own actions no longer change."""
    messages = [m for m in docs.values() if m]
    created = sum(1 for m in messages if m.sent_at)
    delivered = sum(1 for m in messages if fate(m)[0] is Fate.RCS)
    texted = sum(1 for m in messages if m.fallback is Fallback.SENT)
    final = sum(1 for m in messages if fate(m)[1])
    return (
        f"t={time.monotonic() - started:6.1f}s  accepted {accepted}  created {created}  delivered {delivered}"
        f"  texted {texted}  at a fate {final}/{len(docs)}"
    )


def watch(
    batch_id: str, planned: list[demo.Planned], accepted: int, timeout: float, out: TextIO
) -> dict[str, Message | None]:
    """The live line until every message reached its expected fate (demo.settled), or `timeout`."""
    started, tty = time.monotonic(), out.isatty()
    docs = documents(batch_id, planned)
    while not demo.settled(planned, docs) and time.monotonic() - started < timeout:
        print(("\r" if tty else "") + progress_line(accepted, docs, started), end="" if tty else "\n", file=out)
        out.flush()
        time.sleep(1.0 if tty else 5.0)
        docs = documents(batch_id, planned)
    print(("\r" if tty else "") + progress_line(accepted, docs, started), file=out, flush=True)
    return docs


def fate_table(counts: dict[str, Any]) -> str:
    """functions.batches.progress's counts, a row each for state, fallback and fate."""
    rows = [(name, sorted(counts[name].items())) for name in ("state", "fallback", "fate")]
    return "\n".join(f"{name:<9} " + "  ".join(f"{key} {n}" for key, n in cells) for name, cells in rows)


def rate_line(stack, counts: dict[str, Any], docs: dict[str, Message | None]) -> str:
    """The accepted creates' pace, the mean (functions.batches.progress) and the most in any one
    second, and the most the rbm queue dispatched in one second (every task it carries: creates
    answered or refused, revokes), against the queue's configured rate. One second can hold up to
    the token bucket's burst plus the rate (max_burst_size, local/fake_tasks.py); the mean is the pace."""
    times = [m.sent_at.timestamp() for m in docs.values() if m and m.sent_at]
    mean = counts["creates_per_second"]["mean"]
    dispatched = max_in_window(stack.tasks.dispatch_times(QUEUES["rbm"]))
    return (
        f"creates/s: mean {mean if mean is not None else '-'}, most in one second {max_in_window(times)}"
        f" ({len(times)} accepted creates); rbm queue: most in one second {dispatched} tasks,"
        f" its configured rate {RBM_RATE:g}/s"
    )


def run(stack, size: int, deadline: int = 20, timeout: float = 100.0, out: TextIO = sys.stdout) -> bool:
    """The batch demo; True if every message reached its expected fate with the SMS and events it
    should have. `timeout` is on top of the time the queues' rates need for `size` messages."""
    batch_id = f"demo-{uuid.uuid4().hex[:8]}"
    planned = plan(batch_id, size)
    demo.devices(stack, planned, deadline)
    started = time.monotonic()
    response = stack.send_batch(request(batch_id, planned, deadline))
    if response.status_code != 202:
        raise RuntimeError(f"send_batch answered {response.status_code}: {response.text}")
    answer = response.json()
    print(
        f"batch {batch_id}: {answer['accepted']} accepted, {len(answer['rejected'])} rejected,"
        f" answered in {time.monotonic() - started:.1f} s",
        file=out,
        flush=True,
    )
    docs = watch(batch_id, planned, answer["accepted"], timeout + size / RBM_RATE + size / SMS_RATE, out)
    stack.rbm.wait_idle(10)
    docs = documents(batch_id, planned)
    counts = batches.progress(batch_id, store.now())
    print(f"\nbatch {batch_id}, {counts['messages']} messages\n{fate_table(counts)}", file=out)
    print(rate_line(stack, counts, docs), file=out)
    print(f"Cloud Tasks: {demo.tasks_line(stack)}", file=out)
    found = demo.problems(stack, planned, docs)
    print(demo.verdict(found, docs), file=out, flush=True)
    return not found
