"""`python -m local.stack --no-demo` as a team runs it to integration-test its
agent: against an RBM REST root and a signed SMS webhook gateway of its own
(here the repository's fakes, standing in for a partner's sandbox), with
production's scheduler period; then interrupted."""

import base64
import contextlib
import inspect
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import requests

import main
from local.fake_rbm import FakeRbm
from local.fake_sms import FakeSmsWebhook
from local.fakehttp import FakeServer, Request
from local.processes import EMULATOR_VARS, REPO_ROOT
from local.stack import TOPOLOGY
from tests.support import wait_for

PARTNER_AGENT, PARTNER_TOKEN, GATEWAY_SECRET = (
    "partner-agent@rbm.goog",
    "partner-client-token",
    "partner-gateway-secret",
)
NO_RCS = "+15550424242"
ENTRY_POINTS = {name for name, f in vars(main).items() if inspect.isfunction(f) and f.__module__ == "main"}


class OutcomesEndpoint(FakeServer):
    """A partner's push endpoint: records each wrapped push body, answers 204."""

    def __init__(self):
        super().__init__()
        self.bodies: list[dict] = []

    def handle(self, request: Request) -> tuple:
        with self._lock:
            self.bodies.append(request.json())
        return 204, {}

    def events(self) -> list[dict]:
        with self._lock:
            return [json.loads(base64.b64decode(b["message"]["data"])) for b in self.bodies]


def _start_time(pid: int) -> str | None:
    """The kernel's start time of a live process (field 22 of /proc/PID/stat), so a
    reused pid is not taken for the old process; None once it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None if fields[0] == "Z" else fields[19]


def descendants(root: int) -> dict[int, str]:
    """Every live process below `root` (children of children included), pid → start time."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = {}, {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier and pid not in found}
        found.update((pid, start) for pid in frontier if (start := _start_time(pid)))
    return found


def first_line(stream, timeout: float) -> str:
    """The first line of `stream`, or fail after `timeout` seconds."""
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no line within {timeout} s") from None


def test_no_demo_mode_serves_a_partners_rbm_and_sms_gateway_and_ctrl_c_stops_every_process(tmp_path):
    with FakeRbm() as rbm, FakeSmsWebhook(secret=GATEWAY_SECRET) as gateway, OutcomesEndpoint() as outcomes:
        rbm.set_phone(NO_RCS, "not_rcs")
        command = [
            sys.executable,
            "-m",
            "local.stack",
            "--no-demo",
            "--period",
            "60",
            "--rbm-root",
            rbm.url,
            "--rbm-agent-id",
            PARTNER_AGENT,
            "--rbm-client-token",
            PARTNER_TOKEN,
            "--sms-webhook-url",
            f"{gateway.url}/sms",
            "--sms-webhook-secret",
            GATEWAY_SECRET,
            "--outcomes-push-url",
            f"{outcomes.url}/outcomes",
        ]
        env = {k: v for k, v in os.environ.items() if k not in EMULATOR_VARS}  # the stack starts emulators of its own
        with open(tmp_path / "stack.err", "wb") as err:
            stack = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        started: dict[int, str] = {}
        try:
            ready = json.loads(first_line(stack.stdout, timeout=240))
            assert set(ready["functions"]) == ENTRY_POINTS
            assert ready["outcomes_topic"] == "rbm-outcomes"
            # The queues of topology.json, on the Cloud Tasks endpoint the line names, with their rates.
            tasks = ready["cloud_tasks"]
            assert set(tasks["queues"]) == set(TOPOLOGY["queues"]) and tasks["service_account"]
            for key, name in tasks["queues"].items():
                queue = requests.get(f"{tasks['endpoint']}/v2/{name}", timeout=10).json()
                rate = TOPOLOGY["queues"][key]["max_dispatches_per_second"]
                assert (queue["name"], queue["rateLimits"]["maxDispatchesPerSecond"]) == (name, rate)

            message_id = str(uuid.uuid4())
            answer = requests.post(
                ready["functions"]["send_message"],
                timeout=30,
                json={
                    "phone": NO_RCS,
                    "message_id": message_id,
                    "content": {"text": "your code is 123456"},
                    "revoke_after_seconds": 600,
                    "fallback": {"text": "your code is 123456"},
                },
            )
            assert answer.status_code == 200, answer.text
            created = [r for r in rbm.requests if r["kind"] == "create"]
            assert [(r["phone"], r["agent_id"], r["message_id"]) for r in created] == [
                (NO_RCS, PARTNER_AGENT.removesuffix("@rbm.goog"), message_id)  # RBM calls take the short form
            ]
            # No RCS: the SMS goes to the partner's gateway, signed with its secret, at once.
            assert gateway.wait_sent(1, timeout=30)
            assert [(s["to"], s["message_id"]) for s in gateway.sent] == [(NO_RCS, message_id)]

            # It went out on a task of the sms-sends queue, the timer the send set, not a scheduled pass.
            def sms_task_answers() -> list[int | None]:
                stats = requests.get(f"{tasks['endpoint']}/fake/stats", timeout=10).json()
                return [d["status"] for d in stats["queues"][TOPOLOGY["queues"]["sms"]["name"]]["dispatches"]]

            wait_for(lambda: sms_task_answers() == [200], timeout=30)
            # The outcome events reach the partner's endpoint as Pub/Sub push bodies.
            wait_for(lambda: len(outcomes.events()) >= 2, timeout=60)
            assert sorted((e["seq"], e["status"], e["fate"]) for e in outcomes.events()) == [
                (1, "UNREACHABLE", "pending"),
                (2, "SMS_SENT", "sms"),
            ]
            assert {b["message"]["attributes"]["message_id"] for b in outcomes.bodies} == {message_id}
            assert all(b["message"]["orderingKey"] == message_id and b["subscription"] for b in outcomes.bodies)

            started = descendants(stack.pid)
            assert len(started) >= len(ENTRY_POINTS) + 2  # a server per function, two emulators
            stack.send_signal(signal.SIGINT)
            assert stack.wait(timeout=120) == 0
        finally:
            if stack.poll() is None:
                stack.kill()
                stack.wait()
            left = {pid for pid, start in started.items() if _start_time(pid) == start}
            for pid in left:  # never leave a process of a failed run behind
                os.kill(pid, signal.SIGKILL)
        assert not left, f"still running after Ctrl-C: {sorted(left)}"
