"""Cost: Firestore reads and writes, Pub/Sub publishes, Cloud Tasks operations and
function invocations per message over its whole life, counted (not timed), the
engine before (BASELINE: polling runs, a work topic) beside the engine after
(Cloud Tasks timers).

Both flows of bench/flows.py run side by side (each its own collection, RBM
simulator and processes), every function served from its checkout's
bench/counted.py, which counts the calls the functions make through Google's
clients. Cloud Tasks operations (API calls and deliveries, as the service
bills them) are the fake's own count. Three journeys, one after the other,
`--messages` messages each:

- never online: send → deadline → revoke (200) → SMS;
- online: send → DELIVERED receipt (the simulator's signed webhook →
  receive_webhook → events topic → track_delivery);
- no RCS: send (404) → SMS.

A journey's figures are what every process of the flow counted from the first
send until every message reached its fate and one more scheduler period
passed, divided by the messages. Queries that return nothing are the
scheduled runs polling (one read each, whatever the traffic): they are kept
out of the per-message reads and reported per hour instead, with the
scheduled invocations.

    python -m bench.cost [--messages 20] [--period 60] [--deadline 10]
"""

import argparse
import shutil
import time
import uuid

from bench.common import Run, table
from bench.counted import totals
from bench.flows import CLIENT_TOKEN, KINDS, TWILIO_SID, TWILIO_TOKEN, baseline, schedule, send, start_flow
from local.fake_sms import FakeTwilio
from local.fake_tasks import FakeTasks
from local.processes import REPO_ROOT
from local.simulator import Simulator

JOURNEYS = {  # journey → (simulated device, the fate that ends it: state, fallback)
    "never online": ("offline", ("REVOKED", "SENT")),
    "online": ("online", ("DELIVERED", "CANCELLED")),
    "no RCS": ("not_rcs", ("UNREACHABLE", "SENT")),
}
MEASURES = (
    "firestore_reads",
    "firestore_writes",
    "firestore_commits",
    "firestore_lookups",
    "firestore_queries",
    "pubsub_messages",
    "pubsub_publish_requests",
    "tasks_operations",
)
PER_MESSAGE_INVOCATIONS = ("send_message", "receive_webhook", "track_delivery", "process_due_work")


def settled(collection: str, ids: list[str], fate: tuple[str, str]) -> bool:
    from functions import store

    refs = [store.client().collection(collection).document(i) for i in ids]
    return all(s.exists and (s.get("state"), s.get("fallback")) == fate for s in store.client().get_all(refs))


def journey(flows, sims, folders, tasks, name: str, count: int, deadline: int, period: float, first: int) -> dict:
    """One journey in both flows at once; each flow's counts for it."""
    device, fate = JOURNEYS[name]
    before = {kind: totals(folders[kind]) for kind in KINDS}
    operations = tasks.operations()
    started = time.monotonic()
    ids = {kind: [] for kind in KINDS}
    for i in range(count):
        for f, kind in enumerate(KINDS):
            phone = f"+4478{f}{first + i:07d}"
            sims[kind].add_device(phone, device)
            ids[kind].append(message_id := str(uuid.uuid4()))
            send(flows[kind].functions["send_message"].url, phone, message_id, deadline)
    timeout = started + deadline + 3 * period + 120
    while time.monotonic() < timeout and not all(settled(flows[k].collection, ids[k], fate) for k in KINDS):
        time.sleep(1.0)
    done = {kind: settled(flows[kind].collection, ids[kind], fate) for kind in KINDS}
    time.sleep(period + 2)  # whatever still trails the fate (a redundant item, a late poll) is counted too
    elapsed = time.monotonic() - started
    result = {}
    for kind in KINDS:
        counted = totals(folders[kind])
        counted.subtract(before[kind])
        if kind == "after":
            counted["tasks_operations"] = tasks.operations() - operations
        result[kind] = {"done": done[kind], "seconds": round(elapsed, 1), "counts": dict(counted)}
    print(
        f"{name}: {count} messages per flow in {elapsed:.0f} s, fates {'met' if all(done.values()) else 'NOT all met'}",
        flush=True,
    )
    return result


