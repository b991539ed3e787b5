"""The two engines of due work, started side by side for bench.idle,
bench.precision and bench.cost, and what stands in for Cloud Scheduler, Cloud
Tasks and, for the engine before, Pub/Sub push delivery.

- `after` (issue 20): per-message timers on Cloud Tasks. Every commit that
  sets a due time enqueues one task at that second on a rate-limited queue
  (`RBM_TASKS_QUEUE` for revokes and re-sends, `SMS_TASKS_QUEUE` for SMS),
  delivered to process_due_work over HTTP; revoke_expired and send_fallbacks
  are one short safety-net pass per period. Served from this checkout; the
  queues live in local.fake_tasks.FakeTasks, created from infra/topology.json.
- `before` (the engine of issue 12, revision BASELINE): scheduled runs with
  SCHEDULE_PERIOD_SECONDS = the period poll Firestore every second until the
  next tick and publish work items at their due second to a work topic
  (`RBM_WORK_TOPIC`); process_due_work workers act on them. Served from a
  checkout of BASELINE that `baseline()` makes with `git worktree add` and
  removes after the run, so both engines run in one run on the same emulators,
  fakes and scheduler ticks.

Push delivery of the engine before: the Pub/Sub emulator pushes at most two
requests at a time per subscription (NUM_CONCURRENT_PUSH_REQUESTS = 2 in its
FakePubsubServer), where Pub/Sub raises push concurrency with load, so its
work items are pulled and pushed by the Pusher of that same checkout
(local/pusher.py at BASELINE), at most `concurrency` at a time per worker.
"""

import contextlib
import functools
import importlib.util
import json
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from google.cloud import pubsub_v1

from bench.common import PROJECT, Run, http_session
from local import processes
from local.processes import REPO_ROOT, RUNTIME
from local.scheduler import Scheduler

BASELINE = "df64238"  # the last revision of the engine before: polling runs, a work topic
AGENT = "bench@rbm.goog"
TWILIO_SID, TWILIO_TOKEN = "AC" + "7" * 32, "bench-twilio-token"
CLIENT_TOKEN = "bench-client-token"
KINDS = ("before", "after")
LOCATION = "local"
TASKS_ACCOUNT = "tasks-invoker@demo-rbm-bench.iam.gserviceaccount.com"  # the OIDC identity the fake's tasks carry
TASKS_VARS = ("RBM_TASKS_QUEUE", "SMS_TASKS_QUEUE", "WORKER_URL", "TASKS_SERVICE_ACCOUNT", "CLOUD_TASKS_ENDPOINT")
QUEUES = json.loads((REPO_ROOT / "infra" / "topology.json").read_text())["queues"]
WORKER_CONCURRENCY = RUNTIME["process_due_work"]["concurrency"]  # requests at once per deployed worker instance
ACK_DEADLINE = 600  # before: the longest Pub/Sub allows, so a slow item is not redelivered mid-way


def rbm_env(rbm_url: str) -> dict:
    return {"RBM_API_ENDPOINT": rbm_url, "RBM_AGENT_ID": AGENT}


def sms_env(twilio_url: str) -> dict:
    return {
        "SMS_PROVIDER": "twilio",
        "TWILIO_ACCOUNT_SID": TWILIO_SID,
        "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
        "TWILIO_FROM_NUMBER": "+15005550006",
        "TWILIO_API_BASE": twilio_url,
    }


@contextlib.contextmanager
def baseline(revision: str = BASELINE) -> Iterator[Path]:
    """A checkout of `revision` (`git worktree add --detach` into a temporary folder),
    removed with its worktree entry when the block ends."""
    folder = Path(tempfile.mkdtemp(prefix="rbm-relay-baseline-"))
    git = ["git", "-C", str(REPO_ROOT)]
    subprocess.run([*git, "worktree", "add", "--detach", str(folder), revision], check=True, capture_output=True)
    try:
        yield folder
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(folder)], check=False, capture_output=True)
        subprocess.run([*git, "worktree", "prune"], check=False, capture_output=True)


