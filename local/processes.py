"""Real local backends for tests and the local stack: Google's emulators and
functions-framework servers, each run as its own process.

Every process gets its own process group and is stopped by signalling the
group: `gcloud ... emulators ... start` is a wrapper whose Java server is a
child, and gunicorn forks a worker, so killing only the direct child would
leave a server holding its port.

Plain helpers, no pytest: the tests, the local stack and the benchmarks use them.
"""

import functools
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import ClassVar

import requests
from google.cloud import pubsub_v1

from local import request_times

REPO_ROOT = Path(__file__).resolve().parent.parent
PROJECT = "demo-rbm-relay"  # the project id every local process uses with the emulators
EMULATOR_VARS = ("PUBSUB_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST")
# How each function runs when deployed, by entry point: the one definition both deploy routes read.
RUNTIME = json.loads((REPO_ROOT / "infra" / "functions.json").read_text())["functions"]

# Loopback only: never route these calls through a proxy from the environment.
_http = requests.Session()
_http.trust_env = False


class StartError(RuntimeError):
    """A process did not come up; the message ends with its log tail."""


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _stop_group(proc: subprocess.Popen, signals=(signal.SIGTERM, signal.SIGKILL), grace: float = 5.0) -> None:
    """Signal the process group of `proc` until it is gone, `grace` seconds per signal."""
    pgid = proc.pid  # start_new_session=True made it the group leader
    for sig in signals:
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader, or it stays in the group as a zombie
            if not _group_alive(pgid):
                break
            time.sleep(0.05)
    proc.wait()


def _spawn(cmd, log_path: Path, env=None, cwd=None) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )


