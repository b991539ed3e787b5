"""Scale: N messages sharing one deadline, revoked and texted by 1, 2 and 4 worker processes.

For each number of workers: N messages are seeded straight into Firestore
(batched writes of 500) as sent, with a fallback SMS, and a deadline that has
just passed; each is queued at the fake RBM so its revoke answers 200. The
fake RBM and the fake Twilio answer every call after `--latency` seconds. Then
the scheduler starts (revoke_expired and send_fallbacks every `--period`
seconds with SCHEDULE_PERIOD_SECONDS = the period and a work topic), and the
clock runs from its first tick until the fake Twilio has received the last
SMS. Each worker is a process_due_work process with SWEEP_PARALLELISM=P (at
most P calls in flight) taking at most `--concurrency` pushed items at once;
the pushes come from local.pusher.Pusher (the emulator pushes 2 at a time).

Every message takes two slow calls (the revoke and the SMS), so the ideal
rate is workers × P ÷ latency calls per second, i.e. half that in messages;
the grace window (REVOKE_GRACE_SECONDS) adds a fixed wait the ideal ignores.

    python -m bench.scale [--messages 20000] [--workers 1,2,4] [--parallelism 16] [--latency 0.1] [--period 60]
"""

import argparse
import contextlib
import json
import math
import os
import time
from email.message import Message as Headers

from bench.common import PROJECT, CpuMeter, Run, check, http_session, load_average, seed, table
from bench.flows import AGENT, TWILIO_SID, TWILIO_TOKEN, WORKER_CONCURRENCY, schedule, start_flow
from bench.sweeps import due
from local.fake_rbm import FakeRbm
from local.fake_sms import FakeTwilio
from local.fakehttp import Request
from local.processes import reset_firestore


def queue(rbm: FakeRbm, messages, latency: float) -> None:
    """Has the fake platform accept each message (its own create handler, without
    the socket), so a revoke answers 200; then every call for its phone is slow."""
    for m in messages:
        body = json.dumps({"contentMessage": m.content}).encode()
        status = rbm.handle(
            Request(
                "POST",
                f"/v1/phones/{m.phone}/agentMessages",
                {"messageId": m.message_id, "agentId": AGENT},
                Headers(),
                body,
            )
        )[0]
        if status != 200:
            raise RuntimeError(f"the fake refused a create: {status}")
        rbm.set_phone(m.phone, "slow", delay=latency)


def warm(workers) -> None:
    """One push with no work item to each worker: it imports its modules and acknowledges."""
    envelope = {
        "message": {"data": "", "messageId": "warm-up", "publishTime": "2026-01-01T00:00:00Z"},
        "subscription": f"projects/{PROJECT}/subscriptions/warm-up",
    }
    for worker in workers:
        http_session.post(
            f"{worker.url}/projects/{PROJECT}/topics/warm-up", json=envelope, timeout=60
        ).raise_for_status()


