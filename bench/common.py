"""What the benchmarks share: a run that starts and stops the real backends,
an HTTP load generator, Firestore seeding, process memory, tables and results.

Everything runs on loopback: Google's emulators and functions-framework
processes come from local/processes.py, the RBM and SMS fakes from local/.
"""

import contextlib
import http.client
import itertools
import json
import os
import shutil
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import requests

from local.processes import EMULATOR_VARS, REPO_ROOT, Emulator, FunctionProcess

PROJECT = "demo-rbm-bench"
RESULTS = Path(__file__).resolve().parent / "results"
_VARS = {"pubsub": "PUBSUB_EMULATOR_HOST", "firestore": "FIRESTORE_EMULATOR_HOST"}

# Loopback only: never route through a proxy from the environment.
http_session = requests.Session()
http_session.trust_env = False


class Run(contextlib.ExitStack):
    """One benchmark run: a fresh log folder under results/logs/<name>, and
    every emulator, fake and function it starts stopped when it ends.

        with Run("tracker") as run:
            run.emulator("firestore")
            process = run.function("receive_webhook", env={...})
    """

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.logs = RESULTS / "logs" / name
        shutil.rmtree(self.logs, ignore_errors=True)
        self.logs.mkdir(parents=True)
        os.environ["GOOGLE_CLOUD_PROJECT"] = PROJECT
        self.emulators: dict[str, Emulator] = {}
        self._started = 0

    def emulator(self, kind: str) -> str:
        """Starts Google's `pubsub` or `firestore` emulator and points this process at it."""
        emulator = self.enter_context(Emulator(kind, self.logs, PROJECT))
        self.emulators[kind] = emulator
        os.environ[_VARS[kind]] = emulator.host
        return emulator.host

    def function(
        self, target: str, env: dict | None = None, source: str = "main.py", start: bool = True, cwd: Path = REPO_ROOT
    ) -> FunctionProcess:
        """An entry point under functions-framework (gunicorn), wired to this run's emulators;
        `cwd` is the checkout it is served from (another one, to compare two versions)."""
        full_env = {"GOOGLE_CLOUD_PROJECT": PROJECT}
        full_env.update({v: os.environ[v] for v in EMULATOR_VARS if os.environ.get(v)})
        full_env.update(env or {})
        self._started += 1
        process = FunctionProcess(
            target, full_env, source=source, cwd=cwd, log_path=self.logs / f"{self._started:02d}-{target}.log"
        )
        self.callback(process.stop)
        return process.start() if start else process

    def save(self, results: dict) -> Path:
        """Writes results/<name>.json and says where."""
        path = RESULTS / f"{self.name}.json"
        path.write_text(json.dumps(results, indent=2, default=str) + "\n")
        root = RESULTS.parent.parent
        print(f"\nresults written to {path.relative_to(root)}; logs in {self.logs.relative_to(root)}/")
        return path


# Load


@dataclass
class Load:
    """What one load run measured: successful request latencies (s) and failures."""

    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: int = 0

    def __add__(self, other: "Load") -> "Load":
        """Two runs taken as one: their time, requests and errors summed."""
        return Load(self.seconds + other.seconds, self.latencies + other.latencies, self.errors + other.errors)

    @property
    def requests(self) -> int:
        return len(self.latencies)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        """Latency at quantile q, in milliseconds (nearest rank)."""
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

    def summary(self) -> dict:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "seconds": round(self.seconds, 2),
            "rps": round(self.rps, 1),
            "p50_ms": round(self.percentile(0.50), 2),
            "p99_ms": round(self.percentile(0.99), 2),
        }


def post_load(url: str, bodies: list[tuple[bytes, dict]], threads: int, seconds: float = 0.0, total: int = 0) -> Load:
    """POSTs the prepared (body, headers) round-robin from `threads` keep-alive
    connections, for `seconds` or until `total` requests were sent."""
    parts = urlsplit(url)
    path = parts.path or "/"
    sent = itertools.count()
    deadline = time.monotonic() + seconds if seconds else float("inf")
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads

    def client(k: int) -> None:
        connection = None
        while time.monotonic() < deadline:
            n = next(sent)
            if total and n >= total:
                break
            body, headers = bodies[n % len(bodies)]
            started = time.perf_counter()
            try:
                connection = connection or http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
                connection.request("POST", path, body, headers)
                response = connection.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                if connection:
                    connection.close()
                connection, ok = None, False
            if ok:
                latencies[k].append(time.perf_counter() - started)
            else:
                errors[k] += 1
        if connection:
            connection.close()

    started = time.monotonic()
    workers = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return Load(time.monotonic() - started, [x for each in latencies for x in each], sum(errors))


