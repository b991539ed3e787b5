"""Campaign sends: N messages as one send_batch vs N send_message calls from a
16-thread client, side by side in one run, on the emulators with the real
function processes, the fake RBM platform and the fake Cloud Tasks.

The batch's creates go through the RBM queue (its rate: `--rate`, the agent's
quota) to process_due_work; send_message calls RBM itself, as fast as its
callers go. A share of the numbers has no RCS (`--no-rcs`); the batch runs
twice, without and with the users.batchGet pre-check (whose cache answers
wrong for `--stale` of the numbers), to measure the creates and seconds the
pre-check saves. Per run: request → answer (s), creates/s (the most in any
one-second window, and the mean), seconds until all were created, accepted
creates per message (duplicates must be 0).

    python -m bench.batch [--messages 10000] [--rate 50] [--threads 16] [--no-rcs 0.2] [--stale 0.05]
"""

import argparse
import json
import time
import uuid
from collections import Counter

from bench.common import PROJECT, Run, http_session, post_load, table
from local.fake_rbm import FakeRbm
from local.fake_tasks import FakeTasks, max_in_window
from local.processes import create_topic

AGENT = "bench@rbm.goog"
QUEUE = f"projects/{PROJECT}/locations/us-central1/queues/rbm-calls"
CONTENT = {"text": "Your appointment is tomorrow at 10:00"}
FALLBACK = {"text": "Appointment tomorrow 10:00"}
# Firestore writes per message, by path (functions/, counted from the code, not measured):
# send_message: the PENDING record, the accepted create (+ its SENT outcome event's outbox document);
# a batch message: its bulk create, its release, the queue task's claim, the accepted create (+ the
# outbox document); one the pre-check found unreachable: its bulk create and its release (+ its
# UNREACHABLE outbox document).
WRITES = {"send_message": 2 + 1, "batch": 4 + 1, "batch, unreachable by pre-check": 2 + 1}


def phone(run: int, i: int) -> str:
    return f"+447{run}{i:08d}"


def creates(rbm: FakeRbm, phones: set[str]) -> list[dict]:
    return [r for r in rbm.requests if r["kind"] == "create" and r["phone"] in phones]


def figures(name: str, answered: float, calls: list[dict], started: float, messages: int) -> dict:
    """A run's figures from the creates RBM received for it."""
    times = sorted(r["time"] for r in calls)
    accepted = Counter(r["message_id"] for r in calls if r["status"] == 200)
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    return {
        "run": name,
        "messages": messages,
        "answered_s": round(answered, 2),
        "creates": len(calls),
        "creates_per_s_max_1s": max_in_window(times) if times else 0,
        "creates_per_s_mean": round(len(times) / span, 1) if span else None,
        "all_created_s": round(times[-1] - started, 1) if times else None,
        "duplicates": sum(n - 1 for n in accepted.values() if n > 1),
    }


