"""The whole pipeline on one machine, on loopback: `make run`.

Google's Pub/Sub and Firestore emulators and the Cloud Tasks fake
(local/fake_tasks.py); the topics, push subscriptions and queues of
infra/topology.json (the definition production uses: the events fanned out to
the subscribers; the rbm-calls and sms-sends queues, with their rates and
retries, whose tasks call process_due_work at each message's due time); every
entry point as its own functions-framework process, as Cloud Run runs them
(with their deployed threads); a scheduler calling revoke_expired and
send_fallbacks on the grid of the period as Cloud Scheduler does (never two
runs of one job at once), each run one short pass that enqueues what a lost
task left due; the RBM platform simulator and a fake Twilio, or an RBM REST
root and a signed SMS webhook gateway of your own. Then a demo scenario
(local/demo.py), or, with --no-demo, the URL of every function, the emulators
and the Cloud Tasks endpoint and queues as one JSON line on stdout and the
stack running until interrupted. Ctrl-C, or the end of the demo, stops every
process started here, and only those.

Each function process records its requests' intervals (local/request_times.py):
`Stack.request_seconds()` is the time each spent inside requests, what
request-based billing charges.
"""

import argparse
import json
import math
import os
import signal
import sys
import tempfile
import threading
import urllib.parse
from pathlib import Path

import requests

from functions.outbound import MAX_REVOKE_SECONDS, MIN_REVOKE_SECONDS
from local.fake_sms import FakeTwilio
from local.fake_tasks import FakeTasks
from local.processes import (
    PROJECT,
    REPO_ROOT,
    RUNTIME,
    Emulator,
    FunctionProcess,
    create_pull_subscription,
    create_push_subscription,
    create_queue,
    create_topic,
    delete_subscription,
    delete_topic,
    free_port,
)
from local.pusher import Pusher
from local.scheduler import Scheduler
from local.simulator import Simulator

TOPOLOGY = json.loads((REPO_ROOT / "infra" / "topology.json").read_text())
OUTCOMES_SUBSCRIPTION = "rbm-outcomes-local"  # the demo's view of the outcome events
OUTCOMES_PUSH_SUBSCRIPTION = "rbm-outcomes-push"  # delivered to --outcomes-push-url
CLIENT_TOKEN = "local-client-token"
CONVERSATION_ID_KEY = "local-conversation-id-key"  # production's comes from Secret Manager
AGENT = "demo-agent@rbm.goog"
TWILIO_SID, TWILIO_TOKEN = "AC" + "0" * 32, "local-twilio-token"
HTTP_FUNCTIONS = (
    "receive_webhook",
    "receive_sms_status",
    "send_message",
    "send_batch",
    "revoke_expired",
    "send_fallbacks",
)
SCHEDULED = ("revoke_expired", "send_fallbacks")
WORKER = "process_due_work"  # every task's HTTP target (WORKER_URL)
# Every function runs with its deployed threads (THREADS = its concurrency,
# local/processes.py), but one worker process stands for the autoscaled fleet:
# as many tasks at once as production's max instances × per-instance
# concurrency (infra/functions.json). A task may wait up to a second for its
# due time, so fewer would hold the queues' dispatches back.
WORKER_FLEET = RUNTIME[WORKER]["max_instances"] * RUNTIME[WORKER]["concurrency"]
# The queues' location and the account the tasks' OIDC tokens name; the fake checks neither.
TASKS_LOCATION = "europe-west1"
TASKS_SERVICE_ACCOUNT = f"rbm-relay-tasks@{PROJECT}.iam.gserviceaccount.com"
# Each queue's full name, by its key in topology.json: rbm → RBM_TASKS_QUEUE, sms → SMS_TASKS_QUEUE.
QUEUES = {
    key: f"projects/{PROJECT}/locations/{TASKS_LOCATION}/queues/{queue['name']}"
    for key, queue in TOPOLOGY["queues"].items()
}
# With the simulator, local time runs in seconds, not minutes; against an RBM
# root of your own the relay keeps production's defaults.
FAST = {
    "LEASE_SECONDS": "10",
    "RETRY_BACKOFF_SECONDS": "1",
    "RBM_RETRY_SECONDS": "1",
    "REVOKE_MAX_ATTEMPTS": "3",
    "PENDING_RESEND_SECONDS": "5",
    "OUTBOX_GRACE_SECONDS": "2",
}


