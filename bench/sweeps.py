"""The scheduled sweeps: does their cost follow the due messages or the
collection, and how much does their parallelism buy?

Both parts run the real revoke_expired / send_fallbacks processes over the
Firestore emulator, against the fake RBM platform and the fake Twilio;
documents are seeded straight into Firestore in batches of 500.

1. Scaling: revoke_expired revokes 100 due messages while the collection
   holds 1,000, then 50,000, other messages that are not due (fakes answer
   at once, so only Firestore work is timed).
2. Throughput: 1,000 due messages revoked, then their SMS sent, with the
   default parallelism and with SWEEP_PARALLELISM=1; the fakes answer each
   call after a small delay, as real APIs do.

    python -m bench.sweeps [--others 1000,50000] [--due 100] [--repeats 3] [--messages 1000] [--delay 0.1]
"""

import argparse
import os
import time
from datetime import timedelta

from bench.common import (
    PROJECT,
    CpuMeter,
    Run,
    accepted,
    check,
    http_session,
    load_average,
    median,
    parallel,
    seed,
    table,
)
from functions import config
from local.fake_rbm import FakeRbm
from local.fake_sms import FakeTwilio
from local.processes import create_topic, reset_firestore

AGENT = "bench@rbm.goog"
TWILIO_SID, TWILIO_TOKEN = "AC" + "7" * 32, "bench-twilio-token"
LONG_BUDGET = "600"  # so the one-at-a-time sweep is not cut short by the default 90 s budget
POOL_FULL = "Connection pool is full"


def phone(i: int) -> str:
    return f"+4477{i:08d}"


def due(prefix: str, count: int, start: int = 0):
    """Sent messages whose revoke deadline has just passed, each with an SMS fallback."""
    from functions import store

    past = store.now() - timedelta(seconds=1)
    return [accepted(f"{prefix}-{i:06d}", phone(start + i), AGENT, past, i) for i in range(count)]


def others(count: int):
    """Messages no sweep has work on: 4 in 5 delivered or read, 1 in 5 sent with its deadline an hour away."""
    from functions import store
    from functions.model import Fallback, Message, State

    later = store.now() + timedelta(hours=1)
    messages = []
    for i in range(count):
        if i % 5 == 4:
            m = Message(
                f"other-{i:06d}",
                phone(500_000 + i),
                AGENT,
                state=State.SENT,
                fallback=Fallback.WAITING,
                fallback_text="fallback",
                content={"text": "rcs"},
                revoke_at=later,
                next_action_at=later,
            )
        else:
            m = Message(
                f"other-{i:06d}",
                phone(500_000 + i),
                AGENT,
                state=State.READ if i % 2 else State.DELIVERED,
                fallback=Fallback.CANCELLED,
                fallback_text="fallback",
                content={"text": "rcs"},
                revoke_at=later,
            )
        messages.append(m)
    return messages


def queue(rbm: FakeRbm, messages) -> None:
    """Sends each message to the fake platform, so it is queued there and a revoke answers 200."""

    def create(m) -> None:
        response = http_session.post(
            f"{rbm.url}/v1/phones/{m.phone}/agentMessages",
            params={"messageId": m.message_id, "agentId": AGENT},
            json={"contentMessage": m.content},
            timeout=10,
        )
        response.raise_for_status()

    parallel(create, messages, 8)


def sweep(process) -> tuple[float, dict]:
    """One scheduled call; its wall time and the sweep's summary."""
    started = time.monotonic()
    response = http_session.post(process.url, json={}, timeout=900)
    response.raise_for_status()
    return time.monotonic() - started, response.json()


def due_query_seconds() -> float:
    """Time of revoke_expired's due-messages query (first page) from this process."""
    from functions import revoke_expired, store
    from functions import sweep as sweeps

    started = time.monotonic()
    next(sweeps.due(revoke_expired.REVOKE, store.now()), None)
    return time.monotonic() - started


