"""Precision: how soon after it is due is the work done, at the production scheduler period?

Both engines of bench/flows.py run side by side on the same emulators and
scheduler ticks (every `--period` seconds, 60 in production), each over its own
collection, users and RBM simulator: `before` (the BASELINE checkout: runs
polling every second, a work topic) and `after` (Cloud Tasks timers).

Each flow gets `--users` users of each kind:
- never online (RCS; the device never connects): the revoke at the deadline
  answers 200, the SMS follows REVOKE_GRACE_SECONDS later. The deadlines
  (`--deadlines`, by default 10 s, the one-time-code case, and 30 s) alternate;
- without RCS: the send is answered 404, the SMS follows at once;
- TTL: RCS, never online, and the platform expires the message `--ttl`
  seconds after its create (TTL_EXPIRATION_REVOKED, through receive_webhook,
  the events topic and track_delivery); the SMS follows at once.

Sends are spread evenly over `--spread` seconds (one period by default), so
the work falls due at every phase of the ticks, mostly between two scheduled
runs. The RBM simulator and the fake Twilio answer each call after `--latency`
seconds. Times are taken from outside: the deadline from the message document
(`revoke_at`), the 404 when the simulator answered it, the expiry from the
event's `sendTime`, the revoke and the SMS when the fakes received them.

    python -m bench.precision [--period 60] [--users 20] [--deadlines 10,30] [--latency 0.1] [--grace 5]
"""

import argparse
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from bench.common import Run, load_average, percentiles, table
from bench.flows import AGENT, CLIENT_TOKEN, KINDS, TWILIO_SID, TWILIO_TOKEN, baseline, schedule, send, start_flow
from local.fake_sms import FakeTwilio
from local.fake_tasks import FakeTasks
from local.processes import REPO_ROOT
from local.simulator import Simulator

USERS = ("never", "not_rcs", "ttl")  # never-online users, users without RCS, messages the platform expires
WINDOW = 2.0  # the target: p99 within 2 s (plus the grace window after a revoke)
TTL_DEADLINE = 600  # revoke_after_seconds of the TTL users' messages: the platform's expiry comes first
MEASURES = ("deadline→revoke", "deadline→SMS", "deadline→SMS, 10 s", "404→SMS", "TTL revoked→SMS")


class Expiring(Simulator):
    """The RBM simulator, with the platform expiring every message to chosen phones
    `seconds` after its create (TTL_EXPIRATION_REVOKED, as for a create with a `ttl`,
    which the relay never sets): the platform revoking on its own."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.expiring: dict[str, float] = {}

    def expire_after(self, phone: str, seconds: float) -> None:
        with self._lock:
            self.expiring[phone] = seconds

    def _queued(self, message_id: str, message: dict) -> None:
        super()._queued(message_id, message)
        if message["phone"] in self.expiring:
            self._after(self.expiring[message["phone"]], self._expire, message_id)


def phone(flow: int, user: int, i: int) -> str:
    return f"+4477{flow}{user}{i:06d}"


def plan(users: int, deadlines: list[int]) -> list[dict]:
    """Every message of the run: flow, kind of user, phone, message id, deadline."""
    return [
        {
            "flow": flow,
            "user": user,
            "phone": phone(f, u, i),
            "message_id": str(uuid.uuid4()),
            "deadline": TTL_DEADLINE if user == "ttl" else deadlines[i % len(deadlines)],
        }
        for i in range(users)
        for f, flow in enumerate(KINDS)
        for u, user in enumerate(USERS)
    ]


def launch(flows: dict, planned: list[dict], users: int, spread: float) -> None:
    """Sends the planned messages, one of each flow and kind at a time, evenly over `spread`
    seconds; records each send's time in its plan entry."""
    started = time.monotonic()
    per_step = len(KINDS) * len(USERS)
    with ThreadPoolExecutor(8) as pool:
        for step in range(users):
            time.sleep(max(0.0, started + spread * (step + 0.5) / users - time.monotonic()))
            for p in planned[step * per_step : (step + 1) * per_step]:
                url = flows[p["flow"]].functions["send_message"].url
                p["sent"] = pool.submit(send, url, p["phone"], p["message_id"], p["deadline"])
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