class _Topology:
    """Creates topics and subscriptions, and stops like a process: deletes what it
    created, so emulators given to the stack are left as found."""

    def __init__(self):
        self.topics: list[str] = []
        self.subscriptions: list[str] = []

    def start(self) -> "_Topology":
        return self

    def topic(self, name: str) -> None:
        create_topic(PROJECT, name)
        self.topics.append(name)

    def pull(self, topic: str, name: str) -> None:
        create_pull_subscription(PROJECT, topic, name)
        self.subscriptions.append(name)

    def push(
        self, topic: str, name: str, process: FunctionProcess, dead_letter: str, attempts: int, filter: str
    ) -> None:
        """Pushed to `process`, with a dead-letter policy and a filter."""
        create_push_subscription(
            PROJECT,
            topic,
            name,
            f"{process.url}/projects/{PROJECT}/topics/{topic}",
            dead_letter_topic=dead_letter,
            max_delivery_attempts=attempts,
            filter=filter,
        )
        self.subscriptions.append(name)

    def stop(self) -> None:
        for name in reversed(self.subscriptions):
            delete_subscription(PROJECT, name)
        for name in reversed(self.topics):
            delete_topic(PROJECT, name)


class Stack:
    """Starts and stops the pipeline. `functions[name]` is each entry point's process;
    `rbm` the simulator and `sms` the fake Twilio, or None where the stack was given
    an RBM root or an SMS webhook gateway of its own."""

    def __init__(
        self,
        workdir: Path | None = None,
        period: float = 5.0,
        settings: dict | None = None,
        simulator_options: dict | None = None,
        pubsub_host: str | None = None,
        firestore_host: str | None = None,
        rbm_root: str | None = None,
        sms_webhook: tuple[str, str] | None = None,
        outcomes_push_url: str | None = None,
    ):
        """Emulator hosts given are used as they are; otherwise the stack starts its own
        (the Cloud Tasks fake always is the stack's own). `period`: seconds between
        scheduled runs (Cloud Scheduler's). `rbm_root`:
        the RBM REST root the relay calls instead of the simulator's; `sms_webhook`:
        (url, secret) of a signed SMS webhook gateway instead of the fake Twilio;
        `outcomes_push_url`: where the outcome events are pushed, as a push
        subscription would. `settings` go over everything else."""
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="rbm-relay-"))
        self.pubsub_host, self.firestore_host = pubsub_host, firestore_host
        self.period, self.settings, self.simulator_options = period, settings or {}, simulator_options or {}
        self.rbm_root, self.sms_webhook = rbm_root, sms_webhook
        self.outcomes_push_url = outcomes_push_url
        self.rbm: Simulator | None = None
        self.sms: FakeTwilio | None = None
        self.tasks: FakeTasks | None = None
        self.functions: dict[str, FunctionProcess] = {}
        # receive_sms_status's port, known before any function starts: the senders pass its
        # URL as StatusCallback (SMS_STATUS_CALLBACK_URL), and it checks Twilio's signatures against it.
        self.status_port = free_port()
        self.worker_port = free_port()  # so is the worker's: every function that sets a timer names it (WORKER_URL)
        self.started: list = []

    def _env(self) -> dict:
        env = {
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "PUBSUB_EMULATOR_HOST": self.pubsub_host,
            "FIRESTORE_EMULATOR_HOST": self.firestore_host,
            "RBM_CLIENT_TOKEN": CLIENT_TOKEN,
            "RBM_EVENTS_TOPIC": TOPOLOGY["events_topic"],
            "RBM_DEAD_LETTER_TOPIC": TOPOLOGY["dead_letter_topic"],
            "RBM_OUTCOMES_TOPIC": TOPOLOGY["outcomes_topic"],
            "RBM_AGENT_ID": AGENT,
            "CONVERSATION_ID_KEY": CONVERSATION_ID_KEY,
            "SMS_STATUS_CALLBACK_URL": f"http://127.0.0.1:{self.status_port}",
            "CLOUD_TASKS_ENDPOINT": self.tasks.url if self.tasks else "",
            "RBM_TASKS_QUEUE": QUEUES["rbm"],
            "SMS_TASKS_QUEUE": QUEUES["sms"],
            "WORKER_URL": f"http://127.0.0.1:{self.worker_port}",
            "TASKS_SERVICE_ACCOUNT": TASKS_SERVICE_ACCOUNT,
        }
        if self.rbm:
            env.update(RBM_API_ENDPOINT=self.rbm.url, **FAST)
        else:
            env.update(RBM_API_ENDPOINT=self.rbm_root)
        if self.sms:
            env.update(
                SMS_PROVIDER="twilio",
                TWILIO_ACCOUNT_SID=TWILIO_SID,
                TWILIO_AUTH_TOKEN=TWILIO_TOKEN,
                TWILIO_FROM_NUMBER="+15005550006",
                TWILIO_API_BASE=self.sms.url,
            )
        else:
            url, secret = self.sms_webhook
            env.update(SMS_PROVIDER="webhook", SMS_WEBHOOK_URL=url, SMS_WEBHOOK_SECRET=secret)
        return {**env, **self.settings}

    def _start(self, thing):
        self.started.append(thing)
        return thing.start()

    def start(self) -> "Stack":
        self.pubsub_host = self.pubsub_host or self._start(Emulator("pubsub", self.workdir, PROJECT)).host
        self.firestore_host = self.firestore_host or self._start(Emulator("firestore", self.workdir, PROJECT)).host
        os.environ.update(
            GOOGLE_CLOUD_PROJECT=PROJECT,
            PUBSUB_EMULATOR_HOST=self.pubsub_host,
            FIRESTORE_EMULATOR_HOST=self.firestore_host,
            CONVERSATION_ID_KEY=CONVERSATION_ID_KEY,  # so this process's reads key conversations as the functions do
        )
        if not self.sms_webhook:
            self.sms = self._start(FakeTwilio(account_sid=TWILIO_SID, auth_token=TWILIO_TOKEN))
        if not self.rbm_root:
            self.rbm = self._start(
                Simulator("http://127.0.0.1:0", CLIENT_TOKEN, agent_id=AGENT, **self.simulator_options)
            )
        self.tasks = self._start(FakeTasks())
        for key, name in QUEUES.items():
            create_queue(self.tasks.url, name, TOPOLOGY["queues"][key])
        for name in HTTP_FUNCTIONS:
            self.functions[name] = self._start(self._function(name))
        worker = self._function(WORKER, THREADS=str(WORKER_FLEET))  # the fleet in one process
        self.functions[WORKER] = self._start(worker)
        self._topology()
        if self.rbm:
            self.rbm.webhook_url = self.functions["receive_webhook"].url
            if not self.rbm.register_webhook():
                raise RuntimeError("the webhook handshake failed")
        # Each scheduled function called on the grid of the period, the first call at once,
        # one run of each at a time, as Cloud Scheduler does (local/scheduler.py).
        urls = [self.functions[name].url for name in SCHEDULED]
        self._start(Scheduler(urls, self.period, timeout=max(RUNTIME[name]["timeout_seconds"] for name in SCHEDULED)))
        return self

    def _function(self, name: str, **env: str) -> FunctionProcess:
        port = {"receive_sms_status": self.status_port, WORKER: self.worker_port}.get(name)
        return FunctionProcess(name, {**self._env(), **env}, port=port, log_path=self.workdir / f"{name}.log")

    def _topology(self) -> None:
        """Topics and subscriptions as infra declares them, pushing to local processes:
        the events to their subscribers; the outcome events (`_outcomes`)."""
        topology = self._start(_Topology())
        self._outcomes(topology)
        events, dead = TOPOLOGY["events_topic"], TOPOLOGY["dead_letter_topic"]
        topology.topic(events)
        topology.topic(dead)
        topology.pull(dead, TOPOLOGY["dead_letter_subscription"])
        for subscription in TOPOLOGY["subscriptions"]:
            process = self.functions[subscription["entry_point"]] = self._start(
                self._function(subscription["entry_point"])
            )
            topology.push(
                events, subscription["name"], process, dead, TOPOLOGY["max_delivery_attempts"], subscription["filter"]
            )

    def _outcomes(self, topology: _Topology) -> None:
        """The outcomes topic; a pull subscription the demo reads (OUTCOMES_SUBSCRIPTION), and
        with `outcomes_push_url` one pushed there as a Pub/Sub push subscription would."""
        topic = TOPOLOGY["outcomes_topic"]
        topology.topic(topic)
        topology.pull(topic, OUTCOMES_SUBSCRIPTION)
        if self.outcomes_push_url:
            topology.pull(topic, OUTCOMES_PUSH_SUBSCRIPTION)
            self._start(Pusher(PROJECT, OUTCOMES_PUSH_SUBSCRIPTION, self.outcomes_push_url, 1, timeout=60, backoff=10))

    def urls(self) -> dict[str, str]:
        """The URL of every function, by entry point."""
        return {name: process.url for name, process in self.functions.items()}

    def cloud_tasks(self) -> dict:
        """Where the tasks go: the fake's API root (CLOUD_TASKS_ENDPOINT), each queue's full
        name by its key in topology.json, and the account the tasks act as."""
        return {
            "endpoint": self.tasks.url if self.tasks else None,
            "queues": QUEUES,
            "service_account": TASKS_SERVICE_ACCOUNT,
        }

    def request_seconds(self, since: float = 0.0, until: float = math.inf) -> dict[str, float]:
        """Seconds each function (by entry point) spent inside requests between `since`
        and `until` (epoch seconds; by default all along): the union of its requests'
        intervals, what request-based billing charges one instance for
        (local/request_times.py). The worker is one process standing for the fleet, so
        under load its figure is the fleet's busy time, not the sum over instances;
        idle, they agree. Requests still running are not counted."""
        return {name: process.request_seconds(since, until) for name, process in self.functions.items()}

    def sweep(self, name: str) -> dict:
        """One call of a scheduled function, as Cloud Scheduler makes it: one short pass."""
        response = requests.post(self.functions[name].url, json={}, timeout=RUNTIME[name]["timeout_seconds"])
        return response.json() if response.ok else {"error": response.status_code}

    def send(self, **body) -> requests.Response:
        return requests.post(self.functions["send_message"].url, json=body, timeout=30)

    def send_batch(self, body: dict) -> requests.Response:
        return requests.post(
            self.functions["send_batch"].url, json=body, timeout=RUNTIME["send_batch"]["timeout_seconds"]
        )

    def stop(self) -> None:
        for thing in reversed(self.started):
            try:
                thing.stop()
            except Exception as exc:  # keep stopping the rest
                print(f"stopping {thing!r}: {exc}", file=sys.stderr)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="make run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--period",
        type=float,
        default=5.0,
        help="seconds between scheduled runs, as Cloud Scheduler's (5; production's: 60)",
    )
    demo = parser.add_argument_group("the demo")
    demo.add_argument("--population", type=int, default=12, help="messages in the demo (12)")
    demo.add_argument("--deadline", type=int, default=20, help="revoke_after_seconds of each message (20)")
    demo.add_argument("--timeout", type=float, default=100, help="give the demo at most this long (100 s)")
    demo.add_argument(
        "--batch",
        type=int,
        metavar="N",
        help="instead: N messages as one send_batch, a live progress line, then the batch's fates and its creates/s",
    )
    demo.add_argument("--keep", action="store_true", help="keep the stack running after the demo until Ctrl-C")
    own = parser.add_argument_group("without the demo")
    own.add_argument(
        "--no-demo",
        action="store_true",
        help="start the stack only: print the URL of every function as one JSON line, run until Ctrl-C",
    )
    own.add_argument(
        "--rbm-root",
        metavar="URL",
        help="RBM REST root the relay calls instead of the simulator "
        "(e.g. https://rcsbusinessmessaging.googleapis.com, a partner's sandbox, a fake of your own)",
    )
    own.add_argument("--rbm-agent-id", default=AGENT, help=f"the agent id the relay sends as ({AGENT})")
    own.add_argument(
        "--rbm-client-token",
        default=CLIENT_TOKEN,
        help="the client token the RBM webhooks are signed with; comma-separated for several",
    )
    own.add_argument(
        "--rbm-key-file",
        type=Path,
        metavar="PATH",
        help="service account key (JSON) for an https RBM root; without it, Application Default Credentials",
    )
    own.add_argument("--sms-webhook-url", metavar="URL", help="signed SMS webhook gateway instead of the fake Twilio")
    own.add_argument(
        "--outcomes-push-url",
        metavar="URL",
        help="push the outcome events there, in Pub/Sub's wrapped push body, as the sender's push subscription would",
    )
    own.add_argument(
        "--sms-webhook-secret",
        metavar="SECRET",
        help="its HMAC secret (or the SMS_WEBHOOK_SECRET environment variable)",
    )
    return parser


