"""A fake of the RBM platform's REST API, for tests and demos.

It speaks Google's wire format for agentMessages create / delete, agentEvents
and capabilities, keeps the messages it accepted, and can be told to make a
phone unreachable, slow or failing, so callers meet the platform's real
answers without the platform.

    python -m local.fake_rbm --port 8091 --not-rcs +15550000002
"""

import argparse
import re
import time
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote

from local.fakehttp import E164, FakeServer, Faults, Request, serve_until_interrupted

FEATURES = [
    "RICHCARD_STANDALONE",
    "RICHCARD_CAROUSEL",
    "ACTION_CREATE_CALENDAR_EVENT",
    "ACTION_DIAL",
    "ACTION_OPEN_URL",
    "ACTION_SHARE_LOCATION",
    "ACTION_VIEW_LOCATION",
]
MODES = ("accept", "not_rcs", "error", "slow")

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
_ROUTES = [
    ("POST", re.compile(r"^/v1/phones/([^/]+)/agentMessages$"), "create"),
    ("DELETE", re.compile(r"^/v1/phones/([^/]+)/agentMessages/([^/]+)$"), "revoke"),
    ("POST", re.compile(r"^/v1/phones/([^/]+)/agentEvents$"), "event"),
    ("GET", re.compile(r"^/v1/phones/([^/]+)/capabilities$"), "capabilities"),
]
_MESSAGE_FIELDS = {"name", "sendTime", "contentMessage", "messageTrafficType", "ttl", "expireTime"}
_DURATION = re.compile(r"^\d+(\.\d{1,9})?s$")
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$")


def google_error(status: int, message: str = "") -> tuple[int, dict]:
    """Google's JSON error answer for an HTTP status."""
    name, default = _STATUS.get(status, ("UNKNOWN", "Unknown error."))
    return status, {"error": {"code": status, "message": message or default, "status": name}}


