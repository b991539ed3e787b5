"""The demo scenario: a mixed population of users, sent through the whole stack.

Each kind of user has a fate the relay must reach (`KINDS`); the demo shows
the states moving, then a table of every message with its timings, and
checks the fates, including the SMS counted at the fake provider. It also
reads the outcome events a sender would get (topic rbm-outcomes), shows each
message's outcome as the events alone tell it, and checks that they agree with
the documents: every committed change once, numbered without gaps.
"""

import json
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from functions import store
from functions.logs import mask_phone
from functions.model import Fallback, Message, SmsStatus, State
from functions.outcomes import fate
from local.processes import PROJECT, pull_all
from local.stack import OUTCOMES_SUBSCRIPTION, QUEUES

EVENTS: dict[str, dict[int, dict]] = {}  # every outcome event pulled so far: message id → seq → event


@dataclass(frozen=True)
class Kind:
    device: str  # simulator mode: online, offline, not_rcs
    expect: tuple[State, Fallback]
    online_after: float | None = None  # × deadline, for an offline device that connects later
    time_sensitive: bool = False
    revoke_fails: bool = False  # every revoke answers 500: delivery stays uncertain
    unsubscribes: bool = False  # the user unsubscribes before the deadline


KINDS = {
    "online": Kind("online", (State.READ, Fallback.CANCELLED)),
    "late": Kind("offline", (State.DELIVERED, Fallback.CANCELLED), online_after=0.4),
    "never": Kind("offline", (State.REVOKED, Fallback.SENT)),
    "not_rcs": Kind("not_rcs", (State.UNREACHABLE, Fallback.SENT)),
    "unsubscribes": Kind("offline", (State.REVOKED, Fallback.CANCELLED), unsubscribes=True),
    # Its revoke never succeeds, so its SMS goes out anyway; RCS arrives later: both reach the user.
    "urgent": Kind(
        "offline", (State.DELIVERED, Fallback.SENT), online_after=3.0, time_sensitive=True, revoke_fails=True
    ),
}
SMS_EXPECTED = {"never", "not_rcs", "urgent"}  # not delivered by the deadline: exactly one SMS each


@dataclass
class Planned:
    kind: str
    phone: str
    message_id: str


def plan(population: int, kinds=tuple(KINDS), first_phone: int = 0) -> list[Planned]:
    """`population` messages, one user each, the kinds taken in turn."""
    return [Planned(kinds[i % len(kinds)], f"+1555{first_phone + i:07d}", str(uuid.uuid4())) for i in range(population)]


def devices(stack, planned: list[Planned], deadline: int) -> None:
    """Each planned user's device into the simulator, as its kind says."""
    rbm = stack.rbm
    for p in planned:
        kind = KINDS[p.kind]
        online_after = kind.online_after * deadline if kind.online_after else None
        rbm.add_device(p.phone, kind.device, online_after=online_after, read_after=1.0 if p.kind == "online" else None)
        if kind.revoke_fails:
            rbm.script("revoke", p.message_id, [500] * 1000)


def launch(stack, planned: list[Planned], deadline: int) -> None:
    """Devices into the simulator, then every message through send_message."""
    rbm = stack.rbm
    devices(stack, planned, deadline)
    for p in planned:
        body = {
            "phone": p.phone,
            "message_id": p.message_id,
            "content": {"text": f"Hello {p.kind}"},
            "revoke_after_seconds": deadline,
            "fallback": {"text": f"SMS for {p.kind}", "time_sensitive": KINDS[p.kind].time_sensitive},
        }
        response = stack.send(**body)
        if response.status_code != 200:
            raise RuntimeError(f"send_message answered {response.status_code}: {response.text}")
        if KINDS[p.kind].unsubscribes:  # a quarter of the deadline after its own send, however long launching takes
            threading.Timer(deadline * 0.25, rbm.unsubscribe, [p.phone]).start()


def documents(planned: list[Planned]) -> dict[str, Message | None]:
    return {p.message_id: store.get_message(p.message_id) for p in planned}


# The SMS leg's ends: once the fake Twilio's status callbacks reported one, no further event follows.
SMS_ENDS = (SmsStatus.DELIVERED, SmsStatus.UNDELIVERED, SmsStatus.FAILED)


def settled(planned: list[Planned], docs: dict) -> bool:
    """Every message in its expected fate, and each SMS sent reported at its end by the
    provider's status callbacks (which come after it, each an outcome event of its own)."""
    return all(
        (m := docs[p.message_id])
        and (m.state, m.fallback) == KINDS[p.kind].expect
        and (m.fallback is not Fallback.SENT or m.sms_status in SMS_ENDS)
        for p in planned
    )


