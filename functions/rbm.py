"""The RBM REST API: agentMessages create / delete.

Callers get an `Outcome` they can reason about, never a raw HTTP error:
429, 5xx and connection failures are retried with backoff and jitter inside
a bounded time and only then reported as TRANSIENT. One HTTP session per
instance.

What a failed try says (functions/transport.py): 429 and 503 were not acted
on, and their `Retry-After` (RFC 9110 §10.2.3) is waited out when it fits in
the bound, else handed back on the TRANSIENT result so the sweep waits too. A
dropped connection, a read timeout or another 5xx may have been acted on:
retrying a create is still safe (its messageId is an idempotency key, and the
retry answers 409 ALREADY_EXISTS or 200), but the result says so
(`may_have_acted`), because a DELETE retried after such a failure and
answered 404 may have been revoked by the lost try rather than delivered.
"""

import functools
import random
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import requests

from functions import agents, config, transport

SCOPE = "https://www.googleapis.com/auth/rcsbusinessmessaging"
# connect, read (s): a create RBM answers only after 10 s still gets its answer, and one
# call (RBM_RETRY_SECONDS plus one try) stays inside send_message's 60 s timeout.
TIMEOUT = (3.05, 30)
MAX_BATCH_GET_USERS = 10_000  # numbers one users.batchGet takes (batch_request.MAX_MESSAGES is the same)
RETRY_AFTER_CAP = 900.0  # the longest Retry-After honoured, s: RBM's wait, not a stall of the sweep


class Outcome(StrEnum):
    OK = "OK"
    NOT_FOUND = "NOT_FOUND"  # create: the user can't get RBM; delete: already delivered
    ALREADY_EXISTS = "ALREADY_EXISTS"  # 409 on create: this agent used the id before, so an earlier create was accepted
    INVALID = "INVALID"  # 400
    FORBIDDEN = "FORBIDDEN"  # 401 / 403: credentials, permission or launch state
    TRANSIENT = "TRANSIENT"  # still failing after retries: try again later


_OUTCOMES = {
    200: Outcome.OK,
    404: Outcome.NOT_FOUND,
    409: Outcome.ALREADY_EXISTS,
    400: Outcome.INVALID,
    401: Outcome.FORBIDDEN,
    403: Outcome.FORBIDDEN,
}


@dataclass(frozen=True)
class Result:
    """What one call came to: the outcome, the last HTTP status (None: no answer) and
    body; `retry_after`, seconds RBM asked to wait before the next try (TRANSIENT only);
    `may_have_acted`, whether an earlier try of this call, or the last one, failed
    after RBM may have acted on it (its answer lost, or a 5xx other than 503)."""

    outcome: Outcome
    status: int | None = None
    body: dict[str, Any] = field(default_factory=dict)
    retry_after: float | None = None
    may_have_acted: bool = False

    @property
    def error(self) -> str:
        """Google's error message, for the message document and the logs."""
        detail = self.body.get("error", {}) if isinstance(self.body.get("error"), dict) else {}
        return f"RBM {self.status or 'unreachable'}: {detail.get('message', self.outcome.value)}"[:300]


def _session() -> requests.Session:
    """Google credentials for the real API: the key file's service account when
    RBM_SERVICE_ACCOUNT_KEY_FILE is set (read here, once per instance), else the
    function's own identity. A plain-HTTP root can only be a local fake, and no
    token is ever sent in clear."""
    if config.rbm_endpoint().startswith("http://"):
        return requests.Session()
    import google.auth
    from google.auth.transport.requests import AuthorizedSession
    from google.oauth2 import service_account

    key_file = config.rbm_service_account_key_file()
    if key_file:
        credentials = service_account.Credentials.from_service_account_file(key_file, scopes=[SCOPE])
    else:
        credentials, _ = google.auth.default(scopes=[SCOPE])
    return AuthorizedSession(credentials)


