"""A fake of the RBM platform's REST API, for tests and demos.

It speaks Google's wire format for agentMessages create / delete, agentEvents,
capabilities and users.batchGet, keeps the messages it accepted, and can be told to make a
phone unreachable, slow or failing, to throttle with `Retry-After`, or to act
on a call and drop the connection before answering, so callers meet the
platform's real answers without the platform.

A messageId (or eventId) the same agent used before is answered 409
ALREADY_EXISTS and not queued again: the agentMessages.create reference says
the platform "ignores" such a message, and Google's API design rules (AIP-133,
google.aip.dev/133) answer a create of an existing resource with
ALREADY_EXISTS — the worst reading for a caller, so the one the fake gives.

An agent has one id, which events spell `<id>@rbm.goog` (guides/build/events)
and Google's samples pass to the API as "the part before @rbm.goog"
(rbm-api-examples); the reference only says `agentId` is required. The fake
takes either spelling as the same agent, and records the one it was given.

    python -m local.fake_rbm --port 8091 --not-rcs +15550000002
"""

import argparse
import random
import re
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from local.fakehttp import DROP, E164, FakeServer, Faults, Request, google_error, serve_until_interrupted

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
# Kinds of call the controls act on: creates keyed by phone, revokes by message id, users.batchGet by agent id.
CONTROLLED = ("create", "revoke", "batch_get")
# users.batchGet (reference/rest/v1/users/batchGet): the numbers one call takes at most (the
# reference gives none; the 10,000, Twilio's bulk size), and the share of them the
# random sample holds ("approximately 75% of the total requested"; 0 below 500 numbers).
BATCH_GET_MAX_USERS = 10_000
BATCH_GET_SAMPLE_SHARE, BATCH_GET_SAMPLE_MIN = 0.75, 500

_ROUTES = [
    ("POST", re.compile(r"^/v1/phones/([^/]+)/agentMessages$"), "create"),
    ("DELETE", re.compile(r"^/v1/phones/([^/]+)/agentMessages/([^/]+)$"), "revoke"),
    ("POST", re.compile(r"^/v1/phones/([^/]+)/agentEvents$"), "event"),
    ("GET", re.compile(r"^/v1/phones/([^/]+)/capabilities$"), "capabilities"),
    ("POST", re.compile(r"^/v1/users:batchGet$"), "batch_get"),
]
_MESSAGE_FIELDS = {"name", "sendTime", "contentMessage", "messageTrafficType", "ttl", "expireTime"}
_DURATION = re.compile(r"^\d+(\.\d{1,9})?s$")
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$")


