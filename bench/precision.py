"""Precision: how soon after it is due does an SMS go out, with the production scheduler period?

Both flows of bench/flows.py run side by side on the same emulators, fakes
and scheduler ticks (every `--period` seconds, 60 in production), each over
its own collection and its own users:

- `dispatch`: work topic, SCHEDULE_PERIOD_SECONDS = the period, process_due_work
  workers (issue 12);
- `ticks`: today's flow, SCHEDULE_PERIOD_SECONDS=0 and no work topic: revoke at
  the tick, SMS at a later send_fallbacks tick.

Each flow gets `--users` never-online users (RCS, the device never connects:
the revoke answers 200, then the SMS) and as many without RCS (the send
answers 404, then the SMS). Sends are spread evenly over `--spread` seconds
(one period by default), so deadlines fall at every phase of the ticks. The
fake RBM and the fake Twilio answer each call after `--latency` seconds.
Times are taken from the outside: the deadline from the message document
(`revoke_at`), the send when send_message was called, the revoke and the SMS
when the fakes received them.

    python -m bench.precision [--period 60] [--users 50] [--deadline 20] [--latency 0.1] [--grace 5]
"""

import argparse
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from bench.common import Run, load_average, percentiles, table
from bench.flows import KINDS, TWILIO_SID, TWILIO_TOKEN, WORKER_CONCURRENCY, schedule, send, start_flow
from local.fake_rbm import FakeRbm
from local.fake_sms import FakeTwilio

USERS = ("never", "not_rcs")  # never-online users and users without RCS
WINDOW = 2.0  # the target: p99 within 2 s (plus the grace window after a revoke)


def phone(flow: int, user: int, i: int) -> str:
    return f"+4477{flow}{user}{i:06d}"


def plan(users: int) -> list[dict]:
    """Every message of the run: flow, kind of user, phone, message id."""
    return [
        {"flow": flow, "user": user, "phone": phone(f, u, i), "message_id": str(uuid.uuid4())}
        for i in range(users)
        for f, flow in enumerate(KINDS)
        for u, user in enumerate(USERS)
    ]


def launch(flows: dict, planned: list[dict], users: int, spread: float, deadline: int) -> None:
    """Sends the planned messages, `len(KINDS) * len(USERS)` at a time, evenly over `spread` seconds;
    records each send's time in its plan entry."""
    started = time.monotonic()
    per_step = len(KINDS) * len(USERS)
    with ThreadPoolExecutor(8) as pool:
        for step in range(users):
            time.sleep(max(0.0, started + spread * (step + 0.5) / users - time.monotonic()))
            for p in planned[step * per_step : (step + 1) * per_step]:
                url = flows[p["flow"]].functions["send_message"].url
                p["sent"] = pool.submit(send, url, p["phone"], p["message_id"], deadline)
    for p in planned:
        p["sent"] = p["sent"].result()


def wait_for_sms(twilio: FakeTwilio, phones: list[str], timeout: float) -> bool:
    """Waits until each phone got an SMS; False on timeout."""
    deadline, waiting = time.monotonic() + timeout, set(phones)
    while time.monotonic() < deadline:
        waiting -= {record["to"] for record in twilio.sent}
        if not waiting:
            return True
        time.sleep(0.5)
    return False


def warm_up(flows: dict, rbm: FakeRbm, twilio: FakeTwilio, deadline: int) -> None:
    """One no-RCS message per flow, so every process has imported, connected and
    built its clients before the measured sends (the dispatch one is waited for;
    today's flow texts it at a later tick, which the scheduler's ticks warm anyway)."""
    for f, flow in enumerate(KINDS):
        rbm.set_phone(phone(f, 9, 0), "not_rcs")
        send(flows[flow].functions["send_message"].url, phone(f, 9, 0), str(uuid.uuid4()), deadline)
    if not wait_for_sms(twilio, [phone(KINDS.index("dispatch"), 9, 0)], 120):
        raise RuntimeError("the warm-up SMS of the dispatch flow never came")


