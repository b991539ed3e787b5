"""Rate = quota, and scale: N messages sharing one deadline, drained through the rate-limited queues.

N messages are seeded straight into Firestore (batched writes of 500) as sent,
each with an SMS fallback, all with the same deadline; each is accepted by
the fake RBM first (through its own create handler, without the socket), so
its revoke answers 200. Their revoke timers are set as the relay sets them
after a commit (functions.timers.schedule_all: one Cloud Tasks task per
message at its deadline) on the paused `rbm-calls` queue; the clock starts
when both queues are resumed, with the deadline just passed: a backlog of N
due revokes. Each revoke answered 200 makes the SMS due REVOKE_GRACE_SECONDS
later (a task on `sms-sends`). The scheduler calls the safety-net passes every
`--period` seconds meanwhile. The queues have the retry settings of
infra/topology.json and the dispatch rates `--rbm-rate` / `--sms-rate`; the
fake RBM and the fake Twilio answer every call after `--latency` seconds. One
process_due_work server, `--worker-processes` gunicorn workers of the
deployed concurrency, stands for the worker's instances.

Measured from outside, where the calls land: revokes per second at the fake
RBM and SMS per second at the fake Twilio, the most in any one-second window
(target ≤ rate × 1.1) and the mean from the first call to the last (target ≥
0.9 × rate); the time from the start to the last SMS against the ideal
(grace + N ÷ the slower rate, the revokes running ahead); revoked, texted,
duplicate SMS; Cloud Tasks operations and deliveries per message; the CPU
each part used, as cores busy.

    python -m bench.scale [--messages 4000] [--rbm-rate 20] [--sms-rate 10] [--latency 0.1] [--grace 5]
"""

import argparse
import json
import os
import time
from email.message import Message as Headers

from bench.common import CpuMeter, Run, http_session, load_average, seed, table
from bench.flows import AGENT, TASKS_VARS, TWILIO_SID, TWILIO_TOKEN, WORKER_CONCURRENCY, schedule, start_flow
from bench.sweeps import due
from local.fake_rbm import FakeRbm
from local.fake_sms import FakeTwilio
from local.fake_tasks import FakeTasks, max_in_window
from local.fakehttp import Request

OVER, UNDER = 1.1, 0.9  # the bounds: never above rate × 1.1 in a second, a backlog drained at ≥ 0.9 × rate


def accept_at(rbm: FakeRbm, messages, latency: float) -> None:
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


def arm(flow, messages) -> float:
    """Sets each message's revoke timer as a commit does (timers.schedule_all), from this
    process with the flow's settings; answers the seconds it took."""
    from functions import timers

    os.environ.update({k: v for k, v in flow.env.items() if k in TASKS_VARS})
    started = time.monotonic()
    timers.schedule_all([(None, m) for m in messages])
    return time.monotonic() - started


def queue_state(tasks_url: str, queue: str, verb: str) -> None:
    http_session.post(f"{tasks_url}/v2/{queue}:{verb}", json={}, timeout=10).raise_for_status()


def rates(times: list[float]) -> dict:
    """Calls landing at `times`: how many, the most in any one-second window, the mean
    per second from the first to the last, and when they began and ended."""
    times = sorted(times)
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    return {
        "calls": len(times),
        "max_1s": max_in_window(times, 1.0),
        "mean_per_s": (len(times) - 1) / span if span else 0.0,
        "first": times[0] if times else None,
        "last": times[-1] if times else None,
    }


