"""The RBM REST API: agentMessages create / delete, agentEvents, capabilities.

Callers get an `Outcome` they can reason about, never a raw HTTP error:
429, 5xx and connection failures are retried with backoff and jitter inside
a bounded time and only then reported as TRANSIENT. One HTTP session per
instance.
"""

import functools
import json
import random
import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum

import requests

from functions import config

SCOPE = "https://www.googleapis.com/auth/rcsbusinessmessaging"
TIMEOUT = (3.05, 10)  # connect, read


class Outcome(StrEnum):
    OK = "OK"
    NOT_FOUND = "NOT_FOUND"  # create: the user can't get RBM; delete: already delivered
    INVALID = "INVALID"  # 400
    FORBIDDEN = "FORBIDDEN"  # 401 / 403: credentials, permission or launch state
    TRANSIENT = "TRANSIENT"  # still failing after retries: try again later


_OUTCOMES = {200: Outcome.OK, 404: Outcome.NOT_FOUND, 400: Outcome.INVALID, 401: Outcome.FORBIDDEN, 403: Outcome.FORBIDDEN}


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    status: int | None = None
    body: dict = field(default_factory=dict)

    @property
    def error(self) -> str:
        """Google's error message, for the message document and the logs."""
        detail = self.body.get("error", {}) if isinstance(self.body.get("error"), dict) else {}
        return f"RBM {self.status or 'unreachable'}: {detail.get('message', self.outcome.value)}"[:300]


def _session() -> requests.Session:
    """Google credentials for the real API; a plain-HTTP root can only be a local
    fake, and no token is ever sent in clear."""
    if config.rbm_endpoint().startswith("http://"):
        return requests.Session()
    import google.auth
    from google.auth.transport.requests import AuthorizedSession
    from google.oauth2 import service_account

    key = config.rbm_service_account_key()
    if key:
        credentials = service_account.Credentials.from_service_account_info(json.loads(key), scopes=[SCOPE])
    else:
        credentials, _ = google.auth.default(scopes=[SCOPE])
    return AuthorizedSession(credentials)


class RbmClient:
    def __init__(self, session: requests.Session, root: str, retry_seconds: float):
        self.session, self.root, self.retry_seconds = session, root, retry_seconds

    def _call(self, method: str, path: str, params: dict, body: dict | None = None) -> Result:
        deadline, delay = time.monotonic() + self.retry_seconds, 0.2
        while True:
            try:
                response = self.session.request(method, f"{self.root}/v1/{path}", params=params, json=body, timeout=TIMEOUT)
                status = response.status_code
                try:
                    payload = response.json()
                except ValueError:
                    payload = {}
            except requests.RequestException:
                status, payload = None, {}
            payload = payload if isinstance(payload, dict) else {}
            if status in _OUTCOMES:
                return Result(_OUTCOMES[status], status, payload)
            if status and status < 500 and status != 429:
                return Result(Outcome.INVALID, status, payload)
            sleep = random.uniform(0, delay)  # full jitter
            if time.monotonic() + sleep > deadline:
                return Result(Outcome.TRANSIENT, status, payload)
            time.sleep(sleep)
            delay *= 2

    def create_message(self, phone: str, message_id: str, agent_id: str, content: dict, traffic_type: str | None = None) -> Result:
        """Sends a message; the platform ignores a messageId it has seen, so retries are safe."""
        body = {"contentMessage": content} | ({"messageTrafficType": traffic_type} if traffic_type else {})
        return self._call("POST", f"phones/{phone}/agentMessages", {"messageId": message_id, "agentId": agent_id}, body)

    def revoke_message(self, phone: str, message_id: str, agent_id: str) -> Result:
        """OK: revoked. NOT_FOUND: too late, the message was delivered."""
        return self._call("DELETE", f"phones/{phone}/agentMessages/{message_id}", {"agentId": agent_id})

    def send_event(self, phone: str, agent_id: str, event_type: str, message_id: str | None = None) -> Result:
        """READ (of a user's message) or IS_TYPING, as the agent."""
        body = {"eventType": event_type} | ({"messageId": message_id} if message_id else {})
        return self._call("POST", f"phones/{phone}/agentEvents", {"eventId": str(uuid.uuid4()), "agentId": agent_id}, body)

    def capabilities(self, phone: str, agent_id: str) -> Result:
        """NOT_FOUND: the user can't receive RBM from this agent."""
        return self._call("GET", f"phones/{phone}/capabilities", {"requestId": str(uuid.uuid4()), "agentId": agent_id})


@functools.cache
def client() -> RbmClient:
    return RbmClient(_session(), config.rbm_endpoint(), config.rbm_retry_seconds())
