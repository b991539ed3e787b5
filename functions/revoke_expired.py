"""revoke_expired: revoke messages that missed their deadline; re-send stuck PENDING ones.

A revoke answered 200 makes the fallback due after REVOKE_GRACE_SECONDS; 404 means the message reached
the user first, so its fallback is cancelled — unless an earlier DELETE of it
may have been acted on (interrupted mid-call, or its answer lost), when the 404
is uncertain. Anything else is retried with backoff (and no sooner than RBM's
Retry-After) a bounded number of times, then given up with the reason recorded
(and, for a time-sensitive message, its SMS made due: delivery is uncertain).
A re-send answered 409 ALREADY_EXISTS was accepted before: SENT.
"""

from datetime import timedelta

import flask

from functions import config, conversations, dispatch, logs, outbox, rbm, rbm_create, store
from functions.model import REVOKE_QUERY, SWEPT_STATES, Message, State
from functions.replies import Reply
from functions.sweep import Outcome, Sweep
from functions.transitions import Fact, claim_revoke, hold_fallback, learn, retry_revoke
from functions.work_items import Duty

REVOKE_FACTS = {rbm.Outcome.OK: Fact.REVOKED, rbm.Outcome.NOT_FOUND: Fact.DELIVERED}


def _retry(message: Message, result: rbm.Result) -> Outcome:
    now = store.now()
    after = store.change_message(
        message.message_id,
        lambda m: retry_revoke(
            m,
            now,
            result.error,
            config.revoke_max_attempts(),
            config.retry_backoff_seconds(),
            retry_after=result.retry_after,
            may_have_acted=result.may_have_acted,
        ),
    )
    gave_up = after.next_action_at is None and after.state in (State.FAILED, State.REVOKE_FAILED)
    logs.log(
        "ERROR" if gave_up else "WARNING",
        "gave up; recorded" if gave_up else "will retry",
        event="revoke_gave_up" if gave_up else "revoke_retry",
        message_id=message.message_id,
        attempts=after.attempts,
        reason=after.last_error,
        state=after.state.value,
        fallback=after.fallback.value,
    )
    return Outcome.FAILED if gave_up else Outcome.RETRIED


def _uncertain(message: Message) -> Outcome:
    """404 after an attempt that may have been acted on (interrupted, or its answer lost):
    delivered, or revoked by that attempt. Treated as a revoke that could not be
    completed: a time-sensitive SMS goes out, a normal one waits for DELIVERED."""
    now, error = store.now(), "404 after a revoke whose outcome was lost: delivered, or revoked by that attempt"
    after = store.change_message(message.message_id, lambda m: learn(m, Fact.REVOKE_ABANDONED, now, error=error))
    logs.error(
        "revoke outcome uncertain",
        event="revoke_uncertain",
        message_id=message.message_id,
        state=after.state.value,
        fallback=after.fallback.value,
    )
    return Outcome.FAILED


def _act(message: Message) -> Outcome:
    if message.state is State.PENDING and conversations.opted_out(message.agent_id, message.phone):
        now = store.now()  # unsubscribed since it was recorded: never sent; the fallback sweep cancels its SMS
        store.change_message(message.message_id, lambda m: learn(m, Fact.SEND_FAILED, now, error="user opted out"))
        return Outcome.FAILED
    if message.state is State.PENDING:
        sent, result = rbm_create.send(message)
        return Outcome.RESENT if sent else _retry(message, result)
    result = rbm.client().revoke_message(message.phone, message.message_id, message.agent_id)
    fact = REVOKE_FACTS.get(result.outcome)
    if fact is None:
        return _retry(message, result)
    if fact is Fact.DELIVERED and (message.revoke_uncertain or result.may_have_acted):
        return _uncertain(message)
    now = store.now()
    grace = now + timedelta(seconds=config.revoke_grace())
    after = store.change_message(message.message_id, lambda m: hold_fallback(learn(m, fact, now), grace))
    outcome = Outcome.REVOKED if fact is Fact.REVOKED else Outcome.DELIVERED
    logs.info(
        f"message {outcome}",
        event=f"message_{outcome}",
        message_id=message.message_id,
        agent_id=message.agent_id,
        state=after.state.value,
        fallback=after.fallback.value,
    )
    return outcome


REVOKE = Sweep(
    name="revoke_expired",
    duty=Duty.REVOKE,
    fields=REVOKE_QUERY,
    values=SWEPT_STATES,
    claim=claim_revoke,
    act=_act,
    outcomes=(Outcome.REVOKED, Outcome.DELIVERED, Outcome.RESENT, Outcome.RETRIED, Outcome.FAILED),
)


def handle(request: flask.Request) -> Reply:
    """revoke_expired (Cloud Scheduler): the outcome events left unpublished published
    (outbox.republish), then one scheduled pass of the REVOKE sweep (dispatch.scheduled_run)."""
    logs.bind_trace(request.headers)
    outbox.republish(store.now())
    return dispatch.scheduled_run(REVOKE)