def scaling(run: Run, host: str, rbm: FakeRbm, sizes: list[int], count: int, repeats: int) -> dict:
    """revoke_expired over `count` due messages beside each size of not-due collection."""
    revoker = run.function("revoke_expired", {"RBM_API_ENDPOINT": rbm.url, "RBM_AGENT_ID": AGENT})
    sweep(revoker)  # warm-up: imports and clients
    results = {}
    for size in sizes:
        reset_firestore(host, PROJECT)
        rbm.reset()
        seeding = seed(others(size), threads=4)
        print(f"seeded {size:,} not-due messages in {seeding:.1f} s ({size / seeding:,.0f} docs/s)", flush=True)
        query = due_query_seconds()
        runs = []
        for rep in range(repeats):
            messages = due(f"due-{size}-{rep}", count, start=rep * count)
            seed(messages)
            queue(rbm, messages)
            seconds, summary = sweep(revoker)
            runs.append({"seconds": round(seconds, 3), "summary": summary})
        results[size] = {
            "seeding_s": round(seeding, 2),
            "due_query_s": round(query, 3),
            "runs": runs,
            "median_s": median(r["seconds"] for r in runs),
        }
    revoker.stop()
    results["pool_full_warnings"] = revoker.read_log().count(POOL_FULL)
    return results