def now_rfc3339() -> str:
    """The current UTC time as RBM writes it, e.g. 2026-01-01T00:00:00.123456Z."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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


def _agent(agent_id: str) -> str:
    """The agent an `agentId` names, whichever of its two spellings it is."""
    return agent_id.removesuffix("@rbm.goog")


class FakeRbm(FakeServer):
    """The RBM REST API on 127.0.0.1; every phone has RCS unless told otherwise.

        with FakeRbm() as rbm:
            rbm.set_phone("+15550000002", "not_rcs")
            rbm.script("create", "+15550000001", [429, 200], retry_after="2")
            rbm.drop("revoke", message_id)  # revoked, but the caller never hears so
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
            self._used_ids: set[tuple[str, str]] = set()  # (agentId, messageId or eventId)
            self._retry_after: dict[tuple[str, str], str] = {}
            self._latency: dict[tuple[str, str], float] = {}
            self._drops: dict[tuple[str, str], int] = {}
            self._stale: tuple[float, int] = (0.0, 0)

    def set_phone(self, phone: str, mode: str = "accept", delay: float = 0.0) -> None:
        """accept | not_rcs (404 on create, events, capabilities) | error (500 on
        create) | slow (accept, but answer every call after `delay` seconds)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        with self._lock:
            self._phones[phone] = (mode, delay)

    def script(self, method: str, phone_or_message: str, statuses: list[int], retry_after: str | None = None) -> None:
        """The next creates to a phone, or revokes of a message id, answer these
        statuses in turn; a 2xx entry means "behave normally". A scripted 429 or
        503 carries `Retry-After: retry_after` (delay seconds or an HTTP date) if given."""
        key = _key(method, phone_or_message)
        with self._lock:
            self._faults.script(key, statuses)
            if retry_after is not None:
                self._retry_after[key] = retry_after

    def set_latency(self, method: str, phone_or_message: str, seconds: float) -> None:
        """Creates to a phone, or revokes of a message id, are acted on at once and
        answered `seconds` later (0: at once again)."""
        with self._lock:
            self._latency[_key(method, phone_or_message)] = seconds

    def drop(self, method: str, phone_or_message: str, times: int = 1) -> None:
        """The next `times` creates to a phone, or revokes of a message id, are acted
        on as usual, then the connection is closed without an answer: the caller
        can't know whether the call took effect."""
        with self._lock:
            key = _key(method, phone_or_message)
            self._drops[key] = self._drops.get(key, 0) + times

    def fail_share(self, kind: str, share: float, seed: int = 0, status: int = 500) -> None:
        """Answer `status` (500, or 429 / 503 for a storm) to a random `share` of create or
        revoke calls, repeatably."""
        if kind not in ("create", "revoke"):
            raise ValueError("kind must be 'create' or 'revoke'")
        with self._lock:
            self._faults.fail_share(kind, share, seed, status)

    def stale_share(self, share: float, seed: int = 0) -> None:
        """users.batchGet answers from a cache that "may not be current" (the reference): for
        a `share` of numbers (the same ones for a given seed) it reports the opposite of the
        truth, a number without RCS as reachable and one with RCS as not."""
        if not 0.0 <= share <= 1.0:
            raise ValueError("share must be between 0 and 1")
        with self._lock:
            self._stale = (share, seed)

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
        query, body, status, time, duplicate (409: id used before), dropped
        (acted on, never answered), retry_after (the header sent, if any)."""
        with self._lock:
            return [dict(r) for r in self._requests]

    @property
    def messages(self) -> dict[str, dict]:
        """message id -> {phone, agent_id, body, state, send_time, duplicates}."""
        with self._lock:
            return {k: dict(v) for k, v in self._messages.items()}

    def count(
        self, kind: str, message_id: str | None = None, phone: str | None = None, status: int | None = None
    ) -> int:
        """How many requests of a kind (create, revoke, event, capabilities, batch_get) matched."""
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
                kind, phone = name, unquote(match[1]) if pattern.groups else None
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
            "agent_id": request.query.get("agentId")
            or (body.get("agentId") if kind == "batch_get" and isinstance(body, dict) else None),
            "query": request.query,
            "body": body,
            "status": None,
            "time": received,
            "duplicate": False,
            "dropped": False,
            "retry_after": None,
        }
        key = (kind, {"create": phone, "batch_get": record["agent_id"]}.get(kind, message_id))
        with self._lock:
            status, payload = self._answer(record)
            record["status"] = status
            if status in (429, 503):
                record["retry_after"] = self._retry_after.get(key)
            record["dropped"] = self._drops.get(key, 0) > 0
            if record["dropped"]:
                self._drops[key] -= 1
            self._requests.append(record)
            mode, delay = self._phones.get(phone, ("accept", 0.0))
            latency = self._latency.get(key, 0.0)
        time.sleep(max(delay if mode == "slow" else 0.0, latency))  # outside the lock: other calls stay fast
        if record["dropped"]:
            return status, DROP
        return status, payload, {"Retry-After": record["retry_after"]} if record["retry_after"] else {}

    def _answer(self, r: dict) -> tuple[int, Any]:
        """The platform's answer to one recorded request; called under the lock."""
        if r["kind"] is None:
            return google_error(404, f"Method or path not found: {r['method']} {r['path']}")
        if not r["agent_id"]:
            return google_error(400, "agentId is required.")
        if r["kind"] != "batch_get" and not E164.match(r["phone"]):
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
        if (_agent(r["agent_id"]), message_id) in self._used_ids:
            # The platform ignores an id the agent used before; as AIP-133 has it: 409, not queued again.
            r["duplicate"] = True
            if message_id in self._messages:
                self._messages[message_id]["duplicates"] += 1
            return google_error(409, f"Agent message with id {message_id} already exists.")
        self._used_ids.add((_agent(r["agent_id"]), message_id))
        message = {
            "phone": phone,
            "agent_id": r["agent_id"],
            "body": body,
            "state": "queued",
            "send_time": now_rfc3339(),
            "duplicates": 0,
        }
        self._messages[message_id] = message
        self._queued(message_id, message)
        fields = {k: v for k, v in message["body"].items() if k not in ("name", "sendTime")}
        return 200, {
            "name": f"phones/{message['phone']}/agentMessages/{message_id}",
            "sendTime": message["send_time"],
            **fields,
        }

    def _revoke(self, r: dict) -> tuple[int, Any]:
        error = self._faults.next_error(("revoke", r["message_id"]), "revoke")
        if error:
            return google_error(error)
        message = self._messages.get(r["message_id"])
        if message is None or (message["phone"], _agent(message["agent_id"]), message["state"]) != (
            r["phone"],
            _agent(r["agent_id"]),
            "queued",
        ):
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
        if (_agent(r["agent_id"]), event_id) in self._used_ids:
            r["duplicate"] = True
            return google_error(409, f"Agent event with id {event_id} already exists.")
        self._used_ids.add((_agent(r["agent_id"]), event_id))
        return 200, {**body, "name": f"phones/{r['phone']}/agentEvents/{event_id}"}

    def _capabilities(self, r: dict) -> tuple[int, Any]:
        if not r["query"].get("requestId"):
            return google_error(400, "requestId is required.")
        if self._mode(r["phone"]) == "not_rcs":
            return google_error(404)
        return 200, {"features": list(FEATURES)}

    def _batch_get(self, r: dict) -> tuple[int, Any]:
        """users.batchGet: of `users`, those with RCS (mode other than not_rcs) in
        `reachableUsers`, a stale share reported wrong (stale_share), and the random sample's
        counts, each left out when empty or 0; 400 for a body the reference's request does
        not describe."""
        body = r["body"]
        if not isinstance(body, dict) or set(body) - {"users", "agentId"}:
            return google_error(400, "Invalid JSON payload received. Unknown name: Cannot find field.")
        users = body.get("users")
        if not isinstance(users, list) or not users or not all(isinstance(u, str) for u in users):
            return google_error(400, "users must be a non-empty list of phone numbers.")
        if len(users) > BATCH_GET_MAX_USERS:
            return google_error(400, f"At most {BATCH_GET_MAX_USERS} users per request.")
        if bad := next((u for u in users if not E164.match(u)), None):
            return google_error(400, f"Invalid phone number: {bad!r}")
        error = self._faults.next_error(("batch_get", r["agent_id"]), "batch_get")
        if error:
            return google_error(error)
        share, seed = self._stale
        stale = {u for u in users if random.Random(f"{seed}:{u}").random() < share}
        reachable = [u for u in dict.fromkeys(users) if (self._mode(u) != "not_rcs") != (u in stale)]
        sample = users[: int(len(users) * BATCH_GET_SAMPLE_SHARE)] if len(users) >= BATCH_GET_SAMPLE_MIN else []
        answer = {
            "reachableUsers": reachable,
            "totalRandomSampleUserCount": len(sample),
            "reachableRandomSampleUserCount": sum(1 for u in sample if self._mode(u) != "not_rcs"),
        }
        # The REST answer is the proto3 JSON of the response, which leaves out a field at its
        # default value (protobuf.dev, "ProtoJSON Format"): no reachable number, no `reachableUsers`.
        return 200, {k: v for k, v in answer.items() if v}


def _key(method: str, phone_or_message: str) -> tuple[str, str]:
    if method not in CONTROLLED:
        raise ValueError(
            "method must be 'create' (keyed by phone), 'revoke' (keyed by message id)"
            " or 'batch_get' (keyed by agent id)"
        )
    return method, phone_or_message


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m local.fake_rbm", description="Fake RBM REST API on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0, help="port to bind; a free one by default")
    parser.add_argument(
        "--not-rcs", action="append", default=[], metavar="PHONE", help="a phone without RCS (answers 404); repeatable"
    )
    args = parser.parse_args(argv)
    fake = FakeRbm()
    for phone in args.not_rcs:
        fake.set_phone(phone, "not_rcs")
    serve_until_interrupted(fake, args.port)


if __name__ == "__main__":
    main()
