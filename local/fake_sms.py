"""Fakes of the SMS providers a fallback can go through, for tests and demos.

FakeTwilio speaks Twilio's Messages API; FakeSmsWebhook a generic gateway
that takes an HMAC-signed JSON POST and honours its idempotency key (the
contract in the README). Both record what they sent and can be told to fail
(429 / 503 with `Retry-After`), be slow, hold their answer after sending — how
a test kills a caller between the provider call and its own state write — or
send and then drop the connection without answering, the worst a caller can
meet; `script_failure` makes the sends to one number fail in any ambiguous way
(500 / 502 / 504, a reset or close after the request was read, an answer held
past the caller's read timeout), after sending the SMS or before.

FakeTwilio also calls back as Twilio does: after each send with a
`StatusCallback`, it POSTs the message's statuses there, form-encoded and signed
with `X-Twilio-Signature` — late, and as scripted per number: duplicated, out of
order, ending delivered, undelivered (30003 / 30005 / 30006 / 30007) or failed.
It serves the Messages list with Twilio's filters, newest first, in pages.

Errors are worded as the providers word them, phone number included:
Twilio's 21211 says "The 'To' number +1555... is not a valid phone number."
(https://www.twilio.com/docs/api/errors/21211), so a caller that logs reply
bodies leaks the number.

    python -m local.fake_sms twilio --port 8092 --account-sid AC... --auth-token secret
    python -m local.fake_sms webhook --port 8093 --secret secret
"""

import argparse
import base64
import collections
import hashlib
import hmac
import re
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qs, urlencode

import requests

from local.fakehttp import DROP, E164, RESET, FakeServer, Faults, Request, serve_until_interrupted

# Statuses that come with a Retry-After header once set_retry_after() is called.
RETRY_AFTER_STATUSES = (429, 503)
# Ambiguous failures a script may name besides a status: the connection reset or closed
# after the request was read, and no answer before the caller's read timeout.
RESET_AFTER_READ, CLOSE_AFTER_READ, READ_TIMEOUT = "reset", "close", "timeout"


def _sends(status: int) -> bool:
    """Whether a scripted error answer still sends the SMS. 4xx and 503 say the
    request was not acted on (https://www.twilio.com/docs/api/errors/20429,
    /20503); after a 500 Twilio warns a retry may text the customer twice
    (/20500), so a 500, 502 or 504 takes that worst case: the SMS went out."""
    return status >= 500 and status != 503


class Rejected(Exception):
    """A provider's refusal of a request: the HTTP status and error body."""

    def __init__(self, status: int, body: Any):
        super().__init__(status)
        self.status, self.body = status, body


