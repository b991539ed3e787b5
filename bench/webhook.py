"""receive_webhook under load, next to a do-nothing floor and a naive publisher.

Each function runs in its own functions-framework (gunicorn) process, wired
to the Pub/Sub emulator; they take turns under the same correctly signed RBM
receipts from keep-alive client threads (a warm-up, then timed turns, so
background load hits all alike), then get one client alone. Then cold
starts (process start to first 200) and the memory of receive_webhook after
10,000 requests, and what unsigned bodies as large as the webhook reads cost
it. `--compare DIR` serves another checkout's receive_webhook (e.g. one made
with `git worktree add`) alongside, under the same load, for a before → after.

    python -m bench.webhook [--threads 16] [--seconds 12] [--rounds 3] [--starts 5] [--compare DIR]
"""

import argparse
import base64
import json
import os
import time
from collections import Counter
from pathlib import Path
from unittest import mock

import requests

from bench.common import (
    PROJECT,
    CpuMeter,
    Load,
    Run,
    check,
    group_cpu,
    group_memory,
    http_session,
    load_average,
    median,
    parallel,
    post_load,
    table,
)
from functions.receive_webhook import MAX_BODY
from functions.signature import sign
from local.processes import create_pull_subscription, create_topic, runtime_env

TOKEN = "bench-client-token"
TOPIC = "bench-events"
BASELINES = "bench/baselines.py"
MEMORY_AFTER = 10_000
# The baselines are served as the deployed webhook is (THREADS = its concurrency), so
# every function here gets the same server.
SERVER = runtime_env("receive_webhook")
# Unsigned requests of the strangers' flood: 128 from 8 threads, as the issue that
# asked for the check measured them.
UNSIGNED_REQUESTS, UNSIGNED_THREADS = 128, 8


def signed_bodies(count: int) -> list[tuple[bytes, dict]]:
    """`count` DELIVERED receipts, each with its own event id, in RBM's push envelope."""
    bodies = []
    for i in range(count):
        data = json.dumps(
            {
                "senderPhoneNumber": f"+4477009{i % 100000:05d}",
                "eventType": "DELIVERED",
                "eventId": f"bench-event-{i}",
                "messageId": f"bench-message-{i}",
                "sendTime": "2026-01-01T00:00:01.123456Z",
                "agentId": "bench@rbm.goog",
            }
        ).encode()
        body = {
            "message": {
                "data": base64.b64encode(data).decode(),
                "messageId": str(i),
                "publishTime": "2026-01-01T00:00:01Z",
            },
            "subscription": "projects/rbm/subscriptions/bench",
        }
        bodies.append(
            (json.dumps(body).encode(), {"Content-Type": "application/json", "X-Goog-Signature": sign(TOKEN, data)})
        )
    return bodies