def now_rfc3339() -> str:
    """The current UTC time as RBM writes it, e.g. 2026-01-01T00:00:00.123456Z."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _agent_message_problem(body: Any) -> str | None:
    """Why the platform would reject this agentMessages.create body, if it would."""
    if not isinstance(body, dict):
        return "Invalid JSON payload received."
    unknown = sorted(set(body) - _MESSAGE_FIELDS)
    if unknown:
        return f'Invalid JSON payload received. Unknown name "{unknown[0]}": Cannot find field.'
    if not isinstance(body.get("contentMessage"), dict) or not body["contentMessage"]:
        return "contentMessage is required."
    if "ttl" in body and "expireTime" in body:
        return "Only one of ttl and expireTime may be set."
    if "ttl" in body and not _DURATION.match(str(body["ttl"])):
        return f"Invalid value at 'agent_message.ttl': {body['ttl']!r}"
    if "expireTime" in body and not _TIMESTAMP.match(str(body["expireTime"])):
        return f"Invalid value at 'agent_message.expire_time': {body['expireTime']!r}"
    return None


class FakeRbm(FakeServer):
    """The RBM REST API on 127.0.0.1; every phone has RCS unless told otherwise.

        with FakeRbm() as rbm:
            rbm.set_phone("+15550000002", "not_rcs")
            rbm.script("create", "+15550000001", [503, 200])
            ...  # point RBM_API_ENDPOINT at rbm.url
            assert rbm.count("create", phone="+15550000001") == 2

    The Authorization header is ignored. A message is "queued" once accepted,
    "delivered" after mark_delivered(), "revoked" after a successful DELETE.
    """

    def __init__(self, port: int = 0):
        super().__init__(port)
        self.reset()

    # Behaviour

    def reset(self) -> None:
        """Forget every request, message and behaviour setting."""
        with self._lock:
            self._requests: list[dict] = []
            self._messages: dict[str, dict] = {}
            self._phones: dict[str, tuple[str, float]] = {}
            self._faults = Faults()

    def set_phone(self, phone: str, mode: str = "accept", delay: float = 0.0) -> None:
        """accept | not_rcs (404 on create, events, capabilities) | error (500 on
        create) | slow (accept, but answer every call after `delay` seconds)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        with self._lock:
            self._phones[phone] = (mode, delay)

    def script(self, method: str, phone_or_message: str, statuses: list[int]) -> None:
        """The next creates to a phone, or revokes of a message id, answer these
        statuses in turn; a 2xx entry means "behave normally"."""
        if method not in ("create", "revoke"):
            raise ValueError("method must be 'create' (keyed by phone) or 'revoke' (keyed by message id)")
        with self._lock:
            self._faults.script((method, phone_or_message), statuses)

    def fail_share(self, kind: str, share: float, seed: int = 0) -> None:
        """Answer 500 to a random `share` of create or revoke calls, repeatably."""
        if kind not in ("create", "revoke"):
            raise ValueError("kind must be 'create' or 'revoke'")
        with self._lock:
            self._faults.fail_share(kind, share, seed)

    def mark_delivered(self, message_id: str) -> bool:
        """The user's device got the message: a later revoke answers 404.
        False when the message is unknown or no longer queued."""
        with self._lock:
            message = self._messages.get(message_id)
            if message is None or message["state"] != "queued":
                return False
            message["state"] = "delivered"
            return True

    # Hooks for a subclass that plays the devices; called under the lock.

    def _queued(self, message_id: str, message: dict) -> None:
        """A create queued a new message (not a repeated messageId)."""

    def _revoked(self, message_id: str, message: dict) -> None:
        """A DELETE revoked a queued message."""

    # Records

    @property
    def requests(self) -> list[dict]:
        """Every request so far: method, path, kind, phone, message_id, agent_id,
        query, body, status, time, duplicate."""
        with self._lock:
            return [dict(r) for r in self._requests]

    @property
    def messages(self) -> dict[str, dict]:
        """message id -> {phone, agent_id, body, state, send_time, duplicates}."""
        with self._lock:
            return {k: dict(v) for k, v in self._messages.items()}

    def count(self, kind: str, message_id: str | None = None, phone: str | None = None, status: int | None = None) -> int:
        """How many requests of a kind (create, revoke, event, capabilities) matched."""
        with self._lock:
            return sum(
                1
                for r in self._requests
                if r["kind"] == kind
                and message_id in (None, r["message_id"])
                and phone in (None, r["phone"])
                and status in (None, r["status"])
            )

    # Serving

    def handle(self, request: Request) -> tuple[int, Any]:
        received = time.time()
        kind, phone, path_id = None, None, None
        for method, pattern, name in _ROUTES:
            match = pattern.match(request.path)
            if match and request.method == method:
                kind, phone = name, unquote(match[1])
                path_id = unquote(match[2]) if name == "revoke" else None
        try:
            body = request.json()
        except ValueError:
            body = request.body.decode(errors="replace")
        message_id = {"create": request.query.get("messageId"), "revoke": path_id}.get(kind)
        if kind == "event" and isinstance(body, dict):
            message_id = body.get("messageId")
        record = {
            "method": request.method,
            "path": request.path,
            "kind": kind,
            "phone": phone,
            "message_id": message_id,
            "agent_id": request.query.get("agentId"),
            "query": request.query,
            "body": body,
            "status": None,
            "time": received,
            "duplicate": False,
        }
        with self._lock:
            status, payload = self._answer(record)
            record["status"] = status
            self._requests.append(record)
            mode, delay = self._phones.get(phone, ("accept", 0.0))
        if mode == "slow":
            time.sleep(delay)  # outside the lock: other phones stay fast
        return status, payload

    def _answer(self, r: dict) -> tuple[int, Any]:
        """The platform's answer to one recorded request; called under the lock."""
        if r["kind"] is None:
            return google_error(404, f"Method or path not found: {r['method']} {r['path']}")
        if not r["agent_id"]:
            return google_error(400, "agentId is required.")
        if not E164.match(r["phone"]):
            return google_error(400, f"Invalid phone number: {r['phone']!r}")
        return getattr(self, "_" + r["kind"])(r)

    def _mode(self, phone: str) -> str:
        return self._phones.get(phone, ("accept", 0.0))[0]

    def _create(self, r: dict) -> tuple[int, Any]:
        phone, message_id, body = r["phone"], r["message_id"], r["body"]
        if not message_id:
            return google_error(400, "messageId is required.")
        problem = _agent_message_problem(body)
        if problem:
            return google_error(400, problem)
        error = self._faults.next_error(("create", phone), "create")
        if error:
            return google_error(error)
        if self._mode(phone) == "not_rcs":
            return google_error(404)
        if self._mode(phone) == "error":
            return google_error(500)
        message = self._messages.get(message_id)
        if message is not None and message["agent_id"] == r["agent_id"]:
            # The platform ignores a messageId it has seen: same answer, not queued again.
            r["duplicate"] = True
            message["duplicates"] += 1
        else:
            message = {"phone": phone, "agent_id": r["agent_id"], "body": body, "state": "queued", "send_time": now_rfc3339(), "duplicates": 0}
            self._messages[message_id] = message
            self._queued(message_id, message)
        fields = {k: v for k, v in message["body"].items() if k not in ("name", "sendTime")}
        return 200, {"name": f"phones/{message['phone']}/agentMessages/{message_id}", "sendTime": message["send_time"], **fields}

    def _revoke(self, r: dict) -> tuple[int, Any]:
        error = self._faults.next_error(("revoke", r["message_id"]), "revoke")
        if error:
            return google_error(error)
        message = self._messages.get(r["message_id"])
        if message is None or (message["phone"], message["agent_id"], message["state"]) != (r["phone"], r["agent_id"], "queued"):
            return google_error(404)  # unknown, delivered already, or revoked already
        message["state"] = "revoked"
        self._revoked(r["message_id"], message)
        return 200, {}

    def _event(self, r: dict) -> tuple[int, Any]:
        body, event_id = r["body"], r["query"].get("eventId")
        if not event_id:
            return google_error(400, "eventId is required.")
        if not isinstance(body, dict) or body.get("eventType") not in ("READ", "IS_TYPING"):
            return google_error(400, "eventType must be READ or IS_TYPING.")
        if body["eventType"] == "READ" and not body.get("messageId"):
            return google_error(400, "messageId is required for READ.")
        if self._mode(r["phone"]) == "not_rcs":
            return google_error(404)
        return 200, {**body, "name": f"phones/{r['phone']}/agentEvents/{event_id}"}

    def _capabilities(self, r: dict) -> tuple[int, Any]:
        if not r["query"].get("requestId"):
            return google_error(400, "requestId is required.")
        if self._mode(r["phone"]) == "not_rcs":
            return google_error(404)
        return 200, {"features": list(FEATURES)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m local.fake_rbm", description="Fake RBM REST API on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0, help="port to bind; a free one by default")
    parser.add_argument("--not-rcs", action="append", default=[], metavar="PHONE", help="a phone without RCS (answers 404); repeatable")
    args = parser.parse_args(argv)
    fake = FakeRbm()
    for phone in args.not_rcs:
        fake.set_phone(phone, "not_rcs")
    serve_until_interrupted(fake, args.port)


if __name__ == "__main__":
    main()