class Emulator:
    """Google's "pubsub" or "firestore" emulator on a free loopback port.

    Example::

        with Emulator("pubsub", log_dir, "demo-project") as emulator:
            os.environ["PUBSUB_EMULATOR_HOST"] = emulator.host
    """

    COMMANDS: ClassVar[dict[str, list[str]]] = {
        "pubsub": ["gcloud", "beta", "emulators", "pubsub", "start"],
        "firestore": ["gcloud", "emulators", "firestore", "start"],
    }

    def __init__(self, kind: str, log_dir, project: str, timeout: float = 60.0):
        if kind not in self.COMMANDS:
            raise ValueError(f"unknown emulator kind {kind!r}")
        self.kind, self.project, self.timeout = kind, project, timeout
        self.log_dir = Path(log_dir)
        self.log_path = self.log_dir / f"{kind}-emulator.log"
        self.port = free_port()
        self._proc = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self):
        """Pid of the gcloud wrapper, which is also its process group id."""
        return self._proc.pid if self._proc else None

    def start(self) -> "Emulator":
        cmd = self.COMMANDS[self.kind] + [f"--host-port={self.host}", f"--project={self.project}"]
        if self.kind == "pubsub":
            # Its own config dir, so emulators running side by side don't share one.
            data_dir = self.log_dir / "pubsub-data"
            data_dir.mkdir(parents=True, exist_ok=True)
            cmd.append(f"--data-dir={data_dir}")
        env = dict(os.environ, CLOUDSDK_CORE_DISABLE_PROMPTS="1")
        self._proc = _spawn(cmd, self.log_path, env=env)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            try:
                if _http.get(f"http://{self.host}/", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise StartError(f"{self.kind} emulator did not answer on {self.host}:\n{_tail(self.log_path)}")

    def stop(self) -> None:
        if self._proc is not None:
            _stop_group(self._proc)
            self._proc = None

    def pause(self) -> None:
        """Freezes the server (SIGSTOP): it keeps its port and its data but answers
        nothing, as a backend in an outage. `resume()` brings it back."""
        os.killpg(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.pid, signal.SIGCONT)

    def reset(self, project: str) -> None:
        """Firestore only: delete every document of `project`."""
        reset_firestore(self.host, project)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def reset_firestore(host: str, project: str) -> None:
    """Delete every document; `project` must be the one the clients use."""
    url = f"http://{host}/emulator/v1/projects/{project}/databases/(default)/documents"
    _http.delete(url, timeout=10).raise_for_status()


def runtime_env(target: str) -> dict[str, str]:
    """The server settings a deployed entry point runs with (infra/functions.json):
    functions-framework's gunicorn with one worker process and a thread per request
    Cloud Run may send it at once (THREADS = its concurrency; Cloud Run functions,
    "Concurrency"). Empty for a target that is not deployed."""
    size = RUNTIME.get(target)
    return {"THREADS": str(size["concurrency"]), "WORKERS": "1"} if size else {}


class FunctionProcess:
    """One entry point served by functions-framework's production server
    (gunicorn), as Cloud Run serves it, with the threads it gets when deployed
    (`runtime_env`), each request's interval recorded (local/request_times.py):
    `request_seconds()` is the time it spent inside requests.

    `env` is merged over os.environ and the deployed server settings, except that
    emulator hosts are inherited only when `env` names them, so a function never
    talks to an emulator by accident. `restart()` keeps the port, so push
    endpoints stay valid.
    """

    def __init__(
        self, target: str, env=None, port=None, source="main.py", cwd=REPO_ROOT, log_path=None, timeout: float = 30.0
    ):
        self.target, self.source, self.cwd, self.timeout = target, str(source), Path(cwd), timeout
        self.port = port or free_port()
        self.env = {k: v for k, v in os.environ.items() if k not in EMULATOR_VARS}
        self.env["PYTHONUNBUFFERED"] = "1"  # so read_log() sees prints as they happen
        self.env.update(runtime_env(target))
        self.env.update(env or {})
        self.log_path = Path(log_path or Path(tempfile.mkdtemp(prefix="function-")) / f"{target}.log")
        self.requests_path = self.log_path.with_suffix(".requests.jsonl")
        self._proc = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self):
        """Pid of the server, which is also its process group id."""
        return self._proc.pid if self._proc else None

    def start(self) -> "FunctionProcess":
        cmd = [
            sys.executable,
            str(REPO_ROOT / "local" / "request_times.py"),
            str(self.requests_path),
            "--target",
            self.target,
            "--source",
            self.source,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        self._proc = _spawn(cmd, self.log_path, env=self.env, cwd=self.cwd)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline and self._proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                time.sleep(0.05)
                continue
            if self._proc.poll() is None:
                return self
        self.stop()
        raise StartError(f"function {self.target} did not listen on {self.port}:\n{_tail(self.log_path)}")

    def stop(self) -> None:
        if self._proc is not None:
            _stop_group(self._proc)
            self._proc = None

    def kill(self) -> None:
        """SIGKILL at once, as a crashed instance: no cleanup runs."""
        if self._proc is not None:
            _stop_group(self._proc, signals=(signal.SIGKILL,))
            self._proc = None

    def restart(self) -> "FunctionProcess":
        self.stop()
        return self.start()

    def read_log(self) -> str:
        """Everything the server wrote so far, across restarts."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def request_seconds(self, since: float = 0.0, until: float = math.inf) -> float:
        """Seconds between `since` and `until` (epoch) in which the process served at
        least one request, across restarts: its billed instance time, as one
        instance (request_times.instance_seconds). Requests still running are not counted."""
        return request_times.instance_seconds(request_times.read(self.requests_path), since, until)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# Pub/Sub admin and test-side helpers. The clients read PUBSUB_EMULATOR_HOST
# when they are built, so they are cached per emulator host.


def _emulator_host() -> str:
    host = os.environ.get("PUBSUB_EMULATOR_HOST")
    if not host:
        raise RuntimeError("PUBSUB_EMULATOR_HOST is not set; refusing to use real Pub/Sub")
    return host


@functools.cache
def _clients(host: str):
    return pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()


def _publisher():
    return _clients(_emulator_host())[0]


def _subscriber():
    return _clients(_emulator_host())[1]


def create_topic(project: str, topic: str) -> str:
    return _publisher().create_topic(name=f"projects/{project}/topics/{topic}").name


def delete_topic(project: str, topic: str) -> None:
    _publisher().delete_topic(topic=f"projects/{project}/topics/{topic}")


def delete_subscription(project: str, sub: str) -> None:
    _subscriber().delete_subscription(subscription=f"projects/{project}/subscriptions/{sub}")


def create_pull_subscription(project: str, topic: str, sub: str) -> str:
    return (
        _subscriber()
        .create_subscription(
            name=f"projects/{project}/subscriptions/{sub}",
            topic=f"projects/{project}/topics/{topic}",
        )
        .name
    )


def create_push_subscription(
    project: str,
    topic: str,
    sub: str,
    push_endpoint: str,
    dead_letter_topic=None,
    max_delivery_attempts=None,
    filter: str = "",
    ack_deadline_seconds: int | None = None,
) -> str:
    """A push subscription (a pull one if `push_endpoint` is empty); with
    `dead_letter_topic` (an id in `project`), messages go there after
    `max_delivery_attempts` failed deliveries. The emulator accepts `filter`
    but does not apply it."""
    request = {
        "name": f"projects/{project}/subscriptions/{sub}",
        "topic": f"projects/{project}/topics/{topic}",
        "push_config": {"push_endpoint": push_endpoint},
        "filter": filter,
    }
    if ack_deadline_seconds:
        request["ack_deadline_seconds"] = ack_deadline_seconds
    if dead_letter_topic:
        request["dead_letter_policy"] = {
            "dead_letter_topic": f"projects/{project}/topics/{dead_letter_topic}",
            "max_delivery_attempts": max_delivery_attempts or 5,
        }
    return _subscriber().create_subscription(request=request).name


def publish(project: str, topic: str, data: bytes, **attributes: str) -> str:
    """Publish one message and wait for its id."""
    return _publisher().publish(f"projects/{project}/topics/{topic}", data, **attributes).result(timeout=30)


def pull_all(project: str, sub: str, wait_seconds: float, expect=None):
    """Pull and ack messages for `wait_seconds`, or until `expect` arrived.

    Returns [(data, attributes)] in arrival order. Without `expect` it always
    waits the full time, which is what proving "nothing else came" needs.
    """
    subscriber = _subscriber()
    path = f"projects/{project}/subscriptions/{sub}"
    received = []
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline and (expect is None or len(received) < expect):
        response = subscriber.pull(
            request={"subscription": path, "max_messages": 100},
            timeout=max(0.5, min(5.0, deadline - time.monotonic())),
        )
        if response.received_messages:
            subscriber.acknowledge(
                request={
                    "subscription": path,
                    "ack_ids": [m.ack_id for m in response.received_messages],
                }
            )
            received += [(m.message.data, dict(m.message.attributes)) for m in response.received_messages]
        else:
            time.sleep(0.1)
    return received


# Cloud Tasks admin, against the local fake (local/fake_tasks.py), over its REST API.


def queue_resource(name: str, settings: dict) -> dict:
    """The Queue resource (Cloud Tasks v2 REST: Queue, RateLimits, RetryConfig) named
    `name` (projects/P/locations/L/queues/Q) with a queue's settings as
    infra/topology.json's "queues" block gives them."""
    return {
        "name": name,
        "rateLimits": {
            "maxDispatchesPerSecond": settings["max_dispatches_per_second"],
            "maxConcurrentDispatches": settings["max_concurrent_dispatches"],
        },
        "retryConfig": {
            "maxAttempts": settings["max_attempts"],
            "minBackoff": settings["min_backoff"],
            "maxBackoff": settings["max_backoff"],
            "maxDoublings": settings["max_doublings"],
        },
    }


def create_queue(endpoint: str, name: str, settings: dict) -> str:
    """Creates queue `name` with topology `settings` on the Cloud Tasks at `endpoint`
    (an http:// root); answers its name."""
    parent = name.rsplit("/queues/", 1)[0]
    response = _http.post(f"{endpoint}/v2/{parent}/queues", json=queue_resource(name, settings), timeout=10)
    response.raise_for_status()
    return str(response.json()["name"])