def per_message(counts: dict, messages: int) -> dict:
    """The counts of a journey per message, polling (empty queries) left out."""
    figures = {m: counts.get(m, 0) for m in MEASURES}
    figures["firestore_reads"] -= counts.get("firestore_empty_queries", 0)
    figures["firestore_queries"] -= counts.get("firestore_empty_queries", 0)
    figures["invocations"] = sum(counts.get(f"invocations.{e}", 0) for e in PER_MESSAGE_INVOCATIONS)
    return {k: v / messages for k, v in figures.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20, help="messages per journey and flow (20)")
    parser.add_argument(
        "--period",
        type=float,
        default=60.0,
        help="scheduler period, seconds (60, as in production)",
    )
    parser.add_argument(
        "--deadline", type=int, default=10, help="revoke_after_seconds (10, the least send_message takes)"
    )
    parser.add_argument("--grace", type=float, default=5.0, help="REVOKE_GRACE_SECONDS (5, the default)")
    args = parser.parse_args(argv)

    with baseline() as checkout, Run("cost") as run:
        run.emulator("pubsub")
        run.emulator("firestore")
        twilio = run.enter_context(FakeTwilio(TWILIO_SID, TWILIO_TOKEN))
        tasks = run.enter_context(FakeTasks())
        folders, sims, flows = {}, {}, {}
        for kind in KINDS:
            folders[kind] = run.logs / f"counts-{kind}"
            shutil.rmtree(folders[kind], ignore_errors=True)
            folders[kind].mkdir()
            sims[kind] = run.enter_context(Simulator("http://127.0.0.1:9", CLIENT_TOKEN, agent_id="bench@rbm.goog"))
            flows[kind] = start_flow(
                run,
                kind,
                sims[kind].url,
                twilio.url,
                args.period,
                checkout=checkout if kind == "before" else REPO_ROOT,
                tasks_url=tasks.url,
                source="bench/counted.py",
                events=True,
                settings={"BENCH_COUNTS_DIR": str(folders[kind]), "REVOKE_GRACE_SECONDS": f"{args.grace:g}"},
            )
            sims[kind].webhook_url = flows[kind].functions["receive_webhook"].url
            if not sims[kind].register_webhook():
                raise RuntimeError("the webhook handshake failed")
        started = time.monotonic()
        schedule(run, list(flows.values()), args.period)
        results = {
            name: journey(flows, sims, folders, tasks, name, args.messages, args.deadline, args.period, 1000 * j)
            for j, name in enumerate(JOURNEYS)
        }
        elapsed = time.monotonic() - started
        whole = {kind: totals(folders[kind]) for kind in KINDS}

    rows = []
    for name, result in results.items():
        for kind in KINDS:
            f = per_message(result[kind]["counts"], args.messages)
            rows.append(
                [
                    name,
                    kind,
                    f["firestore_reads"],
                    f["firestore_writes"],
                    f["firestore_commits"],
                    f["firestore_lookups"],
                    f["firestore_queries"],
                    f["pubsub_messages"],
                    f["pubsub_publish_requests"],
                    f["tasks_operations"],
                    f["invocations"],
                ]
            )
            result[kind]["per_message"] = f
    table(
        f"Per message over its life ({args.messages} messages per journey and flow; grace {args.grace:g} s)",
        [
            "journey",
            "flow",
            "FS reads",
            "FS writes",
            "commits",
            "lookups",
            "queries (with results)",
            "Pub/Sub msgs",
            "publish calls",
            "Cloud Tasks ops",
            "invocations",
        ],
        rows,
    )
    idle = {}
    for kind in KINDS:
        idle[kind] = {
            "empty_queries_per_hour": whole[kind].get("firestore_empty_queries", 0) / elapsed * 3600,
            "scheduled_invocations_per_hour": sum(
                whole[kind].get(f"invocations.{e}", 0) for e in ("revoke_expired", "send_fallbacks")
            )
            / elapsed
            * 3600,
        }
    table(
        f"Whatever the traffic, at a scheduler period of {args.period:g} s (production: 60 s)",
        ["flow", "empty polls (1 read each) per hour", "scheduled invocations per hour"],
        [[k, v["empty_queries_per_hour"], v["scheduled_invocations_per_hour"]] for k, v in idle.items()],
    )
    print(
        "\nEmpty polls: before, the runs poll every second for their whole period, so about 2 × 3,600 an hour "
        "whatever the period; after, each safety-net pass looks once, 2 × 3,600 ÷ period an hour."
    )
    run.save({"args": vars(args), "journeys": results, "idle": idle, "totals": {k: dict(v) for k, v in whole.items()}})


if __name__ == "__main__":
    main()