def progress(docs: dict, started: float) -> str:
    states, fallbacks = {}, {}
    for m in filter(None, docs.values()):
        states[m.state.value] = states.get(m.state.value, 0) + 1
        fallbacks[m.fallback.value] = fallbacks.get(m.fallback.value, 0) + 1

    def show(counts: dict) -> str:
        return " ".join(f"{k}:{v}" for k, v in sorted(counts.items()))

    return f"t={time.monotonic() - started:5.1f}s  state {show(states)}  |  fallback {show(fallbacks)}"


def _seconds(start, end) -> float | None:
    return round((end - start).total_seconds(), 1) if start and end else None


def timings(m: Message) -> dict:
    """Seconds between the milestones of a message; an SMS sent before the
    deadline (no RCS at all) is timed from the send instead."""
    early = m.fallback_sent_at and m.revoke_at and m.fallback_sent_at < m.revoke_at
    delivered_sms = m.sms_status_at if m.sms_status is SmsStatus.DELIVERED else None
    return {
        "send→delivered": _seconds(m.sent_at or m.created_at, m.delivered_at),
        "send→read": _seconds(m.sent_at, m.read_at),
        "deadline→revoked": _seconds(m.revoke_at, m.revoked_at),
        "deadline→SMS": None if early else _seconds(m.revoke_at, m.fallback_sent_at),
        "send→SMS": _seconds(m.created_at, m.fallback_sent_at) if early else None,
        "deadline→SMS delivered": None if early else _seconds(m.revoke_at, delivered_sms),
    }


def pull_events(wait: float = 0.5) -> None:
    """Adds the outcome events waiting on the stack's subscription to EVENTS (a duplicate replaces its twin)."""
    for data, _ in pull_all(PROJECT, OUTCOMES_SUBSCRIPTION, wait):
        event = json.loads(data)
        EVENTS.setdefault(event["message_id"], {})[event["seq"]] = event


def events_of(docs: dict, timeout: float = 20.0) -> dict[str, list[dict]]:
    """Each message's outcome events by seq, once as many arrived as its document
    committed (`outcome_seq`), or after `timeout` seconds with what came."""
    deadline = time.monotonic() + timeout
    while True:
        pull_events()
        complete = all(len(EVENTS.get(i, {})) >= m.outcome_seq for i, m in docs.items() if m)
        if complete or time.monotonic() > deadline:
            return {i: [EVENTS.get(i, {})[s] for s in sorted(EVENTS.get(i, {}))] for i in docs}


def event_problems(planned: list[Planned], docs: dict, events: dict[str, list[dict]]) -> list[str]:
    """Where the outcome events disagree with the documents: a gap or a missing event, or a last fate
    that is not the document's."""
    found = []
    for p in planned:
        m, seen = docs[p.message_id], events[p.message_id]
        if m is None:
            continue
        if [e["seq"] for e in seen] != list(range(1, m.outcome_seq + 1)):
            found.append(f"{p.kind} {p.message_id}: events {[e['seq'] for e in seen]} for outcome_seq {m.outcome_seq}")
        elif seen and seen[-1]["fate"] != fate(m)[0].value:
            found.append(f"{p.kind} {p.message_id}: last event says {seen[-1]['fate']}, the document {fate(m)[0]}")
    return found


def outcome_line(p: Planned, seen: list[dict]) -> str:
    """One message's outcome from its events alone: the fate, the channel that settled it, and how
    long from its first event to the one that settled it."""
    if not seen:
        return f"{p.kind:<13} {mask_phone(p.phone)}  no events"
    last = seen[-1]["fate"]
    settled_by = next(e for e in seen if e["fate"] == last)
    first, at = (datetime.fromisoformat(e["occurred_at"]) for e in (seen[0], settled_by))
    return (
        f"{p.kind:<13} {mask_phone(p.phone)}  fate {last:<8} channel {settled_by['channel']:<4}"
        f" after {(at - first).total_seconds():5.1f} s  ({len(seen)} events: {' '.join(e['status'] for e in seen)})"
    )


