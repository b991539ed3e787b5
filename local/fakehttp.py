"""What every fake server shares: a loopback HTTP server in a daemon thread, and
scripted or random failures.

A fake subclasses FakeServer and answers in handle(); the server reads the
request, calls it, and writes the answer as JSON, with any extra headers the
answer names. An answer whose payload is DROP closes the connection without a
response, as a server does that crashes or is cut off after reading a request;
RESET does the same with a TCP reset.
"""

import collections
import json
import random
import re
import socket
import struct
import threading
import traceback
from collections.abc import Hashable
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

E164 = re.compile(r"^\+[1-9]\d{1,14}$")
DROP = object()  # a payload: close the connection without answering
RESET = object()  # a payload: reset the connection (RST) without answering


# Google's canonical status names and default messages.
_STATUS = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "Request had invalid authentication credentials."),
    403: ("PERMISSION_DENIED", "The caller does not have permission"),
    404: ("NOT_FOUND", "Requested entity was not found."),
    409: ("ALREADY_EXISTS", "Requested entity already exists."),
    429: ("RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
    500: ("INTERNAL", "Internal error encountered."),
    503: ("UNAVAILABLE", "The service is currently unavailable."),
    504: ("DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
}


@dataclass
class Request:
    method: str
    path: str  # as sent, still percent-encoded, without the query
    query: dict[str, str]  # first value of each parameter
    headers: Message
    body: bytes

    def json(self) -> Any:
        """The body as JSON; raises ValueError when it is not JSON."""
        return json.loads(self.body or b"null")


def google_error(status: int, message: str = "") -> tuple[int, dict]:
    """Google's JSON error answer for an HTTP status."""
    name, default = _STATUS.get(status, ("UNKNOWN", "Unknown error."))
    return status, {"error": {"code": status, "message": message or default, "status": name}}


class FakeServer:
    """A JSON HTTP server on 127.0.0.1, run in a daemon thread.

    Restartable: after stop(), start() binds the same port again, so a test
    can take a provider down and bring it back at the same URL.

        with MyFake() as fake:
            requests.get(fake.url + "/x")
    """

    def __init__(self, port: int = 0):
        self.port = port
        self._lock = threading.Condition()  # guards a subclass's state and records
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def handle(self, request: Request) -> tuple:
        """(status, JSON-able body) or (status, body, {header: value}) for one
        request, or a DROP body; runs on the request's thread."""
        raise NotImplementedError

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, port: int | None = None) -> "FakeServer":
        """Bind (a free port by default) and serve; returns self."""
        if self._httpd is None:
            httpd = _Server(("127.0.0.1", self.port if port is None else port), _Handler)
            httpd.fake = self
            self.port = httpd.server_address[1]
            self._httpd = httpd
            self._thread = threading.Thread(
                target=httpd.serve_forever, args=(0.01,), daemon=True, name=type(self).__name__
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join()
            self._httpd = self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # callers under test send in bursts; the default 5 resets them


class _Handler(BaseHTTPRequestHandler):
    server_version = "fake"

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        request = Request(self.command, url.path, query, self.headers, self.rfile.read(length))
        try:
            status, payload, headers = (*self.server.fake.handle(request), {})[:3]
        except Exception:  # a bug in the fake must show, not hang the caller
            traceback.print_exc()
            status, payload, headers = 500, {"error": "fake server failure"}, {}
        if payload is RESET:  # linger on, 0 s: closing sends RST instead of FIN
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            payload = DROP
        if payload is DROP:
            self.close_connection = True  # nothing written: the caller sees the connection closed
            return
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass  # the caller went away, e.g. it was killed while the answer was held

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format, *args) -> None:
        pass  # tests and demos read the fake's records, not an access log


class Faults:
    """Scripted statuses and seeded random failures; the caller holds the lock.

    A script is a queue of statuses per key, answered in turn; a status below
    400 in it means "behave normally". Once a script is used up, a share set
    by fail_share() makes that fraction of calls fail (500 unless told), repeatably
    for a given seed.
    """

    def __init__(self):
        self._scripts: dict[Hashable, collections.deque[int]] = {}
        self._shares: dict[Hashable, tuple[float, random.Random]] = {}

    def script(self, key: Hashable, statuses: list[int]) -> None:
        self._scripts.setdefault(key, collections.deque()).extend(statuses)

    def fail_share(self, key: Hashable, share: float, seed: int = 0, status: int = 500) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError("share must be between 0 and 1")
        self._shares[key] = (share, random.Random(seed), status)

    def next_error(self, script_key: Hashable, share_key: Hashable) -> int | None:
        """The error status the next call answers, or None to behave normally."""
        queue = self._scripts.get(script_key)
        if queue:
            status = queue.popleft()
            return status if status >= 400 else None
        share, rng, status = self._shares.get(share_key, (0.0, None, 500))
        return status if rng is not None and rng.random() < share else None


def serve_until_interrupted(fake: FakeServer, port: int) -> None:
    """Run a fake from the command line: print its URL, serve until Ctrl-C."""
    fake.start(port)
    print(fake.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