def wait_done(twilio: FakeTwilio, count: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if twilio.count() >= count:
            return True
        time.sleep(0.5)
    return False


def one(run: Run, host: str, rbm: FakeRbm, twilio: FakeTwilio, workers: int, args) -> dict:
    """N messages revoked and texted by `workers` worker processes; what it took."""
    reset_firestore(host, PROJECT)
    rbm.reset()
    twilio.reset()
    twilio.set_delay(args.latency)
    with contextlib.ExitStack() as stack:
        settings = {"SWEEP_PARALLELISM": str(args.parallelism), "REVOKE_GRACE_SECONDS": f"{args.grace:g}"}
        flow = start_flow(
            run,
            "dispatch",
            rbm.url,
            twilio.url,
            args.period,
            workers=workers,
            concurrency=args.concurrency,
            settings=settings,
            functions=("revoke_expired", "send_fallbacks"),
            tag=f"-w{workers}",
            stack=stack,
        )
        os.environ["RBM_MESSAGES_COLLECTION"] = flow.collection  # where seed() writes
        messages = due(f"w{workers}", args.messages)
        seeding = seed(messages)
        queue(rbm, messages, args.latency)
        warm(flow.workers)
        print(f"{workers} worker(s): seeded {args.messages:,} in {seeding:.1f} s; scheduler starts", flush=True)
        groups = {f"worker{i}": w.pid for i, w in enumerate(flow.workers)}
        groups |= {
            "firestore": run.emulators["firestore"].pid,
            "pubsub": run.emulators["pubsub"].pid,
            "revoke_expired": flow.functions["revoke_expired"].pid,
            "send_fallbacks": flow.functions["send_fallbacks"].pid,
        }
        with CpuMeter(**groups) as cpu:
            started = time.time()
            schedule(stack, [flow], args.period)
            done = wait_done(twilio, args.messages, args.timeout)
        sent = twilio.sent
        finished = max((s["time"] for s in sent), default=time.time())
        phones = {s["to"] for s in sent}
        result = {
            "workers": workers,
            "done": done,
            "seconds": round(finished - started, 2),
            "seeding_s": round(seeding, 2),
            "revoked": rbm.count("revoke", status=200),
            "revoke_calls": rbm.count("revoke"),
            "sms": len(sent),
            "sms_phones": len(phones),
            "pushed": flow.pusher.delivered,
            "push_failed": flow.pusher.failed,
            "cpu_seconds": cpu.seconds,
            "wall": cpu.wall,
        }
    cores = {k: v / cpu.wall for k, v in cpu.seconds.items()}
    result["cores"] = {
        "workers": sum(v for k, v in cores.items() if k.startswith("worker")),
        "firestore": cores["firestore"],
        "pubsub": cores["pubsub"],
        "runs": cores["revoke_expired"] + cores["send_fallbacks"],
        "bench": cores["bench"],
    }
    result["cores"]["total"] = sum(result["cores"].values())
    print(f"{workers} worker(s): {result['seconds']:.1f} s, cores busy {result['cores']['total']:.2f}", flush=True)
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000, help="messages sharing one deadline (20,000)")
    parser.add_argument("--workers", default="1,2,4", help="numbers of worker processes, comma-separated (1,2,4)")
    parser.add_argument("--parallelism", type=int, default=16, help="SWEEP_PARALLELISM of each worker (16)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=WORKER_CONCURRENCY,
        help=f"pushed items at once per worker (deployed: {WORKER_CONCURRENCY})",
    )
    parser.add_argument("--latency", type=float, default=0.1, help="seconds each fake RBM / Twilio call takes (0.1)")
    parser.add_argument("--grace", type=float, default=5.0, help="REVOKE_GRACE_SECONDS (5, the default)")
    parser.add_argument("--period", type=float, default=60.0, help="scheduler period, seconds (60)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="give each size at most this long (1800 s)")
    args = parser.parse_args(argv)
    counts = [int(w) for w in args.workers.split(",")]
    load_before = load_average()

    with Run("scale") as run:
        run.emulator("pubsub")
        host = run.emulator("firestore")
        rbm = run.enter_context(FakeRbm())
        twilio = run.enter_context(FakeTwilio(TWILIO_SID, TWILIO_TOKEN))
        results = [one(run, host, rbm, twilio, w, args) for w in counts]
        loads = {"before": load_before, "after": load_average()}

    print(f"\nmachine load average before/after: {loads['before']:.2f}/{loads['after']:.2f} ({os.cpu_count()} CPUs)")
    rows, verdicts = [], {}
    for i, r in enumerate(results):
        calls = 2 * args.messages / r["seconds"]
        ideal = r["workers"] * args.parallelism / args.latency
        r |= {
            "messages_per_s": args.messages / r["seconds"],
            "calls_per_s": calls,
            "ideal_calls_per_s": ideal,
            "of_ideal": calls / ideal,
        }
        speedup = results[i - 1]["seconds"] / r["seconds"] if i else None
        factor = r["workers"] / results[i - 1]["workers"] if i else None
        r["speedup"] = speedup
        c = r["cores"]
        rows.append(
            [
                r["workers"],
                r["seconds"],
                r["messages_per_s"],
                calls,
                ideal,
                f"{r['of_ideal']:.2f}x",
                f"{speedup:.2f}x" if speedup else "-",
                "/".join(f"{c[k]:.2f}" for k in ("workers", "firestore", "pubsub", "runs", "bench"))
                + f" = {c['total']:.2f}",
                f"{r['revoked']}/{r['sms_phones']}/{r['sms'] - r['sms_phones']}",
                r["pushed"],
            ]
        )
        verdicts[f"{r['workers']} worker(s), of the ideal"] = check(r["of_ideal"], 0.7, at_least=True)
        if speedup:
            verdicts[f"{results[i - 1]['workers']} → {r['workers']} workers ({factor:g}×), speed-up"] = check(
                speedup, round(1.6 ** math.log2(factor), 2), at_least=True
            )
    table(
        f"{args.messages:,} messages sharing one deadline, revoked and texted; SWEEP_PARALLELISM={args.parallelism}, "
        f"fakes answer in {args.latency * 1000:g} ms, grace {args.grace:g} s, scheduler period {args.period:g} s",
        [
            "workers",
            "seconds",
            "msgs/s",
            "calls/s",
            "ideal calls/s",
            "of ideal",
            "speed-up",
            "cores: workers/firestore/pubsub/runs/bench = total",
            "revoked/texted/dup SMS",
            "items pushed",
        ],
        rows,
    )
    table("Against the targets", ["measure", "result"], [[k, v] for k, v in verdicts.items()])
    print(f"\ncores available: {os.cpu_count()}; where the total nears it, the machine, not the design, sets the pace")
    run.save({"args": vars(args), "results": results, "load_average": loads, "verdicts": verdicts})


if __name__ == "__main__":
    main()
