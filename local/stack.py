"""The whole pipeline on one machine, on loopback: `make run`.

Google's Pub/Sub and Firestore emulators; the topics and push subscriptions
of infra/topology.json (the definition production uses); every entry point as
its own functions-framework process, as Cloud Run runs them; a scheduler loop
calling the sweeps as Cloud Scheduler would; the RBM platform simulator and a
fake Twilio. Then a demo scenario (local/demo.py). Ctrl-C, or the end of the
demo, stops every process started here, and only those.
"""

import argparse
import json
import os
import tempfile
import threading
from pathlib import Path

import requests

from local.fake_sms import FakeTwilio
from local.simulator import Simulator
from local.processes import (
    PROJECT, REPO_ROOT, Emulator, FunctionProcess, create_pull_subscription, create_push_subscription, create_topic,
    delete_subscription, delete_topic,
)

TOPOLOGY = json.loads((REPO_ROOT / "infra" / "topology.json").read_text())
CLIENT_TOKEN = "local-client-token"
AGENT = "demo-agent@rbm.goog"
TWILIO_SID, TWILIO_TOKEN = "AC" + "0" * 32, "local-twilio-token"
HTTP_FUNCTIONS = ("receive_webhook", "send_message", "revoke_expired", "send_fallbacks")


class _Topology:
    """Stops like a process: deletes the topics and subscriptions of infra/topology.json."""

    def stop(self) -> None:
        for subscription in TOPOLOGY["subscriptions"]:
            delete_subscription(PROJECT, subscription["name"])
        delete_subscription(PROJECT, TOPOLOGY["dead_letter_subscription"])
        delete_topic(PROJECT, TOPOLOGY["events_topic"])
        delete_topic(PROJECT, TOPOLOGY["dead_letter_topic"])