def _http_url(url: str) -> bool:
    """Whether `url` is one a request can be made to: http or https, with a host."""
    parts = urllib.parse.urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _arguments(argv) -> argparse.Namespace:
    parser = _parser()
    args = parser.parse_args(argv)
    args.sms_webhook_secret = args.sms_webhook_secret or os.environ.get("SMS_WEBHOOK_SECRET")
    if args.period <= 0:
        parser.error("--period must be positive")
    if args.population < 1:
        parser.error("--population must be at least 1")
    if not MIN_REVOKE_SECONDS <= args.deadline <= MAX_REVOKE_SECONDS:
        parser.error(f"--deadline must be from {MIN_REVOKE_SECONDS} to {MAX_REVOKE_SECONDS} s, as send_message takes")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    for flag in ("--rbm-root", "--sms-webhook-url", "--outcomes-push-url"):
        url = getattr(args, flag[2:].replace("-", "_"))
        if url and not _http_url(url):
            parser.error(f"{flag} must be an http:// or https:// URL, not {url!r}")
    if (args.rbm_root or args.sms_webhook_url) and not args.no_demo:
        parser.error(
            "--rbm-root and --sms-webhook-url need --no-demo: the demo drives the simulator and the fake Twilio"
        )
    if args.batch is not None and args.batch <= 0:
        parser.error("--batch must be positive")
    if bool(args.sms_webhook_url) != bool(args.sms_webhook_secret):
        parser.error("--sms-webhook-url and --sms-webhook-secret go together")
    return args