class RbmClient:
    def __init__(self, session: requests.Session, root: str, retry_seconds: float) -> None:
        self.session, self.root, self.retry_seconds = session, root, retry_seconds

    def _try(
        self, method: str, path: str, params: dict[str, Any], body: dict[str, Any] | None
    ) -> tuple[int | None, dict[str, Any], float | None, bool]:
        """One HTTP try: (status or None, JSON body, Retry-After seconds, whether a
        failure leaves open that RBM acted on it)."""
        try:
            response = self.session.request(method, f"{self.root}/v1/{path}", params=params, json=body, timeout=TIMEOUT)
        except requests.RequestException as exc:
            return None, {}, None, transport.may_have_been_read(exc)
        try:
            payload = response.json()
        except ValueError:
            payload = {}
        payload, status = payload if isinstance(payload, dict) else {}, response.status_code
        if status in transport.NOT_PROCESSED:
            return status, payload, transport.retry_after(response, RETRY_AFTER_CAP), False
        return status, payload, None, status >= 500

    def _call(self, method: str, path: str, params: dict[str, Any], body: dict[str, Any] | None = None) -> Result:
        deadline, delay, may_have_acted = time.monotonic() + self.retry_seconds, 0.2, False
        while True:
            status, payload, wait, ambiguous = self._try(method, path, params, body)
            if status in _OUTCOMES:
                return Result(_OUTCOMES[status], status, payload, may_have_acted=may_have_acted)
            if status and status < 500 and status != 429:
                return Result(Outcome.INVALID, status, payload, may_have_acted=may_have_acted)
            may_have_acted |= ambiguous
            sleep = max(wait or 0.0, random.uniform(0, delay))  # full jitter, and no sooner than RBM said
            if time.monotonic() + sleep > deadline:
                return Result(Outcome.TRANSIENT, status, payload, retry_after=wait, may_have_acted=may_have_acted)
            time.sleep(sleep)
            delay *= 2

    def create_message(
        self,
        phone: str,
        message_id: str,
        agent_id: str | None,
        content: dict[str, Any] | None,
        traffic_type: str | None = None,
    ) -> Result:
        """Sends a message. OK: accepted; ALREADY_EXISTS: accepted by an earlier call
        (the platform ignores a messageId this agent used before), so retries are safe."""
        body = {"contentMessage": content} | ({"messageTrafficType": traffic_type} if traffic_type else {})
        params = {"messageId": message_id, "agentId": agent_id and agents.api_form(agent_id)}
        return self._call("POST", f"phones/{phone}/agentMessages", params, body)

    def revoke_message(self, phone: str, message_id: str, agent_id: str | None) -> Result:
        """OK: revoke taken. NOT_FOUND: too late, the message was delivered — unless
        `may_have_acted`, when an earlier try may have revoked it."""
        params = {"agentId": agent_id and agents.api_form(agent_id)}
        return self._call("DELETE", f"phones/{phone}/agentMessages/{message_id}", params)

    def reachable_users(self, phones: list[str], agent_id: str) -> Result:
        """users.batchGet (RBM reference, v1/users/batchGet): which of `phones` (E.164, at
        most MAX_BATCH_GET_USERS) the agent can reach over RCS; OK: `body["reachableUsers"]`,
        absent when none is (proto3 JSON leaves an empty list out).
        The reference documents 600 queries a minute, and the answer may not be current
        (it comes from a cache): a number it leaves out may have RCS after all."""
        return self._call("POST", "users:batchGet", {}, {"users": phones, "agentId": agents.api_form(agent_id)})


@functools.cache
def client(paced: bool = False) -> RbmClient:
    """The instance's RBM client (one HTTP session). `paced`: for calls a Cloud Tasks queue
    paces (process_due_work's, RBM_TASKS_QUEUE set): one try each, so a 429 or 5xx comes back
    TRANSIENT at once and its retry is a new task at the queue's rate, never an extra call
    above it; otherwise failed tries are retried for up to RBM_RETRY_SECONDS."""
    return RbmClient(_session(), config.rbm_endpoint(), 0.0 if paced else config.rbm_retry_seconds())