class Stack:
    """Starts and stops the pipeline. `functions[name]` is each entry point's process."""

    def __init__(self, workdir: Path | None = None, period: float = 5.0, settings: dict | None = None,
                 simulator_options: dict | None = None, pubsub_host: str | None = None, firestore_host: str | None = None):
        """Emulator hosts given are used as they are; otherwise the stack starts its own."""
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="rbm-relay-"))
        self.pubsub_host, self.firestore_host = pubsub_host, firestore_host
        self.period, self.settings, self.simulator_options = period, settings or {}, simulator_options or {}
        self.functions: dict[str, FunctionProcess] = {}
        self.started: list = []
        self._stop = threading.Event()

    def _env(self) -> dict:
        return {
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "PUBSUB_EMULATOR_HOST": self.pubsub_host,
            "FIRESTORE_EMULATOR_HOST": self.firestore_host,
            "RBM_CLIENT_TOKEN": CLIENT_TOKEN,
            "RBM_EVENTS_TOPIC": TOPOLOGY["events_topic"],
            "RBM_DEAD_LETTER_TOPIC": TOPOLOGY["dead_letter_topic"],
            "RBM_AGENT_ID": AGENT,
            "RBM_API_ENDPOINT": self.rbm.url,
            "SMS_PROVIDER": "twilio",
            "TWILIO_ACCOUNT_SID": TWILIO_SID,
            "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
            "TWILIO_FROM_NUMBER": "+15005550006",
            "TWILIO_API_BASE": self.sms.url,
            # Local time runs in seconds, not minutes.
            "LEASE_SECONDS": "10",
            "RETRY_BACKOFF_SECONDS": "1",
            "RBM_RETRY_SECONDS": "1",
            "REVOKE_MAX_ATTEMPTS": "3",
            "PENDING_RESEND_SECONDS": "5",
            **self.settings,
        }

    def _start(self, thing):
        self.started.append(thing)
        return thing.start()

    def start(self) -> "Stack":
        self.pubsub_host = self.pubsub_host or self._start(Emulator("pubsub", self.workdir, PROJECT)).host
        self.firestore_host = self.firestore_host or self._start(Emulator("firestore", self.workdir, PROJECT)).host
        os.environ.update(GOOGLE_CLOUD_PROJECT=PROJECT, PUBSUB_EMULATOR_HOST=self.pubsub_host,
                          FIRESTORE_EMULATOR_HOST=self.firestore_host)
        self.sms = self._start(FakeTwilio(account_sid=TWILIO_SID, auth_token=TWILIO_TOKEN))
        self.rbm = self._start(Simulator("http://127.0.0.1:0", CLIENT_TOKEN, agent_id=AGENT, **self.simulator_options))
        for name in HTTP_FUNCTIONS:
            self.functions[name] = self._start(self._function(name))
        self.rbm.webhook_url = self.functions["receive_webhook"].url
        self._topology()
        if not self.rbm.register_webhook():
            raise RuntimeError("the webhook handshake failed")
        threading.Thread(target=self._scheduler, name="scheduler", daemon=True).start()
        return self

    def _function(self, name: str) -> FunctionProcess:
        return FunctionProcess(name, self._env(), log_path=self.workdir / f"{name}.log")

    def _topology(self) -> None:
        """Topics and subscriptions as infra declares them, pushing to local processes.
        Removed again at stop(), so emulators given to the stack are left as found."""
        events, dead = TOPOLOGY["events_topic"], TOPOLOGY["dead_letter_topic"]
        create_topic(PROJECT, events)
        create_topic(PROJECT, dead)
        create_pull_subscription(PROJECT, dead, TOPOLOGY["dead_letter_subscription"])
        self.started.append(_Topology())
        for subscription in TOPOLOGY["subscriptions"]:
            process = self.functions[subscription["entry_point"]] = self._start(self._function(subscription["entry_point"]))
            create_push_subscription(PROJECT, events, subscription["name"], f"{process.url}/projects/{PROJECT}/topics/{events}",
                                     dead_letter_topic=dead, max_delivery_attempts=TOPOLOGY["max_delivery_attempts"],
                                     filter=subscription["filter"])

    def sweep(self, name: str) -> dict:
        """One call of a scheduled function, as Cloud Scheduler makes it."""
        response = requests.post(self.functions[name].url, json={}, timeout=120)
        return response.json() if response.ok else {"error": response.status_code}

    def _scheduler(self) -> None:
        while not self._stop.wait(self.period):
            for name in ("revoke_expired", "send_fallbacks"):
                try:
                    self.sweep(name)
                except requests.RequestException:
                    pass  # a process being restarted by a fault test; the next tick tries again

    def send(self, **body) -> requests.Response:
        return requests.post(self.functions["send_message"].url, json=body, timeout=30)

    def stop(self) -> None:
        self._stop.set()
        for thing in reversed(self.started):
            try:
                thing.stop()
            except Exception as exc:  # keep stopping the rest
                print(f"stopping {thing!r}: {exc}")

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()


def main(argv=None) -> int:
    from local import demo

    parser = argparse.ArgumentParser(prog="make run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--period", type=float, default=5.0, help="seconds between sweeps, as the scheduler (5)")
    parser.add_argument("--population", type=int, default=12, help="messages in the demo (12)")
    parser.add_argument("--deadline", type=int, default=20, help="revoke_after_seconds of each message (20)")
    parser.add_argument("--timeout", type=float, default=100, help="give the demo at most this long (100 s)")
    parser.add_argument("--keep", action="store_true", help="keep the stack running after the demo until Ctrl-C")
    args = parser.parse_args(argv)
    print("starting the emulators, the functions, the RBM simulator and the SMS fake …", flush=True)
    with Stack(period=args.period) as stack:
        print(f"webhook {stack.functions['receive_webhook'].url}   send_message {stack.functions['send_message'].url}\n"
              f"RBM simulator {stack.rbm.url}   fake Twilio {stack.sms.url}   logs in {stack.workdir}", flush=True)
        try:
            ok = demo.run(stack, population=args.population, deadline=args.deadline, timeout=args.timeout)
            if args.keep:
                print("stack running; Ctrl-C stops it", flush=True)
                threading.Event().wait()
        except KeyboardInterrupt:
            ok = True
        print("stopping …", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