def warm_up(flows: dict, sims: dict, twilio: FakeTwilio) -> None:
    """Per flow, one message without RCS and one the platform expires at once, waited for,
    so every process (the events path's too) has imported, connected and built its
    clients before the measured sends."""
    phones = []
    for flow in flows:
        not_rcs, expiring = phone(KINDS.index(flow), 9, 0), phone(KINDS.index(flow), 9, 1)
        sims[flow].set_phone(not_rcs, "not_rcs")
        sims[flow].expire_after(expiring, 1.0)
        for to, deadline in ((not_rcs, 10), (expiring, TTL_DEADLINE)):
            send(flows[flow].functions["send_message"].url, to, str(uuid.uuid4()), deadline)
            phones.append(to)
    if not wait_for_sms(twilio, phones, 120):
        raise RuntimeError("a warm-up SMS never came")


def measure(planned: list[dict], flows: dict, sims: dict, twilio: FakeTwilio, latency: float) -> dict:
    """Per flow: the seconds from due to revoke and to SMS for each kind of user, SMS counts."""
    from functions import store
    from functions.model import Message

    sms_at, sms_count = {}, {}
    for record in twilio.sent:
        sms_at.setdefault(record["to"], record["time"])
        sms_count[record["to"]] = sms_count.get(record["to"], 0) + 1
    out = {flow: {m: [] for m in MEASURES} | {"missing": 0, "duplicates": 0} for flow in flows}
    events = {
        flow: {
            w["event"]["messageId"]: datetime.fromisoformat(w["event"]["sendTime"]).timestamp()
            for w in sims[flow].webhooks
            if w["event"].get("eventType") == "TTL_EXPIRATION_REVOKED"
        }
        for flow in flows
    }
    for flow in flows:
        requests = sims[flow].requests
        revoked = {r["message_id"]: r["time"] for r in requests if r["kind"] == "revoke" and r["status"] == 200}
        answered_404 = {r["message_id"]: r["time"] + latency for r in requests if r["status"] == 404}
        figures = out[flow]
        for p in (p for p in planned if p["flow"] == flow):
            texted = sms_at.get(p["phone"])
            figures["duplicates"] += max(0, sms_count.get(p["phone"], 0) - 1)
            if texted is None:
                figures["missing"] += 1
                continue
            if p["user"] == "never":
                doc = store.client().collection(flows[flow].collection).document(p["message_id"]).get()
                deadline = Message.from_doc(doc.to_dict()).revoke_at.timestamp()
                figures["deadline→SMS"].append(texted - deadline)
                if p["deadline"] == 10:
                    figures["deadline→SMS, 10 s"].append(texted - deadline)
                if p["message_id"] in revoked:
                    figures["deadline→revoke"].append(revoked[p["message_id"]] - deadline)
            elif p["user"] == "not_rcs" and p["message_id"] in answered_404:
                figures["404→SMS"].append(texted - answered_404[p["message_id"]])
            elif p["user"] == "ttl" and p["message_id"] in events[flow]:
                figures["TTL revoked→SMS"].append(texted - events[flow][p["message_id"]])
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.precision", description=__doc__.split("\n\n")[0])
    parser.add_argument("--period", type=float, default=60.0, help="scheduler period, seconds (60, as in production)")
    parser.add_argument("--users", type=int, default=20, help="users of each kind per flow (20)")
    parser.add_argument("--deadlines", default="10,30", help="revoke_after_seconds, alternating (10,30)")
    parser.add_argument("--ttl", type=float, default=15.0, help="seconds from create to the platform's expiry (15)")
    parser.add_argument("--spread", type=float, help="seconds the sends are spread over (default: one period)")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds each RBM / Twilio call takes (0.1)")
    parser.add_argument("--grace", type=float, default=5.0, help="REVOKE_GRACE_SECONDS (5, the default)")
    parser.add_argument("--flows", default=",".join(KINDS), help="flows to run (before,after)")
    args = parser.parse_args(argv)
    kinds = [k for k in KINDS if k in args.flows.split(",")]
    deadlines = [int(d) for d in args.deadlines.split(",")]
    spread = args.spread if args.spread is not None else args.period
    load_before = load_average()

    with baseline() as checkout, Run("precision") as run:
        run.emulator("pubsub")
        run.emulator("firestore")
        twilio = run.enter_context(FakeTwilio(TWILIO_SID, TWILIO_TOKEN))
        twilio.set_delay(args.latency)
        tasks = run.enter_context(FakeTasks())
        sims, flows = {}, {}
        for kind in kinds:
            sims[kind] = run.enter_context(Expiring("http://127.0.0.1:9", CLIENT_TOKEN, agent_id=AGENT))
            flows[kind] = start_flow(
                run,
                kind,
                sims[kind].url,
                twilio.url,
                args.period,
                checkout=checkout if kind == "before" else REPO_ROOT,
                tasks_url=tasks.url,
                events=True,
                settings={"REVOKE_GRACE_SECONDS": f"{args.grace:g}"},
            )
            sims[kind].webhook_url = flows[kind].functions["receive_webhook"].url
            if not sims[kind].register_webhook():
                raise RuntimeError("the webhook handshake failed")
        planned = [p for p in plan(args.users, deadlines) if p["flow"] in kinds]
        for p in planned:
            sim = sims[p["flow"]]
            if p["user"] == "not_rcs":
                sim.set_phone(p["phone"], "not_rcs")
                sim.set_latency("create", p["phone"], args.latency)
            else:
                sim.set_phone(p["phone"], "slow", delay=args.latency)
            if p["user"] == "ttl":
                sim.expire_after(p["phone"], args.ttl)
        scheduler = schedule(run, list(flows.values()), args.period)
        warm_up(flows, sims, twilio)
        print(f"scheduler every {args.period:g} s; sending {len(planned)} messages over {spread:g} s …", flush=True)
        launch(flows, planned, args.users, spread)
        timeout = max(deadlines) + args.ttl + args.period + args.grace + 60
        print(f"sent; waiting up to {timeout:.0f} s for every SMS …", flush=True)
        done = wait_for_sms(twilio, [p["phone"] for p in planned], timeout)
        time.sleep(5.0)  # a duplicate would come now
        results = measure(planned, flows, sims, twilio, args.latency)
        scheduler.stop()
        loads = {"before": load_before, "after": load_average()}

    print(
        f"\nmachine load average before/after: {loads['before']:.2f}/{loads['after']:.2f} ({os.cpu_count()} CPUs)"
        + ("" if done else "\nnote: not every SMS arrived before the timeout; see `missing`")
    )
    rows = [[flow, m, *percentiles(results[flow][m])] for m in MEASURES for flow in kinds]
    table(
        f"Seconds until due work is done, scheduler period {args.period:g} s, grace {args.grace:g} s, "
        f"fakes answer in {args.latency * 1000:g} ms, {args.users} users of each kind per flow",
        ["flow", "measure", "n", "p50 s", "p99 s"],
        rows,
    )
    table(
        "Fates",
        ["flow", "SMS missing", "duplicate SMS"],
        [[flow, results[flow]["missing"], results[flow]["duplicates"]] for flow in kinds],
    )
    targets = {
        "deadline→revoke": WINDOW,
        "deadline→SMS": WINDOW + args.grace,
        "404→SMS": WINDOW,
        "TTL revoked→SMS": WINDOW,
    }
    verdicts = {}
    for m, target in targets.items():
        n, _, p99 = percentiles(results.get("after", {}).get(m, []))
        if n:
            verdicts[f"{m} p99, after"] = f"{p99:.2f} s (target <= {target:g} s) {'ok' if p99 <= target else 'MISSED'}"
    verdicts["lost or duplicated SMS"] = (
        "none" if not any(r["missing"] or r["duplicates"] for r in results.values()) else "SOME (see Fates)"
    )
    table("Against the targets", ["measure", "result"], [[k, v] for k, v in verdicts.items()])
    run.save({"args": vars(args), "results": results, "load_average": loads, "verdicts": verdicts})


if __name__ == "__main__":
    main()