def problems(stack, planned: list[Planned], docs: dict) -> list[str]:
    """Every way the run broke the scenario's fates or the one-SMS rule, or the
    outcome events disagree with the documents."""
    found = event_problems(planned, docs, events_of(docs))
    sms = {}
    for record in stack.sms.sent:
        sms[record["to"]] = sms.get(record["to"], 0) + 1
    for p in planned:
        m = docs[p.message_id]
        got = (m.state, m.fallback) if m else None
        if got != KINDS[p.kind].expect:
            found.append(f"{p.kind} {p.message_id}: {got} instead of {KINDS[p.kind].expect}")
        want = 1 if p.kind in SMS_EXPECTED else 0
        if sms.get(p.phone, 0) != want:
            found.append(f"{p.kind} {p.message_id}: {sms.get(p.phone, 0)} SMS instead of {want}")
    return found


def table(planned: list[Planned], docs: dict) -> str:
    columns = [
        "kind",
        "phone",
        "state",
        "fallback",
        "sms",
        "send→delivered",
        "send→read",
        "deadline→revoked",
        "deadline→SMS",
        "send→SMS",
        "deadline→SMS delivered",
    ]
    rows = [columns]
    for p in planned:
        m = docs[p.message_id]
        cells = {
            "kind": p.kind,
            "phone": mask_phone(p.phone),
            "state": m.state.value if m else "-",
            "fallback": m.fallback.value if m else "-",
            "sms": m.sms_status.value if m and m.sms_status else "-",
            **(timings(m) if m else {}),
        }
        rows.append([str(cells.get(c) if cells.get(c) is not None else "-") for c in columns])
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) for row in rows)


# How late the SMS of a message not delivered on RCS went out, and reached the handset (its DELIVERED callback).
SMS_TIMINGS = ("deadline→SMS", "send→SMS", "deadline→SMS delivered")


def summary(docs: dict, names: tuple[str, ...]) -> dict:
    """n, p50 and p99 of each timing over the run, in seconds; a timing no message had is left out."""
    out = {}
    for name in names:
        values = sorted(v for m in filter(None, docs.values()) if (v := timings(m)[name]) is not None)
        if values:
            out[name] = {
                "n": len(values),
                "p50": round(statistics.median(values), 2),
                "p99": values[min(len(values) - 1, round(0.99 * (len(values) - 1)))],
            }
    return out


def verdict(found: list[str], docs: dict) -> str:
    """The closing lines: the fates, then how late the SMS went out."""
    lines = (
        ["every message reached its fate; one SMS for each one not delivered by its deadline"]
        if not found
        else ["PROBLEMS:", *found]
    )
    for name, s in summary(docs, SMS_TIMINGS).items():
        lines.append(f"{name}: p50 {s['p50']} s, p99 {s['p99']} s over {s['n']} messages")
    return "\n".join(lines)


def watch(stack, planned: list[Planned], timeout: float, out=sys.stdout) -> dict[str, Message | None]:
    """Shows progress until every message reached its fate, or `timeout`; the final documents."""
    started, tty = time.monotonic(), out.isatty()
    docs = documents(planned)
    while not settled(planned, docs) and time.monotonic() - started < timeout:
        print(("\r" if tty else "") + progress(docs, started), end="" if tty else "\n", file=out, flush=True)
        time.sleep(1.0 if tty else 5.0)
        docs = documents(planned)
    stack.rbm.wait_idle(10)
    docs = documents(planned)
    print(("\r" if tty else "") + progress(docs, started), file=out, flush=True)
    return docs


def tasks_line(stack) -> str:
    """Each queue's deliveries so far, by the worker's answer, e.g. "rbm-calls 12 deliveries (200 ×12)"."""
    parts = []
    for queue in QUEUES.values():
        answers = Counter(str(d["status"] or "no answer") for d in stack.tasks.dispatches(queue))
        shown = ", ".join(f"{status} ×{n}" for status, n in sorted(answers.items())) or "none"
        parts.append(f"{queue.rsplit('/', 1)[1]} {answers.total()} deliveries ({shown})")
    return "; ".join(parts)


def run(stack, population: int = 12, deadline: int = 20, timeout: float = 100.0, out=sys.stdout) -> bool:
    """The demo: launch, watch, then the table, the timings and the verdict."""
    planned = plan(population)
    launch(stack, planned, deadline)
    docs = watch(stack, planned, timeout, out)
    delivered = summary(docs, ("send→delivered",))
    print(f"\n{table(planned, docs)}\n\ntimings (s), scheduler period {stack.period:g} s: {delivered}", file=out)
    print(f"Cloud Tasks: {tasks_line(stack)}", file=out)
    found = problems(stack, planned, docs)
    events = events_of(docs, timeout=0)
    print("\noutcomes, from the events on rbm-outcomes alone:", file=out)
    print("\n".join(outcome_line(p, events[p.message_id]) for p in planned), file=out)
    print(verdict(found, docs), file=out, flush=True)
    return not found
