"""Idle cost: instance-seconds spent inside requests while nothing is due, before → after.

Both engines of bench/flows.py run side by side at production settings
(the scheduler period of 60 s, the deployed threads), each with revoke_expired,
send_fallbacks and its process_due_work worker, over their own empty
collections: `before` (the BASELINE checkout: each run polls every second
until just before the next tick, a work topic) and `after` (one short
safety-net pass per period, Cloud Tasks queues). local.scheduler.Scheduler
calls the scheduled functions on the grid, as Cloud Scheduler does.

Request time is taken from outside for the scheduled functions: each
scheduler call's HTTP request, from the moment it began to its answer; for the
worker, each delivery (Cloud Tasks dispatches after, Pusher deliveries before:
none while idle, counted to show it) as its process recorded it
(local/request_times.py). The window runs from the first tick of the grid after start-up (the
first calls, at start-up, warm every process) for `--minutes`; a call's time is
counted up to the window's end. Per hour = seconds in the window ÷ its length
× 3,600, per function.

Monthly cost at idle, Cloud Run functions' request-based prices (1 vCPU and
0.5 GiB per instance, as deployed): instance-seconds × ($0.000024 per vCPU-s
+ 0.5 × $0.0000025 per GiB-s) + invocations × $0.40 per million, over a 30-day
month, free tier left out. Each request's time is also given rounded up to
100 ms (the `billed` columns), the granularity Cloud Run bills in.

    python -m bench.idle [--minutes 5] [--period 60]
"""

import argparse
import math
import os
import time

from bench.common import Run, load_average, table
from bench.flows import KINDS, TWILIO_SID, TWILIO_TOKEN, baseline, schedule, start_flow
from local import request_times
from local.fake_rbm import FakeRbm
from local.fake_sms import FakeTwilio
from local.fake_tasks import FakeTasks
from local.processes import REPO_ROOT

VCPU_SECOND, GIB_SECOND, PER_INVOCATION = 0.000024, 0.0000025, 0.40 / 1e6  # USD, request-based billing
VCPU, GIB = 1, 0.5  # each instance as deployed (infra/functions.json)
MONTH_HOURS = 30 * 24
TARGET_PER_HOUR = 60.0  # the target: the functions together, instance-seconds per idle hour
SCHEDULED = ("revoke_expired", "send_fallbacks")
WARM_UP = 20.0  # seconds a first call may take on a loaded machine (imports, first connections)


def dollars_per_month(instance_seconds_per_hour: float, invocations_per_hour: float) -> float:
    """The monthly bill of that much request time and that many invocations, every hour."""
    per_second = VCPU * VCPU_SECOND + GIB * GIB_SECOND
    return MONTH_HOURS * (instance_seconds_per_hour * per_second + invocations_per_hour * PER_INVOCATION)


def billed(seconds: float) -> float:
    """A request's time rounded up to 100 ms."""
    return math.ceil(seconds * 10 - 1e-9) / 10