def wait_created(batch_id: str, timeout: float) -> None:
    """Until no message of the batch is PENDING (each created, or unreachable)."""
    from google.cloud.firestore_v1.base_query import FieldFilter

    from functions import store

    query = (
        store.messages()
        .where(filter=FieldFilter("batch_id", "==", batch_id))
        .where(filter=FieldFilter("state", "==", "PENDING"))
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = int(query.count().get()[0][0].value)
        print(f"\r  {batch_id}: {left} PENDING ", end="", flush=True)
        if not left:
            print()
            return
        time.sleep(1)
    raise TimeoutError(f"{batch_id}: still PENDING after {timeout} s")


def batch_run(url: str, rbm: FakeRbm, run: int, count: int, precheck: bool, timeout: float) -> dict:
    batch_id = f"bench-{run}-{uuid.uuid4().hex[:6]}"
    body = {
        "batch_id": batch_id,
        "defaults": {"content": CONTENT, "fallback": FALLBACK, "revoke_after_seconds": 3600},
        "messages": [{"phone": phone(run, i)} for i in range(count)],
        "precheck": precheck,
    }
    started = time.time()
    response = http_session.post(url, data=json.dumps(body), headers={"Content-Type": "application/json"}, timeout=300)
    answered = time.time() - started
    assert response.status_code == 202, response.text
    wait_created(batch_id, timeout)
    name = "send_batch" + (" + pre-check" if precheck else "")
    result = figures(name, answered, creates(rbm, {phone(run, i) for i in range(count)}), started, count)
    return result | {"unreachable_by_precheck": response.json().get("unreachable", 0)}


def single_run(url: str, rbm: FakeRbm, run: int, count: int, threads: int) -> dict:
    bodies = [
        (
            json.dumps(
                {"phone": phone(run, i), "content": CONTENT, "fallback": FALLBACK, "revoke_after_seconds": 3600}
            ).encode(),
            {"Content-Type": "application/json"},
        )
        for i in range(count)
    ]
    started = time.time()
    load = post_load(url, bodies, threads, total=count)
    calls = creates(rbm, {phone(run, i) for i in range(count)})
    return figures(f"send_message x{threads} threads", load.seconds, calls, started, count) | {"errors": load.errors}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.batch", description=__doc__)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=50.0, help="the RBM queue's max_dispatches_per_second")
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--no-rcs", type=float, default=0.2, help="share of numbers without RCS")
    parser.add_argument("--stale", type=float, default=0.05, help="share of numbers users.batchGet answers wrong")
    args = parser.parse_args(argv)
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import tasks_v2

    with Run("batch") as run:
        run.emulator("firestore")
        run.emulator("pubsub")
        create_topic(PROJECT, "rbm-outcomes")
        rbm, tasks = run.enter_context(FakeRbm()), run.enter_context(FakeTasks())
        rbm.stale_share(args.stale, seed=1)
        step = round(1 / args.no_rcs) if args.no_rcs else 0
        for r in (1, 2, 3):  # the same numbers of each run (every step-th) have no RCS
            for i in range(0, args.messages if step else 0, step or 1):
                rbm.set_phone(phone(r, i), "not_rcs")
        client = tasks_v2.CloudTasksClient(
            transport="rest", credentials=AnonymousCredentials(), client_options={"api_endpoint": tasks.url}
        )
        limits = tasks_v2.RateLimits(max_dispatches_per_second=args.rate, max_concurrent_dispatches=200)
        client.create_queue(parent=QUEUE.rsplit("/queues/", 1)[0], queue=tasks_v2.Queue(name=QUEUE, rate_limits=limits))
        env = {"RBM_API_ENDPOINT": rbm.url, "RBM_AGENT_ID": AGENT, "CONVERSATION_ID_KEY": "bench-key"}
        worker = run.function("process_due_work", env=env)
        queued = {
            "RBM_TASKS_QUEUE": QUEUE,
            "CLOUD_TASKS_ENDPOINT": tasks.url,
            "WORKER_URL": worker.url,
            "TASKS_SERVICE_ACCOUNT": "tasks@bench.iam.gserviceaccount.com",
        }
        sender = run.function("send_batch", env={**env, **queued})
        single = run.function("send_message", env={**env, **queued})
        for process in (sender, single):  # imports and clients loaded: no cold start in the figures
            http_session.post(process.url, json={}, timeout=60)
        timeout = args.messages / args.rate * 3 + 120
        results = [
            batch_run(sender.url, rbm, 1, args.messages, False, timeout),
            batch_run(sender.url, rbm, 2, args.messages, True, timeout),
            single_run(single.url, rbm, 3, args.messages, args.threads),
        ]
        header = list(results[0])
        table(
            f"{args.messages:,} messages, RBM queue at {args.rate:g}/s, {args.no_rcs:.0%} without RCS",
            header,
            [[r.get(h) for h in header] for r in results],
        )
        plain, checked = results[0], results[1]
        saved = {
            "creates": plain["creates"] - checked["creates"],
            "seconds": round((plain["all_created_s"] or 0) - (checked["all_created_s"] or 0), 1),
        }
        print(f"\npre-check saved {saved['creates']:,} creates and {saved['seconds']} s until all were created")
        print(f"Firestore writes per message (from the code paths): {WRITES}")
        run.save({"args": vars(args), "results": results, "precheck_saved": saved, "writes_per_message": WRITES})


if __name__ == "__main__":
    main()