def queue_name(key: str, tag: str) -> str:
    """The full name of topology.json's queue `key` ("rbm" or "sms") for one flow (`tag`)."""
    return f"projects/{PROJECT}/locations/{LOCATION}/queues/{QUEUES[key]['name']}{tag}"


def create_queues(tasks_url: str, tag: str, rates: dict[str, float] | None = None) -> dict[str, str]:
    """Creates topology.json's queues at the fake (`tasks_url`) with their settings there,
    `rates` overriding max_dispatches_per_second by key; answers {key: full queue name}."""
    return {
        key: processes.create_queue(
            tasks_url,
            queue_name(key, tag),
            q | {"max_dispatches_per_second": (rates or {}).get(key, q["max_dispatches_per_second"])},
        )
        for key, q in QUEUES.items()
    }


@dataclass
class Flow:
    """One flow's processes: `functions[name]`, `workers` (process_due_work), its collection,
    its queues (after) or its Pusher (before)."""

    kind: str
    collection: str
    functions: dict = field(default_factory=dict)
    workers: list = field(default_factory=list)
    queues: dict = field(default_factory=dict)
    pusher: object | None = None
    env: dict = field(default_factory=dict)  # the settings every function of the flow got

    @property
    def scheduled_urls(self) -> list[str]:
        return [self.functions[name].url for name in ("revoke_expired", "send_fallbacks")]