def _settings(args: argparse.Namespace) -> dict:
    """The RBM identity the relay uses, when it is not the simulator's."""
    if not args.rbm_root:
        return {}
    return {
        "RBM_AGENT_ID": args.rbm_agent_id,
        "RBM_CLIENT_TOKEN": args.rbm_client_token,
        "RBM_SERVICE_ACCOUNT_KEY_FILE": str(args.rbm_key_file.resolve()) if args.rbm_key_file else "",
    }


def _demo(stack: Stack, args: argparse.Namespace) -> bool:
    from local import demo

    print(
        f"webhook {stack.functions['receive_webhook'].url}   send_message {stack.functions['send_message'].url}\n"
        f"RBM simulator {stack.rbm.url}   fake Twilio {stack.sms.url}   logs in {stack.workdir}",
        flush=True,
    )
    if args.batch:
        from local import batch_demo

        ok = batch_demo.run(stack, size=args.batch, deadline=args.deadline, timeout=args.timeout)
    else:
        ok = demo.run(stack, population=args.population, deadline=args.deadline, timeout=args.timeout)
    if args.keep:
        print("stack running; Ctrl-C stops it", flush=True)
        threading.Event().wait()
    return ok


def _serve(stack: Stack) -> bool:
    """One JSON line on stdout, everything else on stderr, then wait for Ctrl-C."""
    print(
        json.dumps(
            {
                "functions": stack.urls(),
                "pubsub_emulator": stack.pubsub_host,
                "firestore_emulator": stack.firestore_host,
                "outcomes_topic": TOPOLOGY["outcomes_topic"],
                "cloud_tasks": stack.cloud_tasks(),
                "logs": str(stack.workdir),
            }
        ),
        flush=True,
    )
    print("stack running; Ctrl-C stops it", file=sys.stderr, flush=True)
    threading.Event().wait()
    return True


def main(argv=None) -> int:
    args = _arguments(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops it as Ctrl-C does
    out = sys.stderr if args.no_demo else sys.stdout
    print(f"starting the stack, scheduler period {args.period:g} s …", file=out, flush=True)
    sms_webhook = (args.sms_webhook_url, args.sms_webhook_secret) if args.sms_webhook_url else None
    stack, ok = (
        Stack(
            period=args.period,
            settings=_settings(args),
            rbm_root=args.rbm_root,
            sms_webhook=sms_webhook,
            outcomes_push_url=args.outcomes_push_url,
        ),
        True,
    )
    try:
        stack.start()
        ok = _serve(stack) if args.no_demo else _demo(stack, args)
    except KeyboardInterrupt:
        pass
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the stopping short
            signal.signal(sig, signal.SIG_IGN)
        print("stopping …", file=out, flush=True)
        stack.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