def measure(planned: list[dict], flows: dict, rbm: FakeRbm, twilio: FakeTwilio) -> dict:
    """Per flow and kind of user: the seconds from due to revoke and to SMS, SMS counts."""
    from functions import store
    from functions.model import Message

    sms_at, sms_count = {}, {}
    for record in twilio.sent:
        sms_at.setdefault(record["to"], record["time"])
        sms_count[record["to"]] = sms_count.get(record["to"], 0) + 1
    revoked_at = {r["message_id"]: r["time"] for r in rbm.requests if r["kind"] == "revoke" and r["status"] == 200}
    out = {
        flow: {"deadline→revoke": [], "deadline→SMS": [], "send→SMS": [], "missing": 0, "duplicates": 0}
        for flow in KINDS
    }
    for p in planned:
        figures = out[p["flow"]]
        doc = store.client().collection(flows[p["flow"]].collection).document(p["message_id"]).get()
        message = Message.from_doc(doc.to_dict())
        texted = sms_at.get(p["phone"])
        figures["duplicates"] += max(0, sms_count.get(p["phone"], 0) - 1)
        if texted is None:
            figures["missing"] += 1
        elif p["user"] == "never":
            figures["deadline→SMS"].append(texted - message.revoke_at.timestamp())
        else:
            figures["send→SMS"].append(texted - p["sent"])
        if p["user"] == "never" and p["message_id"] in revoked_at:
            figures["deadline→revoke"].append(revoked_at[p["message_id"]] - message.revoke_at.timestamp())
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.precision", description=__doc__.split("\n\n")[0])
    parser.add_argument("--period", type=float, default=60.0, help="scheduler period, seconds (60, as in production)")
    parser.add_argument("--users", type=int, default=50, help="users of each kind (never online, no RCS) per flow (50)")
    parser.add_argument("--deadline", type=int, default=20, help="revoke_after_seconds of each message (20)")
    parser.add_argument("--spread", type=float, help="seconds the sends are spread over (default: one period)")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds each fake RBM / Twilio call takes (0.1)")
    parser.add_argument("--grace", type=float, default=5.0, help="REVOKE_GRACE_SECONDS (5, the default)")
    parser.add_argument("--workers", type=int, default=1, help="process_due_work processes (1)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=WORKER_CONCURRENCY,
        help=f"requests at once per worker (deployed: {WORKER_CONCURRENCY})",
    )
    args = parser.parse_args(argv)
    spread = args.spread if args.spread is not None else args.period
    load_before = load_average()

    with Run("precision") as run:
        run.emulator("pubsub")
        run.emulator("firestore")
        rbm = run.enter_context(FakeRbm())
        twilio = run.enter_context(FakeTwilio(TWILIO_SID, TWILIO_TOKEN))
        twilio.set_delay(args.latency)
        flows = {
            kind: start_flow(
                run,
                kind,
                rbm.url,
                twilio.url,
                args.period,
                workers=args.workers,
                concurrency=args.concurrency,
                settings={"REVOKE_GRACE_SECONDS": f"{args.grace:g}"},
            )
            for kind in KINDS
        }
        planned = plan(args.users)
        for p in planned:
            if p["user"] == "never":
                rbm.set_phone(p["phone"], "slow", delay=args.latency)
            else:
                rbm.set_phone(p["phone"], "not_rcs")
                rbm.set_latency("create", p["phone"], args.latency)
        scheduler = schedule(run, list(flows.values()), args.period)
        print(f"scheduler every {args.period:g} s; sending {len(planned)} messages over {spread:g} s …", flush=True)
        warm_up(flows, rbm, twilio, args.deadline)
        launch(flows, planned, args.users, spread, args.deadline)
        timeout = args.deadline + 2 * args.period + args.grace + 60
        print(f"sent; waiting up to {timeout:.0f} s for every SMS …", flush=True)
        done = wait_for_sms(twilio, [p["phone"] for p in planned], timeout)
        time.sleep(min(5.0, args.period))  # a duplicate would come now
        results = measure(planned, flows, rbm, twilio)
        scheduler.stop()
        loads = {"before": load_before, "after": load_average()}

        print(
            f"\nmachine load average before/after: {loads['before']:.2f}/{loads['after']:.2f} ({os.cpu_count()} CPUs)"
            + ("" if done else "\nnote: not every SMS arrived before the timeout; see `missing`")
        )
        rows = []
        for flow in KINDS:
            for measure_name in ("deadline→revoke", "deadline→SMS", "send→SMS"):
                rows.append([flow, measure_name, *percentiles(results[flow][measure_name])])
        table(
            f"Seconds until due work is done, scheduler period {args.period:g} s, grace {args.grace:g} s, "
            f"fakes answer in {args.latency * 1000:g} ms, {args.users} users of each kind per flow",
            ["flow", "measure", "n", "p50 s", "p99 s"],
            rows,
        )
        table(
            "Fates",
            ["flow", "SMS missing", "duplicate SMS", "pushes ok/failed"],
            [
                [
                    flow,
                    results[flow]["missing"],
                    results[flow]["duplicates"],
                    f"{flows[flow].pusher.delivered}/{flows[flow].pusher.failed}" if flows[flow].pusher else "-",
                ]
                for flow in KINDS
            ],
        )
        dispatch, ticks = results["dispatch"], results["ticks"]
        verdicts = {}
        for measure_name, target in (("deadline→SMS", WINDOW + args.grace), ("send→SMS", WINDOW)):
            new, old = percentiles(dispatch[measure_name]), percentiles(ticks[measure_name])
            if new[0] and old[0]:
                verdicts[f"{measure_name} p99, dispatch"] = (
                    f"{new[2]:.2f} s (target <= {target:g} s) {'ok' if new[2] <= target else 'MISSED'}"
                )
                verdicts[f"{measure_name} p50, ticks / dispatch"] = f"{old[1] / new[1]:.1f}x sooner"
                verdicts[f"{measure_name} p99, ticks / dispatch"] = f"{old[2] / new[2]:.1f}x sooner"
        verdicts["lost or duplicated SMS"] = (
            "none" if not any(r["missing"] or r["duplicates"] for r in results.values()) else "SOME (see Fates)"
        )
        table("Against the targets", ["measure", "result"], [[k, v] for k, v in verdicts.items()])
        run.save(
            {
                "args": vars(args),
                "results": results,
                "load_average": loads,
                "verdicts": verdicts,
                "scheduler_answers": [(e.url, e.status) for e in scheduler.executions],
            }
        )


if __name__ == "__main__":
    main()
