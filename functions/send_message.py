"""send_message: record an outbound message first, then send it through RBM.

The message id is generated (or given) and stored before the API call, and
the platform ignores a messageId it has seen: whoever retries, a message is
sent at most once. A create that never got through stays PENDING and
revoke_expired sends it again, under the same id, once PENDING_RESEND_SECONDS
have passed (the first record sets no timer: the scheduled safety net finds it;
every later commit that sets a due time sets one, functions/timers.py). A create answered 409
ALREADY_EXISTS was accepted by an earlier call (another request in flight, or
a try whose answer was lost): the message is SENT, like any other.
"""

from typing import Any

import flask

from functions import config, conversations, logs, outbound, rbm_create, store
from functions.model import Message, State
from functions.replies import Reply, reject, reply


def summary(message: Message) -> dict[str, Any]:
    return {"message_id": message.message_id, "state": message.state.value, "fallback": message.fallback.value}


def handle(request: flask.Request) -> Reply:
    logs.bind_trace(request.headers)
    if request.method != "POST":
        return reject(405, "method not allowed")
    try:
        wanted = outbound.parse(request.get_json(silent=True), config.agent_id(), config.sms_max_segments())
    except RecursionError:  # JSON nested deeper than the parser goes: far past Firestore's 20 levels
        return reject(400, "body nests maps and arrays too deep")
    except outbound.InvalidRequest as exc:
        return reject(400, str(exc))
    if conversations.opted_out(wanted.agent_id, wanted.phone):
        return reject(409, "the user unsubscribed from this agent", message_id=wanted.message_id)
    fresh = wanted.record(store.now(), config.pending_resend_seconds())
    try:
        # No timer for the first record: its re-send is a crash-recovery path the safety net covers.
        stored = store.update_message(wanted.message_id, lambda current: current or fresh, timer=False)
    except store.UnstorableError as exc:  # checked before the commit: nothing stored, nothing sent
        return reject(400, str(exc), message_id=wanted.message_id)
    if reason := outbound.conflict(stored, wanted):
        return reject(409, reason, message_id=wanted.message_id)
    message = rbm_create.send(stored)[0] if stored.state is State.PENDING else stored
    if message is None:
        return reply(503, {"error": "RBM unavailable; the message stays PENDING and is retried"} | summary(stored))
    return reply(422 if message.state is State.FAILED else 200, summary(message))