def throughput(run: Run, host: str, rbm: FakeRbm, twilio: FakeTwilio, count: int, delay: float) -> dict:
    """`count` messages revoked then texted, default parallelism versus one at a time."""
    sms_env = {
        "SMS_PROVIDER": "twilio",
        "TWILIO_ACCOUNT_SID": TWILIO_SID,
        "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
        "TWILIO_FROM_NUMBER": "+15005550006",
        "TWILIO_API_BASE": twilio.url,
    }
    results = {}
    for label, extra in (("default (16)", {}), ("1", {"SWEEP_PARALLELISM": "1"})):
        # No grace: send_fallbacks runs right after revoke_expired and must find every SMS due.
        env = {
            "RBM_API_ENDPOINT": rbm.url,
            "RBM_AGENT_ID": AGENT,
            "SWEEP_BUDGET_SECONDS": LONG_BUDGET,
            "REVOKE_GRACE_SECONDS": "0",
            **extra,
        }
        revoker = run.function("revoke_expired", env)
        fallbacks = run.function("send_fallbacks", {**env, **sms_env})
        sweep(revoker), sweep(fallbacks)  # warm-up on an empty collection
        reset_firestore(host, PROJECT)
        rbm.reset()
        twilio.reset()
        messages = due(f"tp{extra.get('SWEEP_PARALLELISM', 'd')}", count)
        seed(messages)
        queue(rbm, messages)
        for m in messages:  # slow from now on: every later call waits `delay`
            rbm.set_phone(m.phone, "slow", delay=delay)
        twilio.set_delay(delay)
        emulator = run.emulators["firestore"].pid
        with CpuMeter(function=revoker.pid, emulator=emulator) as revoke_cpu:
            revoke_s, revoked = sweep(revoker)
        with CpuMeter(function=fallbacks.pid, emulator=emulator) as sms_cpu:
            sms_s, texted = sweep(fallbacks)
        results[label] = {
            "revoke_s": round(revoke_s, 2),
            "fallback_s": round(sms_s, 2),
            "total_s": round(revoke_s + sms_s, 2),
            "cores": {"revoke_expired": revoke_cpu.cores, "send_fallbacks": sms_cpu.cores},
            "revoke_summary": revoked,
            "fallback_summary": texted,
            "sms_sent": twilio.count(),
            "rbm_revokes": rbm.count("revoke"),
            "pool_full_warnings": sum(p.read_log().count(POOL_FULL) for p in (revoker, fallbacks)),
        }
        revoker.stop()
        fallbacks.stop()
        print(f"parallelism {label}: {revoke_s + sms_s:.1f} s", flush=True)
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sweeps", description=__doc__.split("\n\n")[0])
    parser.add_argument("--others", default="1000,50000", help="sizes of the not-due collection, comma-separated")
    parser.add_argument("--due", type=int, default=100, help="due messages per scaling sweep")
    parser.add_argument("--repeats", type=int, default=3, help="scaling sweeps per size")
    parser.add_argument("--messages", type=int, default=1000, help="due messages in the throughput part")
    parser.add_argument(
        "--delay",
        type=float,
        default=0.1,
        help="seconds each fake RBM / Twilio call takes, as a call to a remote API does (0.1)",
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.others.split(",")]
    load_before = load_average()

    with Run("sweeps") as run:
        host = run.emulator("firestore")
        run.emulator("pubsub")  # each message change publishes its outcome events
        create_topic(PROJECT, config.outcomes_topic())
        rbm = run.enter_context(FakeRbm())
        twilio = run.enter_context(FakeTwilio(TWILIO_SID, TWILIO_TOKEN))
        scaled = scaling(run, host, rbm, sizes, args.due, args.repeats)
        timed = throughput(run, host, rbm, twilio, args.messages, args.delay)

        loads = {"before": load_before, "after": load_average()}
        print(
            f"\nmachine load average before/after: {loads['before']:.2f}/{loads['after']:.2f} ({os.cpu_count()} CPUs)"
        )
        table(
            f"1. revoke_expired on {args.due} due messages beside N not-due ones "
            f"(fakes answer at once; {args.repeats} sweeps per size)",
            ["not due (N)", "seeding s", "docs/s", "due query s", "sweep median s", "sweeps s", "revoked"],
            [
                [
                    n,
                    scaled[n]["seeding_s"],
                    n / scaled[n]["seeding_s"],
                    scaled[n]["due_query_s"],
                    scaled[n]["median_s"],
                    " ".join(f"{r['seconds']:.2f}" for r in scaled[n]["runs"]),
                    "/".join(str(r["summary"].get("revoked", 0)) for r in scaled[n]["runs"]),
                ]
                for n in sizes
            ],
        )
        table(
            f"2. {args.messages:,} due messages: revoke_expired then send_fallbacks "
            f"(fake RBM and fake Twilio answer each call after {args.delay * 1000:g} ms)",
            [
                "parallelism",
                "revoke s",
                "fallback s",
                "total s",
                "msgs/s",
                "revoked",
                "SMS sent",
                "RBM DELETEs",
                "cores busy: function/emulator/fakes",
            ],
            [
                [
                    label,
                    r["revoke_s"],
                    r["fallback_s"],
                    r["total_s"],
                    args.messages / r["total_s"],
                    r["revoke_summary"].get("revoked", 0),
                    r["sms_sent"],
                    r["rbm_revokes"],
                    _cores(r["cores"]),
                ]
                for label, r in timed.items()
            ],
        )
        verdicts = {
            f"sweep time, {sizes[-1]:,} vs {sizes[0]:,} not due": check(
                scaled[sizes[-1]]["median_s"] / scaled[sizes[0]]["median_s"], 1.3, at_least=False
            ),
            "default parallelism speed-up": check(
                timed["1"]["total_s"] / timed["default (16)"]["total_s"], 5, at_least=True
            ),
        }
        table("Against the targets", ["measure", "result"], [[k, v] for k, v in verdicts.items()])
        warnings = scaled["pool_full_warnings"] + sum(r["pool_full_warnings"] for r in timed.values())
        if warnings:
            print(
                f"\nnote: the function logs say '{POOL_FULL}' {warnings:,} times (HTTP connections dropped, not reused)"
            )
        run.save(
            {"scaling": scaled, "throughput": timed, "delay_s": args.delay, "load_average": loads, "verdicts": verdicts}
        )


def _cores(cores: dict) -> str:
    """Cores busy during both sweeps, e.g. `1.10/0.62/0.20 + 1.05/0.70/0.18`."""
    return " + ".join("/".join(f"{c[k]:.2f}" for k in ("function", "emulator", "bench")) for c in cores.values())


if __name__ == "__main__":
    main()