class SmsFake(FakeServer):
    """What both SMS fakes share: records, failures, delay and hold.

    A subclass reads a request into {to, text, message_id, fields} or raises
    Rejected, and words its own error and success answers.
    """

    def __init__(self, port: int = 0):
        super().__init__(port)
        self._released = threading.Event()
        self.reset()

    def _read(self, request: Request) -> dict:
        raise NotImplementedError

    def _failure(self, status: int, message: dict) -> Any:
        """The body of a scripted error answer to `message` (as _read gave it)."""
        raise NotImplementedError

    def _success(self, sent: dict) -> tuple[int, Any]:
        raise NotImplementedError

    # Behaviour

    def reset(self) -> None:
        """Forget what was sent and every behaviour setting; releases a hold."""
        with self._lock:
            self._sent: list[dict] = []
            self._received: list[float] = []  # when each request arrived
            self._faults = Faults()
            self._delay = 0.0
            self._retry_after: str | None = None
            self._drop: object | None = None  # DROP or RESET
            self._failures: dict[str, collections.deque[tuple[int | str, bool]]] = {}
            self.stall = 16.0  # seconds a READ_TIMEOUT holds the request: past the relay's 15 s read timeout
        self.release()

    def script(self, statuses: list[int]) -> None:
        """The next sends answer these statuses in turn; 2xx means "send normally".
        A 500 / 502 / 504 sends the SMS and then answers the error; others send nothing."""
        with self._lock:
            self._faults.script("send", statuses)

    def script_failure(self, to: str, failure: int | str, sends: bool) -> None:
        """The next send to `to` fails this way — a status, RESET_AFTER_READ,
        CLOSE_AFTER_READ or READ_TIMEOUT (hold the request `stall` seconds, then
        close) — having sent the SMS first (`sends`) or not; queued per number, and
        taking precedence over script()."""
        with self._lock:
            self._failures.setdefault(to, collections.deque()).append((failure, sends))

    def fail_share(self, share: float, seed: int = 0) -> None:
        """Answer 503 (and send nothing) to a random `share` of sends, repeatably."""
        with self._lock:
            self._faults.fail_share("send", share, seed, status=503)

    def set_delay(self, seconds: float) -> None:
        """Send at once, but answer `seconds` later."""
        with self._lock:
            self._delay = seconds

    def set_retry_after(self, value: str | int | None) -> None:
        """Scripted 429 / 503 answers carry `Retry-After: value` (seconds or an HTTP date)."""
        with self._lock:
            self._retry_after = None if value is None else str(value)

    def drop(self, reset: bool = True) -> None:
        """From now on, read each request in full, send the SMS (it counts as sent)
        and end the connection without answering: a TCP reset, or a plain close."""
        with self._lock:
            self._drop = RESET if reset else DROP

    def hold(self) -> None:
        """From now on, send (and record) but keep the answer until release()."""
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def stop(self) -> None:
        self.release()  # let held answers finish rather than leak their threads
        super().stop()

    # Records

    @property
    def sent(self) -> list[dict]:
        """Each SMS that went out: to, text, message_id, provider_id, time, fields."""
        with self._lock:
            return [dict(s) for s in self._sent]

    @property
    def received(self) -> int:
        """Requests that reached the provider, whatever it answered."""
        with self._lock:
            return len(self._received)

    @property
    def received_at(self) -> list[float]:
        """When each request reached the provider (time.time())."""
        with self._lock:
            return list(self._received)

    def count(self, to: str | None = None) -> int:
        with self._lock:
            return sum(1 for s in self._sent if to in (None, s["to"]))

    def wait_sent(self, n: int = 1, timeout: float = 5.0) -> bool:
        """Wait until at least n SMS went out; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: len(self._sent) >= n, timeout)

    # Serving

    def handle(self, request: Request) -> tuple[int, Any] | tuple[int, Any, dict[str, str]]:
        with self._lock:
            self._received.append(time.time())
        try:
            message = self._read(request)
        except Rejected as rejected:
            return rejected.status, rejected.body
        with self._lock:
            replay = self._replay(message)
            if replay is not None:
                return replay
            failure, sends = self._next_failure(message["to"])
            if not sends and isinstance(failure, int):
                wait = self._retry_after if failure in RETRY_AFTER_STATUSES else None
                return failure, self._failure(failure, message), {"Retry-After": wait} if wait else {}
            sent = {**message, "provider_id": self._new_id(), "time": time.time()} if sends else None
            if sent is not None:
                self._sent.append(sent)
                self._remember(message, sent)
                self._lock.notify_all()
            delay, drop, stall = self._delay, self._drop, self.stall
        if sent is not None:
            self._accepted(sent)
        if isinstance(failure, int):
            return failure, self._failure(failure, message)
        if failure == READ_TIMEOUT:
            time.sleep(stall)
        if failure is not None:
            return 0, RESET if failure == RESET_AFTER_READ else DROP
        if drop:
            return 0, drop
        time.sleep(delay)
        self._released.wait()
        return self._success(sent)

    def _next_failure(self, to: str) -> tuple[int | str | None, bool]:
        """How the next send to `to` fails (None: it does not) and whether it sends the SMS;
        the caller holds the lock."""
        scripted = self._failures.get(to)
        if scripted:
            return scripted.popleft()
        error = self._faults.next_error("send", "send")
        return error, error is None or _sends(error)

    def _replay(self, message: dict) -> tuple[int, Any] | None:
        """The answer to a request already acted on, or None to act on it; the caller holds the lock."""
        return None

    def _remember(self, message: dict, sent: dict) -> None:
        """Keep what a later request with the same key must answer; the caller holds the lock."""

    def _accepted(self, sent: dict) -> None:
        """What follows an SMS that went out, whatever the answer to its request."""

    def _new_id(self) -> str:
        return uuid.uuid4().hex


def twilio_error(status: int, code: int, message: str) -> dict:
    """Twilio's JSON error body."""
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


