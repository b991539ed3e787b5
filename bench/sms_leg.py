"""The SMS leg under ambiguous failures: how many fallbacks end UNKNOWN per 1,000
whose first SMS attempt fails ambiguously, before and after issue 19.

N messages whose SMS is due are seeded straight into Firestore; the fake provider
is scripted (`script_failure`) so that each message's FIRST attempt fails in a
documented ambiguous way drawn from a seeded mix (500, 502, 504, a reset or a close
after the request was read; `timeout`, a hold past the relay's 15 s read timeout,
only if asked for), half of them after the provider really sent the SMS and half
before. The real send_fallbacks process (no SMS queue: it sends itself) is then
called again and again, as Cloud Scheduler would, until every fallback is final.
Three provider modes:

1. signed gateway, undeclared (`SMS_WEBHOOK_IDEMPOTENT=false`): the rule before
   issue 19, for every provider — an ambiguous failure ends UNKNOWN, never retried;
2. signed gateway declared idempotent: retried under the same Idempotency-Key;
3. Twilio, reconciled through its Messages list (no status callbacks: the
   lookup alone).

`--compare DIR` adds Twilio served from another checkout (e.g. `git archive
29a75b6^ | tar -x -C DIR`, the code before reconciliation): a measured "before"
for Twilio, in the same run.

    python -m bench.sms_leg [--messages 1000] [--mix 500,502,504,reset,close] [--seed 19] [--compare DIR]
"""

import argparse
import os
import random
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

from bench.common import PROJECT, Run, http_session, load_average, parallel, seed, table
from functions import config
from local.fake_sms import CLOSE_AFTER_READ, READ_TIMEOUT, RESET_AFTER_READ, FakeSmsWebhook, FakeTwilio, SmsFake
from local.processes import REPO_ROOT, create_topic, reset_firestore

AGENT = "bench@rbm.goog"
TWILIO_SID, TWILIO_TOKEN = "AC" + "9" * 32, "bench-twilio-token"
GATEWAY_SECRET = "bench-gateway-secret"
FAILURES = {
    "500": 500,
    "502": 502,
    "504": 504,
    "reset": RESET_AFTER_READ,
    "close": CLOSE_AFTER_READ,
    "timeout": READ_TIMEOUT,
}
MODES = ("gateway, undeclared (before)", "gateway, idempotent", "Twilio, reconciled")
COMPARED = "Twilio, compared checkout"
# Short enough that retries and lookups come within seconds (tests/support.py's SWEEP_ENV
# uses the same orders of magnitude); the budget lets one call get through every due message.
SWEEP_ENV = {
    "RBM_AGENT_ID": AGENT,
    "LEASE_SECONDS": "20",
    "RETRY_BACKOFF_SECONDS": "0.5",
    "SWEEP_BUDGET_SECONDS": "600",
}


def phone(i: int) -> str:
    return f"+4477019{i:05d}"


def due(count: int):
    """Revoked messages whose SMS fallback is due now (as tests/integration/test_sweeps.py seeds them)."""
    from functions import store
    from functions.model import Fallback, Message, State

    past = store.now() - timedelta(seconds=1)
    return [
        Message(
            f"sms-leg-{i:05d}",
            phone(i),
            AGENT,
            state=State.REVOKED,
            fallback=Fallback.DUE,
            fallback_text=f"your code is {i:05d}",
            time_sensitive=True,
            revoke_at=past,
            fallback_at=past,
        )
        for i in range(count)
    ]


def failure_mix(count: int, mix: list[str], rng: random.Random) -> list[tuple[str, bool]]:
    """Each message's first failure, drawn from `mix`, and whether the provider sent
    the SMS before failing: exactly half did, shuffled."""
    sends = [i % 2 == 0 for i in range(count)]
    rng.shuffle(sends)
    return [(rng.choice(mix), sent) for sent in sends]


def pending() -> int:
    """Fallbacks not final yet: DUE, SENDING or CHECKING."""
    from google.cloud.firestore_v1.base_query import FieldFilter

    from functions import store
    from functions.model import Fallback

    open_ = [f.value for f in (Fallback.DUE, Fallback.SENDING, Fallback.CHECKING)]
    return sum(1 for _ in store.messages().where(filter=FieldFilter("fallback", "in", open_)).select([]).stream())


def finals(message_ids: list[str]) -> list:
    from functions import store

    return parallel(store.get_message, message_ids, 8)