def wait_done(twilio: FakeTwilio, count: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if twilio.count() >= count:
            return True
        time.sleep(0.5)
    return False


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=4_000, help="messages sharing one deadline (4,000)")
    parser.add_argument("--rbm-rate", type=float, default=20.0, help="max_dispatches_per_second of rbm-calls (20)")
    parser.add_argument("--sms-rate", type=float, default=10.0, help="max_dispatches_per_second of sms-sends (10)")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds each fake RBM / Twilio call takes (0.1)")
    parser.add_argument("--grace", type=float, default=5.0, help="REVOKE_GRACE_SECONDS (5, the default)")
    parser.add_argument("--period", type=float, default=60.0, help="scheduler period, seconds (60)")
    parser.add_argument("--worker-processes", type=int, default=2, help="gunicorn workers of process_due_work (2)")
    parser.add_argument(
        "--concurrency", type=int, default=WORKER_CONCURRENCY, help=f"threads per worker ({WORKER_CONCURRENCY})"
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="give the drain at most this long (1800 s)")
    args = parser.parse_args(argv)
    load_before = load_average()

    with Run("scale") as run:
        run.emulator("pubsub")
        run.emulator("firestore")
        rbm = run.enter_context(FakeRbm())
        twilio = run.enter_context(FakeTwilio(TWILIO_SID, TWILIO_TOKEN))
        twilio.set_delay(args.latency)
        tasks = run.enter_context(FakeTasks())
        flow = start_flow(
            run,
            "after",
            rbm.url,
            twilio.url,
            args.period,
            tasks_url=tasks.url,
            rates={"rbm": args.rbm_rate, "sms": args.sms_rate},
            concurrency=args.concurrency,
            worker_processes=args.worker_processes,
            settings={"REVOKE_GRACE_SECONDS": f"{args.grace:g}"},
            functions=("revoke_expired", "send_fallbacks"),
        )
        for queue in flow.queues.values():
            queue_state(tasks.url, queue, "pause")
        os.environ["RBM_MESSAGES_COLLECTION"] = flow.collection  # where seed() writes
        messages = due("s", args.messages)
        seeding = seed(messages)
        accept_at(rbm, messages, args.latency)
        arming = arm(flow, messages)
        operations_before = tasks.operations()
        print(
            f"seeded {args.messages:,} in {seeding:.1f} s, their timers set in {arming:.1f} s; "
            f"queues resume at {args.rbm_rate:g} / {args.sms_rate:g} per second",
            flush=True,
        )
        groups = {
            "worker": flow.workers[0].pid,
            "firestore": run.emulators["firestore"].pid,
            "pubsub": run.emulators["pubsub"].pid,
            "revoke_expired": flow.functions["revoke_expired"].pid,
            "send_fallbacks": flow.functions["send_fallbacks"].pid,
        }
        with CpuMeter(**groups) as cpu:
            started = time.time()
            for queue in flow.queues.values():
                queue_state(tasks.url, queue, "resume")
            scheduler = schedule(run, [flow], args.period, at_once=False)
            done = wait_done(twilio, args.messages, args.timeout)
            time.sleep(3.0)  # a duplicate would come now
        scheduler.stop()
        sent = twilio.sent
        revokes = [r["time"] for r in rbm.requests if r["kind"] == "revoke"]
        result = {
            "done": done,
            "seconds": max((s["time"] for s in sent), default=time.time()) - started,
            "seeding_s": seeding,
            "arming_s": arming,
            "revoked": rbm.count("revoke", status=200),
            "rbm": rates(revokes),
            "sms": rates(twilio.received_at),
            "dispatched": {k: rates(tasks.dispatch_times(q)) for k, q in flow.queues.items()},
            "texted": len({s["to"] for s in sent}),
            "sms_sent": len(sent),
            "tasks_operations": tasks.operations() - operations_before,
            "arming_operations": operations_before,
            "deliveries": {k: len(tasks.dispatches(q)) for k, q in flow.queues.items()},
            "max_running": {k: tasks.max_running(q) for k, q in flow.queues.items()},
            "scheduled_answers": [e.status for e in scheduler.executions],
            "cpu_seconds": cpu.seconds,
            "cores": cpu.cores,
        }
        loads = {"before": load_before, "after": load_average()}

    n = args.messages
    ideal = args.grace + n / min(args.rbm_rate, args.sms_rate)
    result["ideal_seconds"] = ideal
    print(f"\nmachine load average before/after: {loads['before']:.2f}/{loads['after']:.2f} ({os.cpu_count()} CPUs)")
    rows = []
    verdicts = {}
    for key, rate in (("rbm", args.rbm_rate), ("sms", args.sms_rate)):
        r = result[key]
        d = result["dispatched"][key]
        rows.append(
            [
                key,
                rate,
                r["calls"],
                r["max_1s"],
                r["mean_per_s"],
                f"{r['mean_per_s'] / rate:.2f}x",
                f"{d['calls']} / {d['max_1s']} / {d['mean_per_s']:.1f}",
            ]
        )
        verdicts[f"{key}: most calls in one second"] = (
            f"{r['max_1s']} (target <= {rate * OVER:g}) {'ok' if r['max_1s'] <= rate * OVER else 'MISSED'}"
        )
        verdicts[f"{key}: mean while draining"] = (
            f"{r['mean_per_s']:.1f}/s = {r['mean_per_s'] / rate:.2f}x (target >= {UNDER}x) "
            + ("ok" if r["mean_per_s"] >= UNDER * rate else "MISSED")
        )
    table(
        f"{n:,} messages sharing one deadline; fakes answer in {args.latency * 1000:g} ms, grace {args.grace:g} s",
        [
            "calls",
            "configured rate/s",
            "calls",
            "most in 1 s",
            "mean/s",
            "mean ÷ rate",
            "queue's deliveries / most in 1 s / mean/s",
        ],
        rows,
    )
    dup = result["sms_sent"] - result["texted"]
    verdicts["revoked / texted / duplicate SMS"] = f"{result['revoked']:,} / {result['texted']:,} / {dup}" + (
        " ok" if result["revoked"] == n and result["texted"] == n and dup == 0 else " MISSED"
    )
    verdicts["time, start → last SMS"] = (
        f"{result['seconds']:.1f} s; ideal grace + N ÷ slower rate = {ideal:.1f} s ({result['seconds'] / ideal:.2f}x)"
    )
    verdicts["Cloud Tasks operations per message"] = (
        f"{(result['tasks_operations'] + result['arming_operations']) / n:.2f} "
        f"(deliveries: {', '.join(f'{k} {v / n:.2f}' for k, v in result['deliveries'].items())})"
    )
    cores = result["cores"]
    verdicts["cores busy"] = " / ".join(f"{k} {v:.2f}" for k, v in cores.items()) + f" = {sum(cores.values()):.2f}"
    table("Against the targets", ["measure", "result"], [[k, v] for k, v in verdicts.items()])
    print(f"\ncores available: {os.cpu_count()}; where the total nears it, the machine, not the design, sets the pace")
    run.save({"args": vars(args), "result": result, "load_average": loads, "verdicts": verdicts})


if __name__ == "__main__":
    main()