_TWILIO_PATH = re.compile(r"^/2010-04-01/Accounts/([^/]+)/Messages\.json$")
# Scripted failures answer with the error code Twilio documents for the status
# (https://www.twilio.com/docs/api/errors): a 400 is the invalid-number error,
# whose message holds the number in full.
_TWILIO_CODES = {400: 21211, 401: 20003, 403: 20403, 404: 20404, 429: 20429, 500: 20500, 503: 20503}


def _invalid_to(to: str) -> Rejected:
    """Twilio's 21211, worded as Twilio words it: with the number."""
    return Rejected(400, twilio_error(400, 21211, f"The 'To' number {to} is not a valid phone number."))


def twilio_signature(auth_token: str, url: str, fields: dict[str, str]) -> str:
    """X-Twilio-Signature as Twilio computes it ("Webhooks security",
    https://www.twilio.com/docs/usage/security#validating-requests): the full URL,
    then each POST field's name and value in the order of the names, HMAC-SHA1
    with the auth token, base64."""
    data = url + "".join(name + fields[name] for name in sorted(fields))
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()


# What Twilio reports after a send when nothing else is scripted for the number.
DELIVERED = (("sent", None), ("delivered", None))
# Statuses after which a message has a date_sent (it left Twilio).
_LEFT = {"sent", "delivered", "undelivered", "read"}
PAGE_SIZE, MAX_PAGE_SIZE = 50, 1000  # the Messages list's default and largest page


def _date_filter(value: str) -> datetime:
    """A DateSent filter value: YYYY-MM-DD (midnight UTC starting that day) or
    YYYY-MM-DDThh:mm:ssZ; ValueError otherwise."""
    for form in ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%d"):
        try:
            return datetime.strptime(value, form).replace(tzinfo=UTC)
        except ValueError:
            continue
    raise ValueError(value)