def run_mode(
    run: Run,
    host: str,
    mode: str,
    fake: SmsFake,
    env: dict,
    cwd: Path,
    count: int,
    mix: list[str],
    rng_seed: int,
) -> dict:
    """Seeds, scripts the fake, sweeps (send_fallbacks served from the checkout `cwd`) until
    every fallback is final; answers the figures of the mode."""
    reset_firestore(host, PROJECT)
    fake.reset()
    messages = due(count)
    drawn = failure_mix(count, mix, random.Random(rng_seed))
    for m, (failure, sends) in zip(messages, drawn, strict=True):
        fake.script_failure(m.phone, FAILURES[failure], sends=sends)
    process = run.function("send_fallbacks", {**SWEEP_ENV, **env}, cwd=cwd)
    seed(messages)
    started, sweeps = time.monotonic(), 0
    while True:
        response = http_session.post(process.url, json={}, timeout=900)
        response.raise_for_status()
        sweeps += 1
        left = pending()
        if not left:
            break
        print(f"  {mode}: sweep {sweeps}, {left} not final", flush=True)
        time.sleep(0.2)
    wall = time.monotonic() - started
    process.stop()
    after = finals([m.message_id for m in messages])
    texts = Counter(s["to"] for s in fake.sent)
    received = Counter(texts.get(m.phone, 0) for m in messages)
    states = Counter(m.fallback.value for m in after)
    attempts = sum(m.fallback_attempts for m in after)
    by_failure: dict[str, Counter] = {}
    for m, (failure, sends) in zip(after, drawn, strict=True):
        by_failure.setdefault(f"{failure} {'sent' if sends else 'not sent'}", Counter())[m.fallback.value] += 1
    figures = {
        "messages": count,
        "wall_s": round(wall, 1),
        "sweeps": sweeps,
        "final": dict(states),
        "sms_received": {str(k): v for k, v in sorted(received.items())},
        "attempts": attempts,
        "send_requests": fake.received,
        "lookups": attempts - fake.received if isinstance(fake, FakeTwilio) else 0,
        "by_failure": {k: dict(v) for k, v in sorted(by_failure.items())},
    }
    print(f"{mode}: {dict(states)} in {wall:.1f} s, {sweeps} sweeps", flush=True)
    return figures


def per_thousand(value: int, count: int) -> float:
    return 1000 * value / count


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sms_leg", description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000, help="messages per mode, each failing once (1000)")
    parser.add_argument(
        "--mix",
        default="500,502,504,reset,close",
        help=f"first failures to draw from, comma-separated, of {','.join(FAILURES)}; "
        "each timeout holds a sweep thread past the relay's 15 s read timeout",
    )
    parser.add_argument("--seed", type=int, default=19, help="seed of the failure draw (19)")
    parser.add_argument("--modes", default="1,2,3", help="modes to run, of 1,2,3 (see above)")
    parser.add_argument("--compare", type=Path, help="another checkout whose send_fallbacks also runs with Twilio")
    args = parser.parse_args(argv)
    mix = args.mix.split(",")
    unknown = set(mix) - set(FAILURES)
    if unknown:
        parser.error(f"unknown failures: {', '.join(sorted(unknown))}")
    chosen = [MODES[int(k) - 1] for k in args.modes.split(",")]
    load_before = load_average()

    with Run("sms_leg") as run:
        host = run.emulator("firestore")
        run.emulator("pubsub")  # each message change publishes its outcome events
        create_topic(PROJECT, config.outcomes_topic())
        gateway = run.enter_context(FakeSmsWebhook(secret=GATEWAY_SECRET))
        twilio = run.enter_context(FakeTwilio(TWILIO_SID, TWILIO_TOKEN))

        def gateway_env(idempotent: bool) -> dict:
            return {
                "SMS_PROVIDER": "webhook",
                "SMS_WEBHOOK_URL": gateway.url + "/send",
                "SMS_WEBHOOK_SECRET": GATEWAY_SECRET,
                "SMS_WEBHOOK_IDEMPOTENT": "true" if idempotent else "false",
            }

        twilio_env = {
            "SMS_PROVIDER": "twilio",
            "TWILIO_ACCOUNT_SID": TWILIO_SID,
            "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
            "TWILIO_FROM_NUMBER": "+15005550006",
            "TWILIO_API_BASE": twilio.url,
        }
        setups = {
            MODES[0]: (gateway, gateway_env(False), REPO_ROOT),
            MODES[1]: (gateway, gateway_env(True), REPO_ROOT),
            MODES[2]: (twilio, twilio_env, REPO_ROOT),
        }
        if args.compare:
            setups[COMPARED] = (twilio, twilio_env, args.compare.resolve())
            chosen.append(COMPARED)
        results = {mode: run_mode(run, host, mode, *setups[mode], args.messages, mix, args.seed) for mode in chosen}

        loads = {"before": load_before, "after": load_average()}
        print(
            f"\nmachine load average before/after: {loads['before']:.2f}/{loads['after']:.2f} ({os.cpu_count()} CPUs)"
        )
        n = args.messages
        table(
            f"{n:,} messages per mode, each first SMS attempt failing ambiguously ({args.mix}; "
            f"half after the provider sent it); figures per 1,000",
            [
                "mode",
                "UNKNOWN",
                "SENT",
                "FAILED",
                "users with 0 / 1 / 2+ SMS",
                "attempts/msg",
                "sends/msg",
                "lookups/msg",
                "wall s",
                "sweeps",
            ],
            [
                [
                    mode,
                    per_thousand(r["final"].get("UNKNOWN", 0), n),
                    per_thousand(r["final"].get("SENT", 0), n),
                    per_thousand(r["final"].get("FAILED", 0), n),
                    " / ".join(
                        f"{per_thousand(v, n):g}"
                        for v in (
                            r["sms_received"].get("0", 0),
                            r["sms_received"].get("1", 0),
                            sum(c for k, c in r["sms_received"].items() if int(k) >= 2),
                        )
                    ),
                    r["attempts"] / n,
                    r["send_requests"] / n,
                    r["lookups"] / n,
                    r["wall_s"],
                    r["sweeps"],
                ]
                for mode, r in results.items()
            ],
        )
        for mode, r in results.items():
            table(
                f"{mode}: final fallback by first failure",
                ["first failure", "final fallbacks"],
                [[k, ", ".join(f"{s} {c}" for s, c in v.items())] for k, v in r["by_failure"].items()],
            )
        run.save({"messages": n, "mix": mix, "seed": args.seed, "modes": results, "load_average": loads})


if __name__ == "__main__":
    main()