def in_window(spans: list[tuple[float, float]], start: float, end: float) -> tuple[int, float, float]:
    """(requests begun in [start, end), seconds of them up to `end`, the same rounded up per request)."""
    inside = [(b, min(e, end)) for b, e in spans if start <= b < end]
    return len(inside), sum(e - b for b, e in inside), sum(billed(e - b) for b, e in inside)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.idle", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the idle window, minutes (5)")
    parser.add_argument("--period", type=float, default=60.0, help="scheduler period, seconds (60, as in production)")
    args = parser.parse_args(argv)
    load_before = load_average()

    with baseline() as checkout, Run("idle") as run:
        run.emulator("pubsub")
        run.emulator("firestore")
        rbm = run.enter_context(FakeRbm())
        twilio = run.enter_context(FakeTwilio(TWILIO_SID, TWILIO_TOKEN))
        tasks = run.enter_context(FakeTasks())
        flows = {
            kind: start_flow(
                run,
                kind,
                rbm.url,
                twilio.url,
                args.period,
                checkout=checkout if kind == "before" else REPO_ROOT,
                tasks_url=tasks.url,
                functions=SCHEDULED,
            )
            for kind in KINDS
        }
        scheduler = schedule(run, list(flows.values()), args.period)
        # The first tick of the grid once the calls made at start-up (which warm every process) are done.
        start = math.ceil((time.time() + WARM_UP) / args.period) * args.period
        end = start + args.minutes * 60
        print(f"idle window from the next tick for {args.minutes:g} min (until {time.ctime(end)}) …", flush=True)
        time.sleep(max(0.0, end + 3 - time.time()))
        scheduler.stop()
        executions = list(scheduler.executions)
        worker_spans = {
            kind: [(r.began, r.ended) for r in request_times.read(flows[kind].workers[0].requests_path)]
            for kind in KINDS
        }
        inside = {kind: {n: p.request_seconds(start, end) for n, p in flows[kind].functions.items()} for kind in KINDS}
        loads = {"before": load_before, "after": load_average()}

    hours = (end - start) / 3600
    rows, results = [], {}
    for kind in KINDS:
        flow, figures = flows[kind], {}
        for name in SCHEDULED:
            url = flow.functions[name].url
            spans = [(e.began, e.ended) for e in executions if e.url == url]
            answers = sorted({e.status for e in executions if e.url == url and start <= e.began < end}, key=str)
            figures[name] = (*in_window(spans, start, end), answers)
        figures["process_due_work"] = (*in_window(worker_spans[kind], start, end), [])
        calls = sum(f[0] for f in figures.values())
        seconds = sum(f[1] for f in figures.values())
        rounded = sum(f[2] for f in figures.values())
        results[kind] = {
            "functions": {
                name: {"requests": n, "seconds": s, "billed_seconds": b, "answers": a}
                for name, (n, s, b, a) in figures.items()
            },
            "recorded_inside": inside[kind],
            "instance_seconds_per_hour": seconds / hours,
            "billed_seconds_per_hour": rounded / hours,
            "invocations_per_hour": calls / hours,
            "dollars_per_month": dollars_per_month(seconds / hours, calls / hours),
            "billed_dollars_per_month": dollars_per_month(rounded / hours, calls / hours),
        }
        for name, (n, s, b, a) in figures.items():
            recorded = inside[kind].get(name)
            rows.append(
                [
                    kind,
                    name,
                    n,
                    f"{s / max(n, 1):.3f}",
                    s / hours,
                    "-" if recorded is None else f"{recorded / hours:,.1f}",
                    b / hours,
                    "/".join(map(str, a)) or "-",
                ]
            )
    print(f"\nmachine load average before/after: {loads['before']:.2f}/{loads['after']:.2f} ({os.cpu_count()} CPUs)")
    table(
        f"Idle, scheduler period {args.period:g} s, window {args.minutes:g} min",
        ["flow", "function", "requests", "mean s", "instance-s/hour", "(inside)", "billed s/hour", "answers"],
        rows,
    )
    table(
        "The functions together, per idle hour and per 30-day month "
        f"(1 vCPU, 0.5 GiB: ${VCPU_SECOND}/vCPU-s, ${GIB_SECOND}/GiB-s, $0.40/M invocations)",
        ["flow", "instance-s/hour", "billed s/hour", "invocations/hour", "$/month", "$/month billed"],
        [
            [
                k,
                r["instance_seconds_per_hour"],
                r["billed_seconds_per_hour"],
                r["invocations_per_hour"],
                f"{r['dollars_per_month']:.2f}",
                f"{r['billed_dollars_per_month']:.2f}",
            ]
            for k, r in results.items()
        ],
    )
    after = results["after"]
    ratio = results["before"]["instance_seconds_per_hour"] / max(after["instance_seconds_per_hour"], 1e-9)
    verdicts = {
        "after, instance-s per idle hour": f"{after['instance_seconds_per_hour']:.1f} (target <= {TARGET_PER_HOUR:g}) "
        + ("ok" if after["instance_seconds_per_hour"] <= TARGET_PER_HOUR else "MISSED"),
        "after, the same with each request rounded up to 100 ms": f"{after['billed_seconds_per_hour']:.1f} "
        + ("ok" if after["billed_seconds_per_hour"] <= TARGET_PER_HOUR else "MISSED"),
        "before ÷ after": f"{ratio:,.0f}x",
        "$ per 30-day month at idle, before → after": f"{results['before']['dollars_per_month']:.2f} → "
        f"{after['dollars_per_month']:.2f} (billed: {after['billed_dollars_per_month']:.2f})",
    }
    table("Against the targets", ["measure", "result"], [[k, v] for k, v in verdicts.items()])
    run.save(
        {
            "args": vars(args),
            "window": [start, end],
            "results": results,
            "load_average": loads,
            "verdicts": verdicts,
            "executions": [(e.url, e.scheduled, e.began, e.ended, e.status) for e in executions],
        }
    )


if __name__ == "__main__":
    main()
