"""The two ways due work can flow, started side by side for bench.precision,
bench.scale and bench.cost, and what stands in for Cloud Scheduler and for
Pub/Sub push delivery.

- `dispatch` (issue 12): scheduled runs with SCHEDULE_PERIOD_SECONDS = the
  period poll every second and publish work items at their due second to a work
  topic; process_due_work workers act on them: the revoke at its deadline, the
  SMS at its own due second (REVOKE_GRACE_SECONDS after a revoke's 200, at once
  after a send answered 404).
- `ticks` (today's flow, as before issue 12): no work topic and
  SCHEDULE_PERIOD_SECONDS=0, so each run does one pass at its tick;
  revoke_expired has no SMS provider, so it only revokes and the SMS waits for
  a send_fallbacks tick.

Pub/Sub push: the emulator pushes at most two requests at a time per
subscription (NUM_CONCURRENT_PUSH_REQUESTS = 2 in its FakePubsubServer), where
Pub/Sub raises push concurrency with load ("Push subscriptions": push backoff
and flow control, slow-start), so through the emulator's own push the fan-out
would measure that cap.
local.pusher.Pusher therefore pulls the work subscription from the emulator and
pushes each message itself, in Pub/Sub's push format, to the least busy worker
(at most `concurrency` requests per worker, as Cloud Run's per-instance
concurrency), acking on success and nacking otherwise.
"""

import contextlib
import functools
import time
from dataclasses import dataclass, field

from google.cloud import pubsub_v1

from bench.common import PROJECT, Run, http_session
from local import processes
from local.processes import RUNTIME
from local.pusher import Pusher
from local.scheduler import Scheduler

AGENT = "bench@rbm.goog"
TWILIO_SID, TWILIO_TOKEN = "AC" + "7" * 32, "bench-twilio-token"
CLIENT_TOKEN = "bench-client-token"
ACK_DEADLINE = 600  # the longest Pub/Sub allows: a slow item is not redelivered mid-way
KINDS = ("dispatch", "ticks")
WORKER_CONCURRENCY = RUNTIME["process_due_work"]["concurrency"]  # items at once per deployed worker instance


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


@dataclass
class Flow:
    """One flow's processes: `functions[name]`, `workers` (process_due_work), its collection."""

    kind: str
    collection: str
    functions: dict = field(default_factory=dict)
    workers: list = field(default_factory=list)
    pusher: Pusher | None = None

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
    workers: int = 1,
    concurrency: int = WORKER_CONCURRENCY,
    settings: dict | None = None,
    source: str = "main.py",
    functions: tuple = ("send_message", "revoke_expired", "send_fallbacks"),
    events: bool = False,
    tag: str = "",
    stack: contextlib.ExitStack | None = None,
) -> Flow:
    """Starts `kind`'s functions over its own collection (`bench_<kind><tag>`), so
    both flows can share the emulators and fakes. `dispatch` also gets a work topic,
    `workers` process_due_work processes (each THREADS=`concurrency`) and a Pusher.
    `events`: receive_webhook and track_delivery behind the events topic (the
    emulator's own push; a receipt is one short call). `settings` go to every
    function. Everything started is stopped when `stack` (by default the run) closes."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    stack = stack or run
    flow = Flow(kind, f"bench_{kind}{tag}")

    def function(name: str, env: dict):
        process = run.function(name, env, source=source)
        stack.callback(process.stop)
        return process

    outcomes_topic = f"bench-outcomes-{kind}{tag}"  # every message change publishes its outcome events there
    processes.create_topic(PROJECT, outcomes_topic)
    common = {
        **rbm_env(rbm_url),
        "RBM_MESSAGES_COLLECTION": flow.collection,
        "RBM_OUTCOMES_TOPIC": outcomes_topic,
        **(settings or {}),
    }
    sms = sms_env(twilio_url)
    if kind == "dispatch":
        topic = f"bench-work-{kind}{tag}"
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
        envs = {"send_message": common, "revoke_expired": common | sms, "send_fallbacks": common | sms}
    else:
        envs = {"send_message": common, "revoke_expired": common, "send_fallbacks": common | sms}
    if events:
        events_topic = f"bench-events-{kind}{tag}"
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
    if kind == "dispatch":
        worker_env = common | sms | {"THREADS": str(concurrency)}
        flow.workers = [function("process_due_work", worker_env) for _ in range(workers)]
        endpoints = [f"{w.url}/projects/{PROJECT}/topics/{topic}" for w in flow.workers]
        flow.pusher = stack.enter_context(
            _Started(Pusher(PROJECT, f"{topic}-pull", endpoints, concurrency, timeout=ACK_DEADLINE, backoff=1.0))
        )
    return flow


def schedule(stack: contextlib.ExitStack, flows: list[Flow], period: float) -> Scheduler:
    """One scheduler for every flow's revoke_expired and send_fallbacks, on one grid,
    started now and stopped when `stack` (a Run, or part of one) closes."""
    scheduler = Scheduler([url for flow in flows for url in flow.scheduled_urls], period, timeout=period + 180)
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


@functools.cache
def _subscriber() -> pubsub_v1.SubscriberClient:
    """A client of the run's Pub/Sub emulator (PUBSUB_EMULATOR_HOST is set by Run.emulator first)."""
    return pubsub_v1.SubscriberClient()
