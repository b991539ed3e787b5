"""Concurrent webhooks while Pub/Sub is slow: functions-framework's default threads
against THREADS = the deployed concurrency (infra/functions.json).

`--requests` correctly signed RBM receipts reach receive_webhook at the same moment
while every publish takes `--delay` seconds longer (bench/slow_publish.py), against
the Pub/Sub emulator; each answer's latency is recorded. Cloud Run sends an instance
up to its concurrency at once (80 for the webhook), so a request gunicorn has no
thread for waits inside the instance, where Cloud Run's autoscaling cannot see it.

    python -m bench.threads [--requests 16] [--delay 2] [--rounds 3]
"""

import argparse
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from bench.common import PROJECT, Run, table
from bench.webhook import TOKEN, TOPIC, signed_bodies
from local.processes import REPO_ROOT, RUNTIME, create_topic

SOURCE = "bench/slow_publish.py"


def burst(url: str, bodies: list[tuple[bytes, dict]]) -> list[float]:
    """POSTs every body at once, each from its own connection; answers the latencies (s), sorted."""
    gate = threading.Barrier(len(bodies))

    def one(body: tuple[bytes, dict]) -> float:
        with requests.Session() as session:
            session.trust_env = False
            gate.wait()
            started = time.perf_counter()
            response = session.post(url, data=body[0], headers=body[1], timeout=120)
            response.raise_for_status()
            return time.perf_counter() - started

    with ThreadPoolExecutor(len(bodies)) as pool:
        return sorted(pool.map(one, bodies))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.threads", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=16, help="webhooks sent at the same moment (16)")
    parser.add_argument("--delay", type=float, default=2.0, help="seconds added to every publish (2)")
    parser.add_argument("--rounds", type=int, default=3, help="bursts per setting (3)")
    args = parser.parse_args(argv)

    default = (os.cpu_count() or 1) * 4  # functions-framework's gunicorn without THREADS
    deployed = RUNTIME["receive_webhook"]["concurrency"]
    settings = {f"default ({default} threads)": default, f"THREADS={deployed} (deployed)": deployed}
    results: dict = {"requests": args.requests, "delay_s": args.delay, "cpus": os.cpu_count(), "settings": {}}
    with Run("threads") as run:
        run.emulator("pubsub")
        create_topic(PROJECT, TOPIC)
        bodies = signed_bodies(args.requests + 1)
        rows = []
        for label, threads in settings.items():
            env = {
                "RBM_CLIENT_TOKEN": TOKEN,
                "RBM_EVENTS_TOPIC": TOPIC,
                "PUBLISH_DELAY_SECONDS": f"{args.delay:g}",
                "PUBLISH_TIMEOUT_SECONDS": f"{args.delay + 10:g}",
                "PYTHONPATH": str(REPO_ROOT),
                "THREADS": str(threads),
            }
            process = run.function("receive_webhook", env, source=SOURCE)
            burst(process.url, bodies[:1])  # imports and the publisher client are ready after it
            latencies = [s for _ in range(args.rounds) for s in burst(process.url, bodies[1:])]
            process.stop()
            slow = sum(s > args.delay * 1.5 for s in latencies)
            results["settings"][label] = {"threads": threads, "latencies_s": [round(s, 3) for s in latencies]}
            rows.append([label, len(latencies), min(latencies), max(latencies), slow])
        table(
            f"{args.requests} signed webhooks at once, each publish {args.delay:g} s, {args.rounds} rounds",
            ["server", "answers", "fastest s", "slowest s", f"answers > {args.delay * 1.5:g} s"],
            rows,
        )
        run.save(results)


if __name__ == "__main__":
    main()