def unsigned_bodies() -> dict[str, bytes]:
    """Unsigned bodies a stranger can send, as costly to parse as JSON gets per byte
    (`[{},{},…]`): 1 MiB (the webhook's former limit) and one at this checkout's limit."""

    def array(size: int) -> bytes:
        return b"[" + b"{}," * ((size - 3) // 3) + b"{}]"

    return {"1 MiB": array(1 << 20), f"{MAX_BODY:,} B (limit)": array(MAX_BODY)}


def unsigned_cost(pid: int, url: str, body: bytes) -> dict:
    """What UNSIGNED_REQUESTS copies of `body` without X-Goog-Signature cost the server
    (process group `pid`): CPU ms per request, requests/s, RSS before and after, answers."""

    def post(_: int) -> str:
        try:
            return str(http_session.post(url, data=body, headers={"Content-Type": "application/json"}).status_code)
        except requests.ConnectionError:
            return "closed"

    rss_before, cpu_before, started = sum(p["rss_mb"] for p in group_memory(pid)), group_cpu(pid), time.monotonic()
    answers = Counter(parallel(post, range(UNSIGNED_REQUESTS), UNSIGNED_THREADS))
    seconds, cpu = time.monotonic() - started, group_cpu(pid) - cpu_before
    return {
        "cpu_ms_per_request": 1000 * cpu / UNSIGNED_REQUESTS,
        "rps": UNSIGNED_REQUESTS / seconds,
        "rss_before_mb": rss_before,
        "rss_after_mb": sum(p["rss_mb"] for p in group_memory(pid)),
        "answers": dict(answers),
    }


def gunicorn_settings() -> dict:
    """Workers and threads functions-framework gives gunicorn in every function here
    (SERVER's WORKERS / THREADS; without them 1 worker and 4 threads per CPU)."""
    from functions_framework._http.gunicorn import GunicornApplication

    with mock.patch.dict(os.environ, SERVER):
        cfg = GunicornApplication(None, "127.0.0.1", 0, False).cfg
    return {
        "workers": cfg.workers,
        "threads": cfg.threads,
        "worker_class": cfg.worker_class_str,
        "cpus": os.cpu_count(),
    }


def cold_start(run: Run, target: str, env: dict, source: str, body: tuple[bytes, dict]) -> dict:
    """Seconds from starting the process to its first 200 answer to `body`."""
    process = run.function(target, env, source=source, start=False)
    started = time.monotonic()
    process.start()
    listening = time.monotonic() - started
    while time.monotonic() - started < 60:
        try:
            if http_session.post(process.url, data=body[0], headers=body[1], timeout=30).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        time.sleep(0.005)
    else:
        raise RuntimeError(f"{target} did not answer 200 within 60 s; see {process.log_path}")
    first = time.monotonic() - started
    process.stop()
    return {"listening_s": listening, "first_200_s": first}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.webhook", description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=16, help="concurrent keep-alive clients")
    parser.add_argument("--seconds", type=float, default=12.0, help="timed load per function, split over the rounds")
    parser.add_argument("--rounds", type=int, default=3, help="the functions take turns this many times")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up per function")
    parser.add_argument("--starts", type=int, default=5, help="cold starts per function")
    parser.add_argument(
        "--compare", type=Path, help="another checkout whose receive_webhook runs alongside (as `compared`)"
    )
    args = parser.parse_args(argv)

    results: dict = {
        "threads": args.threads,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "gunicorn": gunicorn_settings(),
        "load_average_before": load_average(),
    }
    bodies = signed_bodies(5000)
    with Run("webhook") as run:
        run.emulator("pubsub")
        create_topic(PROJECT, TOPIC)
        create_pull_subscription(PROJECT, TOPIC, f"{TOPIC}-kept")  # so the emulator stores what it gets
        webhook_env = {"RBM_CLIENT_TOKEN": TOKEN, "RBM_EVENTS_TOPIC": TOPIC}
        processes = {
            "floor": run.function("floor", SERVER, source=BASELINES),
            "naive": run.function("naive", {**SERVER, "BASELINE_TOPIC": TOPIC}, source=BASELINES),
            "receive_webhook": run.function("receive_webhook", webhook_env),
        }
        if args.compare:
            processes["compared"] = run.function("receive_webhook", webhook_env, cwd=args.compare.resolve())
        served = {t: post_load(p.url, bodies, args.threads, seconds=args.warmup).requests for t, p in processes.items()}
        loads = {t: Load(0.0) for t in processes}
        cpu = {t: Counter() for t in processes}  # CPU seconds: server, emulator, bench (the clients)
        emulator = run.emulators["pubsub"].pid
        for _ in range(args.rounds):  # turns, so background load hits every function alike
            for target, process in processes.items():
                with CpuMeter(server=process.pid, emulator=emulator) as meter:
                    loads[target] += post_load(process.url, bodies, args.threads, seconds=args.seconds / args.rounds)
                cpu[target].update(meter.seconds)
        alone = {t: post_load(p.url, bodies, 1, seconds=2.0) for t, p in processes.items()}
        for target in processes:
            served[target] += loads[target].requests + alone[target].requests

        webhook = processes["receive_webhook"]
        if served["receive_webhook"] < MEMORY_AFTER:
            served["receive_webhook"] += post_load(
                webhook.url, bodies, args.threads, total=MEMORY_AFTER - served["receive_webhook"]
            ).requests
        leader, memory = webhook.pid, group_memory(webhook.pid)
        webhooks = [t for t in processes if t in ("receive_webhook", "compared")]
        unsigned = {
            (t, size): unsigned_cost(processes[t].pid, processes[t].url, body)
            for size, body in unsigned_bodies().items()
            for t in webhooks
        }
        for process in processes.values():
            process.stop()

        starts: dict[str, list[dict]] = {"receive_webhook": [], "imports_only": []}
        for _ in range(args.starts):  # alternated, so drift hits both alike
            starts["receive_webhook"].append(cold_start(run, "receive_webhook", webhook_env, "main.py", bodies[0]))
            starts["imports_only"].append(cold_start(run, "imports_only", SERVER, BASELINES, bodies[0]))
        results["load_average_after"] = load_average()

        g = results["gunicorn"]
        print(
            f"\nfunctions-framework serves with gunicorn: {g['workers']} worker x {g['threads']} threads "
            f"({g['worker_class']}, {g['cpus']} CPUs). Clients: {args.threads} keep-alive threads; "
            f"{args.warmup:g} s warm-up, then {args.rounds} turns of {args.seconds / args.rounds:g} s per function. "
            f"Load average before/after: {results['load_average_before']:.2f}/{results['load_average_after']:.2f}"
        )
        table(
            f"Throughput and latency, {args.threads} concurrent clients (same signed receipts, Pub/Sub emulator)",
            [
                "function",
                "requests",
                "errors",
                "req/s",
                "p50 ms",
                "p99 ms",
                "server CPU ms/req",
                "cores: server",
                "emulator",
                "clients",
            ],
            [
                [
                    t,
                    load.requests,
                    load.errors,
                    load.rps,
                    load.percentile(0.5),
                    load.percentile(0.99),
                    1000 * cpu[t]["server"] / max(load.requests, 1),
                    cpu[t]["server"] / load.seconds,
                    cpu[t]["emulator"] / load.seconds,
                    cpu[t]["bench"] / load.seconds,
                ]
                for t, load in loads.items()
            ],
        )
        table(
            "One client at a time (no queueing), 2 s each",
            ["function", "requests", "req/s", "p50 ms", "p99 ms"],
            [[t, load.requests, load.rps, load.percentile(0.5), load.percentile(0.99)] for t, load in alone.items()],
        )
        rw, naive, floor = loads["receive_webhook"], loads["naive"], loads["floor"]
        verdicts = {
            "throughput vs naive": check(rw.rps / naive.rps, 1.5, at_least=True),
            "throughput vs floor": check(rw.rps / floor.rps, 0.5, at_least=True),
            "p50 vs naive": check(rw.percentile(0.5) / naive.percentile(0.5), 0.6, at_least=False),
        }
        cold = {t: median(s["first_200_s"] for s in runs) for t, runs in starts.items()}
        verdicts["cold start vs imports_only"] = check(
            cold["receive_webhook"] / cold["imports_only"], 1.3, at_least=False
        )
        table(
            f"Cold start: process start to first 200, {args.starts} starts each (receive_webhook: a signed POST)",
            ["function", "median s", "min s", "max s", "listening (median) s"],
            [
                [
                    t,
                    cold[t],
                    min(s["first_200_s"] for s in runs),
                    max(s["first_200_s"] for s in runs),
                    median(s["listening_s"] for s in runs),
                ]
                for t, runs in starts.items()
            ],
        )
        rss, pss = sum(p["rss_mb"] for p in memory), sum(p["pss_mb"] for p in memory)
        table(
            f"receive_webhook memory after {served['receive_webhook']:,} requests (its process group)",
            ["pid", "role", "RSS MB", "PSS MB", "threads"],
            [
                [p["pid"], "master" if p["pid"] == leader else "worker", p["rss_mb"], p["pss_mb"], p["threads"]]
                for p in memory
            ]
            + [["total", "", rss, pss, ""]],
        )
        verdicts["memory (RSS, group)"] = f"{rss:.1f} MB (target <= 150 MB) {'ok' if rss <= 150 else 'MISSED'}"
        table(
            f"Unsigned bodies `[{{}},{{}},…]` without X-Goog-Signature: {UNSIGNED_REQUESTS} requests, "
            f"{UNSIGNED_THREADS} threads, per function after the load above",
            ["function", "body", "answers", "server CPU ms/req", "req/s", "RSS before MB", "RSS after MB"],
            [
                [t, size, c["answers"], c["cpu_ms_per_request"], c["rps"], c["rss_before_mb"], c["rss_after_mb"]]
                for (t, size), c in unsigned.items()
            ],
        )
        extra_ms = 1000 * (cpu["receive_webhook"]["server"] / rw.requests - cpu["floor"]["server"] / floor.requests)
        verdicts["server CPU vs floor"] = (
            f"+{extra_ms:.2f} ms/req (target <= +0.6 ms) {'ok' if extra_ms <= 0.6 else 'MISSED'}"
        )
        table("Against the targets", ["measure", "result"], [[k, v] for k, v in verdicts.items()])

        results.update(
            load={t: load.summary() | {"cpu_s": dict(cpu[t])} for t, load in loads.items()},
            one_client={t: load.summary() for t, load in alone.items()},
            cold_start=starts,
            cold_start_median_s=cold,
            memory={"requests_served": served["receive_webhook"], "processes": memory, "rss_mb": rss, "pss_mb": pss},
            unsigned={f"{t} {size}": c for (t, size), c in unsigned.items()},
            verdicts=verdicts,
        )
        run.save(results)


if __name__ == "__main__":
    main()