class FakeTwilio(SmsFake):
    """Twilio's Messages API: POST /2010-04-01/Accounts/{sid}/Messages.json,
    form-encoded To, Body and From or MessagingServiceSid, HTTP Basic auth; GET of
    the same path lists the messages (filters To, From, DateSent, DateSent<,
    DateSent>; PageSize, Page; newest first). A send with `StatusCallback` is
    followed, `callback_delay` seconds later, by one signed POST per status
    scripted for its number (`script_statuses`; DELIVERED otherwise)."""

    def __init__(self, account_sid: str = "AC" + "0" * 32, auth_token: str = "token", port: int = 0):
        self.account_sid, self.auth_token = account_sid, auth_token
        super().__init__(port)

    def reset(self) -> None:
        with self._lock:
            self._statuses: dict[str, tuple[tuple[tuple[str, str | None], ...], bool, bool]] = {}
            self._callbacks: list[dict] = []
            self.callback_delay = 0.2  # seconds between the send and its first callback
        super().reset()

    def script_statuses(
        self, to: str, statuses: list[tuple[str, str | None]], duplicate: bool = False, reverse: bool = False
    ) -> None:
        """Each later send to `to` reports these (status, ErrorCode) in turn, e.g.
        [("sent", None), ("undelivered", "30003")]; `duplicate` posts each twice,
        `reverse` posts them last first (as callbacks overtaking each other arrive)."""
        with self._lock:
            self._statuses[to] = (tuple(statuses), duplicate, reverse)

    def script_lookups(self, statuses: list[int]) -> None:
        """The next reads of the Messages list answer these statuses in turn; 200 means "list normally"."""
        with self._lock:
            self._faults.script("list", statuses)

    @property
    def callbacks(self) -> list[dict]:
        """Each status callback posted: sid, status, error_code, url, answered (the HTTP status, or None)."""
        with self._lock:
            return [dict(c) for c in self._callbacks]

    def wait_callbacks(self, n: int, timeout: float = 10.0) -> bool:
        """Wait until at least n callbacks were answered; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: sum(c["answered"] is not None for c in self._callbacks) >= n, timeout)

    def handle(self, request: Request) -> tuple[int, Any] | tuple[int, Any, dict[str, str]]:
        if request.method == "GET":
            try:
                self._authorize(request)
            except Rejected as rejected:
                return rejected.status, rejected.body
            with self._lock:
                error = self._faults.next_error("list", "list")
            if error is not None:
                return error, twilio_error(error, _TWILIO_CODES.get(error, 20500), "Scripted failure")
            return self._list(request.query)
        return super().handle(request)

    def _authorize(self, request: Request) -> None:
        expected = "Basic " + base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if not hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected.encode()):
            raise Rejected(401, twilio_error(401, 20003, "Authenticate"))
        match = _TWILIO_PATH.match(request.path)
        if request.method not in ("GET", "POST") or not match or match[1] != self.account_sid:
            raise Rejected(404, twilio_error(404, 20404, f"The requested resource {request.path} was not found"))

    def _list(self, query: dict[str, str]) -> tuple[int, Any]:
        """The Messages list resource (Twilio's Message resource reference, "Read multiple
        Message resources"): filters To, From, DateSent (that day, or that second),
        DateSent< (on or before), DateSent> (on or after); newest first; PageSize and Page."""
        try:
            size = min(int(query.get("PageSize", PAGE_SIZE)), MAX_PAGE_SIZE)
            page = int(query.get("Page", 0))
            bounds = {k: _date_filter(query[k]) for k in ("DateSent", "DateSent<", "DateSent>") if query.get(k)}
        except ValueError:
            return 400, twilio_error(400, 20001, "Invalid filter or paging parameter")
        if size < 1 or page < 0:
            return 400, twilio_error(400, 20001, "Invalid paging parameter")
        with self._lock:
            resources = [self._resource(s) for s in sorted(self._sent, key=lambda s: s["time"], reverse=True)]
        resources = [r for r in resources if self._matches(r, query, bounds)]
        chunk = [{k: v for k, v in r.items() if k != "_date_sent"} for r in resources[page * size : (page + 1) * size]]
        base = f"/2010-04-01/Accounts/{self.account_sid}/Messages.json"
        filters = {k: v for k, v in query.items() if k not in ("Page", "PageSize", "PageToken")}

        def uri(n: int) -> str:
            return f"{base}?{urlencode({**filters, 'PageSize': size, 'Page': n})}"

        more = (page + 1) * size < len(resources)
        return 200, {
            "messages": chunk,
            "page": page,
            "page_size": size,
            "start": page * size,
            "end": page * size + max(len(chunk) - 1, 0),
            "uri": uri(page),
            "first_page_uri": uri(0),
            "next_page_uri": uri(page + 1) + f"&PageToken=PA{page + 1}" if more else None,
            "previous_page_uri": uri(page - 1) if page > 0 else None,
        }

    @staticmethod
    def _matches(resource: dict, query: dict[str, str], bounds: dict[str, datetime]) -> bool:
        if query.get("To") and resource["to"] != query["To"]:
            return False
        if query.get("From") and resource["from"] != query["From"]:
            return False
        if not bounds:
            return True
        sent = resource["_date_sent"]
        if sent is None:  # queued: not sent yet, so no DateSent filter matches it
            return False
        exact = bounds.get("DateSent")
        if exact is not None and not (
            sent.date() == exact.date() if exact.time() == datetime.min.time() else sent.replace(microsecond=0) == exact
        ):
            return False
        if "DateSent<" in bounds and sent > bounds["DateSent<"]:
            return False
        return not ("DateSent>" in bounds and sent < bounds["DateSent>"])

    def _read(self, request: Request) -> dict:
        self._authorize(request)
        form = {k: v[0] for k, v in parse_qs(request.body.decode(errors="replace"), keep_blank_values=True).items()}
        to, body = form.get("To", ""), form.get("Body", "")
        if not to:
            raise Rejected(400, twilio_error(400, 21604, "A 'To' phone number is required."))
        if not E164.match(to):
            raise _invalid_to(to)
        if not body:
            raise Rejected(400, twilio_error(400, 21602, "Message body is required."))
        if not form.get("From") and not form.get("MessagingServiceSid"):
            raise Rejected(400, twilio_error(400, 21603, "A 'From' or 'MessagingServiceSid' parameter is required."))
        return {"to": to, "text": body, "message_id": None, "fields": form}

    def _new_id(self) -> str:
        return "SM" + uuid.uuid4().hex

    def _failure(self, status: int, message: dict) -> Any:
        if status == 400:
            return _invalid_to(message["to"]).body
        return twilio_error(status, _TWILIO_CODES.get(status, 20500), "Scripted failure")

    def _accepted(self, sent: dict) -> None:
        self._call_back(sent)

    def _success(self, sent: dict) -> tuple[int, Any]:
        resource = self._resource(sent, now=False)
        del resource["_date_sent"]
        return 201, resource

    def _resource(self, sent: dict, now: bool = True) -> dict:
        """The Message resource of an SMS sent: as created (`now` false), or as it is now, at
        its last scripted status (`_date_sent`: date_sent as a datetime, for the list's filters)."""
        form, sid = sent["fields"], sent["provider_id"]
        created = format_datetime(datetime.fromtimestamp(sent["time"], UTC))
        status = (now and sent.get("status")) or ("queued" if form.get("From") else "accepted")
        error_code, date_sent = (sent.get("error_code"), sent.get("date_sent")) if now else (None, None)
        uri = f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json"
        return {
            "sid": sid,
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "to": sent["to"],
            "from": form.get("From") or None,
            "messaging_service_sid": form.get("MessagingServiceSid") or None,
            "body": sent["text"],
            # Twilio answers "accepted" when a Messaging Service picks the sender.
            "status": status,
            "direction": "outbound-api",
            "num_segments": "1",
            "num_media": "0",
            "price": None,
            "price_unit": "USD",
            "error_code": int(error_code) if error_code else None,
            "error_message": None,
            "date_created": created,
            "date_updated": created,
            "date_sent": format_datetime(date_sent) if date_sent else None,
            "_date_sent": date_sent,
            "uri": uri,
            "subresource_uris": {"media": uri.replace(".json", "/Media.json")},
        }

    def _call_back(self, sent: dict) -> None:
        """Post the statuses scripted for the number to the send's StatusCallback, late, in a
        thread, whatever the answer to the send (a 500 after sending, a dropped connection);
        the Messages list shows the message at its last scripted status at once."""
        url = sent["fields"].get("StatusCallback")
        with self._lock:
            statuses, duplicate, reverse = self._statuses.get(sent["to"], (DELIVERED, False, False))
            delay = self.callback_delay
            for status, code in statuses:  # the resource moves on as Twilio's would
                sent["status"], sent["error_code"] = status, code
                if status in _LEFT and sent.get("date_sent") is None:
                    sent["date_sent"] = datetime.fromtimestamp(sent["time"], UTC) + timedelta(seconds=1)
        if not url:
            return
        order = list(reversed(statuses)) if reverse else list(statuses)
        posts = [p for p in order for _ in range(2 if duplicate else 1)]
        threading.Thread(target=self._post_callbacks, args=(url, sent, posts, delay), daemon=True).start()

    def _post_callbacks(self, url: str, sent: dict, posts: list[tuple[str, str | None]], delay: float) -> None:
        time.sleep(delay)
        form = sent["fields"]
        for status, code in posts:
            fields = {
                "AccountSid": self.account_sid,
                "ApiVersion": "2010-04-01",
                "From": form.get("From") or "",
                "MessageSid": sent["provider_id"],
                "MessageStatus": status,
                "SmsSid": sent["provider_id"],
                "SmsStatus": status,
                "To": sent["to"],
                **({"ErrorCode": code} if code else {}),
                **({"MessagingServiceSid": form["MessagingServiceSid"]} if form.get("MessagingServiceSid") else {}),
            }
            record = {"sid": sent["provider_id"], "status": status, "error_code": code, "url": url, "answered": None}
            with self._lock:
                self._callbacks.append(record)
            try:
                answered = requests.post(
                    url,
                    data=fields,
                    headers={"X-Twilio-Signature": twilio_signature(self.auth_token, url, fields)},
                    timeout=10,
                ).status_code
            except requests.RequestException:
                answered = 0
            with self._lock:
                record["answered"] = answered
                self._lock.notify_all()


def gateway_error(code: str, text: str) -> dict:
    """The signed-webhook contract's error body."""
    return {"code": code, "error": text}


def _bad_number(to: str) -> Rejected:
    return Rejected(400, gateway_error("invalid_to", f"{to} is not a phone number we can send to"))


SIGNATURE_TOLERANCE = 300  # seconds between a signature's timestamp and the gateway's clock, either way
IDEMPOTENCY_WINDOW = 24 * 3600  # seconds a key's first result is kept
_SIGNATURE = re.compile(r"t=(\d{1,12}),v1=([0-9a-f]{64})")


class FakeSmsWebhook(SmsFake):
    """A gateway written to our contract (the README, `SMS_WEBHOOK_URL`): POST JSON
    {to, text, message_id} to any path with `Idempotency-Key` and
    `X-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "v1:<t>:<key>:" + raw body)>`.
    A missing, malformed or wrong signature is 401 `bad_signature`; a timestamp more than
    300 s from the gateway's clock is 401 `stale_signature`. The same key within 24 h
    answers the first SMS it sent (2xx, the same id) and sends nothing more; a request that
    sent nothing leaves no record. Errors are JSON {"code", "error"}, and the error text
    may name the number."""

    def __init__(self, secret: str = "secret", port: int = 0):
        self.secret = secret.encode()
        super().__init__(port)

    def reset(self) -> None:
        with self._lock:
            self._results: dict[str, dict] = {}  # idempotency key -> the SMS its first send sent
            self._replayed = 0
        super().reset()

    @property
    def replayed(self) -> int:
        """Requests answered from an earlier send's record, sending nothing."""
        with self._lock:
            return self._replayed

    def signature(self, body: bytes, key: str, timestamp: int | None = None) -> str:
        """The X-Signature value a caller must send with this body and Idempotency-Key (now, by default)."""
        t = int(time.time()) if timestamp is None else timestamp
        mac = hmac.new(self.secret, f"v1:{t}:{key}:".encode() + body, hashlib.sha256).hexdigest()
        return f"t={t},v1={mac}"

    def _verify(self, request: Request) -> None:
        match = _SIGNATURE.fullmatch(request.headers.get("X-Signature", "").strip())
        key = request.headers.get("Idempotency-Key", "")
        if not match or not key:
            raise Rejected(401, gateway_error("bad_signature", "bad signature"))
        expected = self.signature(request.body, key, int(match[1])).encode()
        if not hmac.compare_digest(request.headers["X-Signature"].strip().encode(), expected):
            raise Rejected(401, gateway_error("bad_signature", "bad signature"))
        if abs(time.time() - int(match[1])) > SIGNATURE_TOLERANCE:
            raise Rejected(401, gateway_error("stale_signature", "signature timestamp outside the tolerance"))

    def _replay(self, message: dict) -> tuple[int, Any] | None:
        first = self._results.get(message["key"])
        if first is None or time.time() - first["time"] > IDEMPOTENCY_WINDOW:
            return None
        self._replayed += 1
        return self._success(first)

    def _remember(self, message: dict, sent: dict) -> None:
        self._results[message["key"]] = sent

    def _read(self, request: Request) -> dict:
        if request.method != "POST":
            raise Rejected(405, gateway_error("method_not_allowed", "method not allowed"))
        self._verify(request)
        try:
            payload = request.json()
        except ValueError:
            raise Rejected(400, gateway_error("bad_request", "body is not JSON")) from None
        if not isinstance(payload, dict) or not all(
            isinstance(payload.get(k), str) and payload[k] for k in ("to", "text", "message_id")
        ):
            raise Rejected(400, gateway_error("bad_request", "to, text and message_id are required strings"))
        if not E164.match(payload["to"]):
            raise _bad_number(payload["to"])
        return {
            "to": payload["to"],
            "text": payload["text"],
            "message_id": payload["message_id"],
            "key": request.headers["Idempotency-Key"],
            "fields": payload,
        }

    def _failure(self, status: int, message: dict) -> Any:
        if status == 400:
            return _bad_number(message["to"]).body
        return gateway_error(f"http_{status}", f"gateway error {status} sending to {message['to']}")

    def _success(self, sent: dict) -> tuple[int, Any]:
        return 200, {"id": sent["provider_id"], "status": "accepted"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m local.fake_sms", description="Fake SMS provider on 127.0.0.1.")
    providers = parser.add_subparsers(dest="provider", required=True)
    twilio = providers.add_parser("twilio", help="Twilio's Messages API")
    twilio.add_argument("--account-sid", default="AC" + "0" * 32)
    twilio.add_argument("--auth-token", default="token")
    webhook = providers.add_parser("webhook", help="signed JSON webhook gateway")
    webhook.add_argument("--secret", default="secret")
    for sub in (twilio, webhook):
        sub.add_argument("--port", type=int, default=0, help="port to bind; a free one by default")
    args = parser.parse_args(argv)
    if args.provider == "twilio":
        fake: SmsFake = FakeTwilio(args.account_sid, args.auth_token)
    else:
        fake = FakeSmsWebhook(args.secret)
    serve_until_interrupted(fake, args.port)


if __name__ == "__main__":
    main()