def start_flow(
    run: Run,
    kind: str,
    rbm_url: str,
    twilio_url: str,
    period: float,
    *,
    checkout: Path = REPO_ROOT,
    tasks_url: str = "",
    rates: dict[str, float] | None = None,
    concurrency: int = WORKER_CONCURRENCY,
    worker_processes: int = 1,
    settings: dict | None = None,
    source: str = "main.py",
    functions: tuple = ("send_message", "revoke_expired", "send_fallbacks"),
    events: bool = False,
    tag: str = "",
    stack: contextlib.ExitStack | None = None,
) -> Flow:
    """Starts `kind`'s functions over its own collection (`bench_<kind><tag>`), so both
    flows share the emulators and fakes. `after`: queues at the fake Cloud Tasks
    (`tasks_url`; `rates` by queue key), one process_due_work server with
    `worker_processes` gunicorn workers of `concurrency` threads each (standing for
    as many instances) as every task's target. `before`: served from `checkout`
    (a BASELINE checkout), a work topic, the same worker fed by that checkout's
    Pusher, SCHEDULE_PERIOD_SECONDS = `period`. `events`: receive_webhook and
    track_delivery behind the events topic (the emulator's own push). `settings` go
    to every function. Everything started is stopped when `stack` (by default the run) closes."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    stack = stack or run
    tag = f"-{kind}{tag}"
    flow = Flow(kind, f"bench_{kind}{tag.replace('-', '_')}")

    def function(name: str, env: dict, **server: str):
        process = run.function(name, env | server, source=source, cwd=checkout)
        stack.callback(process.stop)
        return process

    outcomes_topic = f"bench-outcomes{tag}"  # every message change publishes its outcome events there
    processes.create_topic(PROJECT, outcomes_topic)
    common = {
        **rbm_env(rbm_url),
        "RBM_MESSAGES_COLLECTION": flow.collection,
        "RBM_OUTCOMES_TOPIC": outcomes_topic,
        **(settings or {}),
    }
    sms = sms_env(twilio_url)
    worker_server = {"THREADS": str(concurrency), "WORKERS": str(worker_processes)}
    if kind == "after":
        flow.queues = create_queues(tasks_url, tag, rates)
        worker = run.function("process_due_work", {}, source=source, cwd=checkout, start=False)
        common |= {
            "RBM_TASKS_QUEUE": flow.queues["rbm"],
            "SMS_TASKS_QUEUE": flow.queues["sms"],
            "WORKER_URL": worker.url,
            "TASKS_SERVICE_ACCOUNT": TASKS_ACCOUNT,
            "CLOUD_TASKS_ENDPOINT": tasks_url,
        }
        worker.env.update(common | sms | worker_server)
        stack.callback(worker.stop)
        flow.workers = [worker.start()]
    else:
        topic = f"bench-work{tag}"
        processes.create_topic(PROJECT, topic)
        _subscriber().create_subscription(
            request={
                "name": f"projects/{PROJECT}/subscriptions/{topic}-pull",
                "topic": f"projects/{PROJECT}/topics/{topic}",
                "ack_deadline_seconds": ACK_DEADLINE,
            }
        )
        common |= {
            "RBM_WORK_TOPIC": topic,
            "SCHEDULE_PERIOD_SECONDS": f"{period:g}",
            "SWEEP_BUDGET_SECONDS": f"{max(90.0, period + 30):g}",
        }
        flow.workers = [function("process_due_work", common | sms, **worker_server)]
        endpoint = f"{flow.workers[0].url}/projects/{PROJECT}/topics/{topic}"
        pusher = _pusher_class(checkout)(
            PROJECT, f"{topic}-pull", endpoint, concurrency * worker_processes, timeout=ACK_DEADLINE, backoff=1.0
        )
        flow.pusher = stack.enter_context(_Started(pusher))
    flow.env = common
    envs = {"send_message": common, "revoke_expired": common | sms, "send_fallbacks": common | sms}
    if events:
        events_topic = f"bench-events{tag}"
        events_env = {"RBM_EVENTS_TOPIC": events_topic, "RBM_CLIENT_TOKEN": CLIENT_TOKEN}
        processes.create_topic(PROJECT, events_topic)
        envs["receive_webhook"] = common | events_env
        envs["track_delivery"] = common | events_env
    for name in functions + (("receive_webhook", "track_delivery") if events else ()):
        flow.functions[name] = function(name, envs[name])
    if events:
        processes.create_push_subscription(
            PROJECT,
            events_topic,
            f"{events_topic}-track",
            f"{flow.functions['track_delivery'].url}/projects/{PROJECT}/topics/{events_topic}",
        )
    return flow


def schedule(stack: contextlib.ExitStack, flows: list[Flow], period: float, at_once: bool = True) -> Scheduler:
    """One scheduler for every flow's revoke_expired and send_fallbacks, on one grid,
    started now and stopped when `stack` (a Run, or part of one) closes. `at_once`:
    a first run of each at start-up (else the first at the next tick of the grid)."""
    scheduler = Scheduler([url for flow in flows for url in flow.scheduled_urls], period, period + 180, at_once)
    stack.enter_context(_Started(scheduler))
    return scheduler


class _Started:
    """A startable thing as a context manager of the run (stopped when the run ends)."""

    def __init__(self, thing):
        self.thing = thing

    def __enter__(self):
        return self.thing.start()

    def __exit__(self, *exc):
        self.thing.stop()


def send(url: str, phone: str, message_id: str, deadline: int, text: str = "bench") -> float:
    """One send_message call; answers the wall-clock time (time.time()) it was made."""
    at = time.time()
    response = http_session.post(
        url,
        json={
            "phone": phone,
            "message_id": message_id,
            "content": {"text": text},
            "revoke_after_seconds": deadline,
            "fallback": {"text": f"SMS {text}"},
        },
        timeout=60,
    )
    if response.status_code != 200:
        raise RuntimeError(f"send_message answered {response.status_code}: {response.text[:200]}")
    return at


def _pusher_class(checkout: Path) -> type:
    """The Pusher of `checkout` (its local/pusher.py), for the engine before."""
    spec = importlib.util.spec_from_file_location("baseline_pusher", checkout / "local" / "pusher.py")
    if spec is None or spec.loader is None:
        raise RuntimeError(f"no local/pusher.py in {checkout}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Pusher


@functools.cache
def _subscriber() -> pubsub_v1.SubscriberClient:
    """A client of the run's Pub/Sub emulator (PUBSUB_EMULATOR_HOST is set by Run.emulator first)."""
    return pubsub_v1.SubscriberClient()