def parallel(fn, items, threads: int = 8) -> list:
    """fn over items in a thread pool, results in order."""
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(fn, items))


# Firestore


def accepted(message_id: str, phone: str, agent_id: str, due_at, i: int):
    """A message as send_message leaves it once RBM accepted it (SENT, an SMS fallback
    waiting), its revoke due at `due_at`; `i` numbers its texts."""
    from functions.model import Fallback, Message, State

    return Message(
        message_id,
        phone,
        agent_id,
        state=State.SENT,
        fallback=Fallback.WAITING,
        fallback_text=f"fallback {i}",
        content={"text": f"rcs {i}"},
        revoke_at=due_at,
        next_action_at=due_at,
    )


def seed(messages, threads: int = 4, batch_size: int = 500) -> float:
    """Writes message documents as batches of up to 500; answers the seconds it took."""
    from functions import store

    messages = list(messages)
    chunks = [messages[i : i + batch_size] for i in range(0, len(messages), batch_size)]

    def commit(chunk) -> None:
        batch = store.client().batch()
        for m in chunk:
            batch.set(store.messages().document(m.message_id), m.to_doc())
        batch.commit()

    started = time.monotonic()
    parallel(commit, chunks, threads)
    return time.monotonic() - started


# Processes


def group_memory(pgid: int) -> list[dict]:
    """RSS and PSS (MB) of every process in a process group, read from /proc.
    RSS counts pages a forked worker shares with its parent twice; PSS splits them."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            status = Path(f"/proc/{pid}/status").read_text()
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except (OSError, ValueError, IndexError):
            continue
        found.append(
            {
                "pid": int(pid),
                "rss_mb": _kb(status, "VmRSS:") / 1024,
                "pss_mb": _kb(rollup, "Pss:") / 1024,
                "threads": int(_kb(status, "Threads:")),
            }
        )
    return sorted(found, key=lambda p: p["pid"])


def group_cpu(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of a process group."""
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU used, while it is open, by process groups and by this process
    (its client threads and in-process fakes).

        with CpuMeter(emulator=emulator.pid) as cpu:
            ...
        cpu.seconds, cpu.cores  # {"emulator": 1.6, "bench": 0.5}, {"emulator": 0.8, "bench": 0.25}
    """

    def __init__(self, **groups: int):
        self.groups, self.seconds, self.wall = groups, {}, 0.0

    def __enter__(self):
        self._start = (time.monotonic(), time.process_time(), {k: group_cpu(g) for k, g in self.groups.items()})
        return self

    def __exit__(self, *exc):
        wall, own, used = self._start
        self.wall = time.monotonic() - wall
        self.seconds = {k: group_cpu(g) - used[k] for k, g in self.groups.items()}
        self.seconds["bench"] = time.process_time() - own

    @property
    def cores(self) -> dict[str, float]:
        return {k: v / self.wall for k, v in self.seconds.items()}


def load_average() -> float:
    """The machine's 1-minute load average: other work competes with a benchmark."""
    return os.getloadavg()[0]


def _kb(text: str, key: str) -> float:
    line = next((line for line in text.splitlines() if line.startswith(key)), None)
    return float(line.split()[1]) if line else float("nan")


# Reporting


def median(values) -> float:
    return statistics.median(values)


def percentiles(values) -> tuple:
    """(n, p50, p99) of `values` (nearest rank); (0, "-", "-") when there are none."""
    values = sorted(values)
    if not values:
        return (0, "-", "-")
    return len(values), statistics.median(values), values[min(len(values) - 1, round(0.99 * (len(values) - 1)))]


def check(value: float, target: float, at_least: bool) -> str:
    """`1.62x (target >= 1.5x) ok` style verdict."""
    ok = value >= target if at_least else value <= target
    return f"{value:.2f}x (target {'>=' if at_least else '<='} {target}x) {'ok' if ok else 'MISSED'}"


def table(title: str, header: list[str], rows: list[list]) -> None:
    """Prints an aligned text table."""
    cells = [[str(c) for c in header]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for n, row in enumerate(cells):
        print(
            "  " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=False)))
        )
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.2f}"
    return f"{value:,}" if isinstance(value, int) else str(value)
