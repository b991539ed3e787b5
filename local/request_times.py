"""Time spent inside requests, per function process: what Cloud Run's
request-based billing charges an instance for.

With request-based billing (the default) an instance is charged only while it
processes requests, and while it starts and shuts down (Cloud Run, "Billing
settings for services", cloud.google.com/run/docs/configuring/billing-settings);
requests it serves at once are one stretch of billed time, not one each
(cloud.google.com/run/pricing). So the instance-seconds of one process are the
union of its requests' intervals; start-up and shutdown are left out.

    python local/request_times.py LOG --target T --source main.py --host 127.0.0.1 --port 8080

serves an entry point as `python -m functions_framework` does (its
create_app, then its gunicorn server with THREADS and WORKERS from the
environment) and appends one JSON line per request to LOG:
`{"began": epoch s, "ended": epoch s, "status": int | null, "path": str}`,
written when the function returned its response. A request still running, or
cut short by a killed process, has no line. `instance_seconds(read(LOG))`
adds them up.
"""

import argparse
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Wsgi = Callable[[dict, Callable], Iterable[bytes]]


@dataclass(frozen=True)
class Served:
    """One request: when it began and ended (epoch seconds), its status, its path."""

    began: float
    ended: float
    status: int | None
    path: str


class Recorder:
    """WSGI middleware: the wrapped app, each request's Served appended to `path` as a JSON line."""

    def __init__(self, app: Wsgi, path: Path):
        self.app, self.path = app, Path(path)
        self._lock = threading.Lock()

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        began, status = time.time(), []

        def start(code: str, headers: list, exc_info: Any = None) -> Any:
            status.append(int(code.split()[0]))
            return start_response(code, headers, exc_info)

        try:
            return self.app(environ, start)
        finally:
            line = {"began": began, "ended": time.time(), "status": status[-1] if status else None}
            self._write(json.dumps({**line, "path": environ.get("PATH_INFO", "")}))

    def _write(self, line: str) -> None:
        with self._lock, open(self.path, "a") as out:  # per request: a forked worker never shares a handle
            out.write(line + "\n")


def read(path: Path) -> list[Served]:
    """Every request recorded in `path`, oldest end first; none if it does not exist."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []
    served = []
    for line in lines:
        try:
            served.append(Served(**json.loads(line)))
        except (ValueError, TypeError):
            continue  # a line cut short by a killed process
    return served


def instance_seconds(served: Iterable[Served], since: float = 0.0, until: float = math.inf) -> float:
    """Seconds in [since, until) during which at least one of `served` was in flight:
    the union of their intervals, each clipped to the window."""
    intervals = sorted((max(s.began, since), min(s.ended, until)) for s in served)
    total, reach = 0.0, -math.inf
    for began, ended in intervals:
        if ended <= began:
            continue
        total += max(0.0, ended - max(began, reach))
        reach = max(reach, ended)
    return total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="request_times.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("log", type=Path, help="file the request lines are appended to")
    parser.add_argument("--target", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    import functions_framework
    from functions_framework._http import create_server  # what functions-framework's own command line runs

    app = functions_framework.create_app(args.target, args.source)
    app.wsgi_app = Recorder(app.wsgi_app, args.log)
    create_server(app, False).run(args.host, args.port)


if __name__ == "__main__":
    # Run as a script from any checkout: modules resolve from the working directory, as under `python -m`.
    sys.path[0] = os.getcwd()
    main()
