"""What a scheduled pass touches when deployed, with its Cloud Tasks queue: it
queries Firestore and enqueues the overdue messages' tasks (the safety net), and
nothing else — no Firestore write of a
message, no RBM call, no SMS provider. The deployment relies on it: both get no
secret, and send_fallbacks read-only Firestore access (roles/datastore.viewer);
revoke_expired also republishes the outbox's late outcome events
(outbox.republish, the one thing it writes: their `published` mark), so it
keeps roles/datastore.user (tests/unit/test_infra.py, ACCESS).
"""

from datetime import UTC, datetime, timedelta

import flask
import pytest
from werkzeug.test import EnvironBuilder

from functions import config, conversations, outbox, rbm, revoke_expired, send_fallbacks, sms, store, sweep, timers
from functions.model import Fallback, Message, State

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


VIOLATIONS: list[str] = []


def forbidden(what: str):
    """A stand-in that records the call (a sweep logs and swallows its errors) and fails it."""

    def call(*args, **kwargs):
        VIOLATIONS.append(what)
        raise AssertionError(f"a scheduled pass with a queue {what}")

    return call


@pytest.fixture
def deployed(monkeypatch):
    """A scheduled pass as deployed (both queues), against a database of overdue
    messages that must not be written, and providers that must not be called."""
    monkeypatch.setenv("RBM_TASKS_QUEUE", "projects/p/locations/l/queues/rbm-calls")
    monkeypatch.setenv("SMS_TASKS_QUEUE", "projects/p/locations/l/queues/sms-sends")
    for name in ("SMS_PROVIDER", "RBM_SERVICE_ACCOUNT_KEY_FILE", "TWILIO_AUTH_TOKEN", "SMS_WEBHOOK_SECRET"):
        monkeypatch.delenv(name, raising=False)
    due = [
        Message("m-1", "+447700900001", "agent", state=State.SENT, next_action_at=T0 - timedelta(seconds=60)),
        Message(
            "m-2",
            "+447700900002",
            "agent",
            state=State.REVOKED,
            fallback=Fallback.DUE,
            fallback_text="hi",
            fallback_at=T0 - timedelta(seconds=60),
        ),
    ]
    monkeypatch.setattr(store, "now", lambda: T0)
    monkeypatch.setattr(sweep, "due", lambda s, until, after=None: iter(due if after is None else []))
    VIOLATIONS.clear()
    monkeypatch.setattr(store, "client", forbidden("used Firestore beyond its due-messages query"))
    monkeypatch.setattr(store, "update_all", forbidden("wrote to Firestore"))
    monkeypatch.setattr(conversations, "opted_out", forbidden("read a conversation to act"))
    monkeypatch.setattr(config, "conversation_id_key", forbidden("read the conversation-id key"))
    monkeypatch.setattr(rbm, "client", forbidden("called RBM"))
    monkeypatch.setattr(sms, "provider", forbidden("looked up the SMS provider"))
    enqueued = []
    monkeypatch.setattr(timers, "exists", lambda message_id, duty, due: False)
    monkeypatch.setattr(timers, "enqueue", lambda message_id, duty, due, rerun=None: enqueued.append(duty) or True)
    monkeypatch.setattr(outbox, "republish", lambda now: 0)  # revoke_expired's, allowed to write its marks
    return enqueued


def request() -> flask.Request:
    return flask.Request(EnvironBuilder(method="POST").get_environ())


@pytest.mark.parametrize("entry", [revoke_expired, send_fallbacks], ids=lambda m: m.__name__.split(".")[-1])
def test_a_scheduled_pass_only_queries_and_enqueues(deployed, entry):
    assert entry.handle(request())[1] == 200
    assert not VIOLATIONS
    assert deployed, "the overdue messages were handed to their queue"
    assert all(duty == {revoke_expired: "revoke", send_fallbacks: "fallback"}[entry] for duty in deployed)
