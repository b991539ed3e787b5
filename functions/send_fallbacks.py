"""send_fallbacks: one SMS for each message whose fallback is due, at most.

The message is marked SENDING under a lease before the provider is called
and SENT after. A send interrupted in between leaves SENDING; when its lease
runs out the next sweep marks it UNKNOWN and reports it, and nothing sends
it again: a possibly missing SMS is reported, a second SMS never happens.
With a provider that honours our idempotency key (sms.Provider.idempotent),
an interrupted or ambiguous send is instead tried again under the same key
until FALLBACK_MAX_ATTEMPTS, and UNKNOWN only when attempts run out. Twilio
takes no key, but its Messages list tells whether an ambiguous create made a
message: such a send is CHECKING, looked up after the backoff (the settle
delay), and an interrupted one once its lease ran out — found: SENT; proven
absent: due again and sent once more; the lookup failing until
FALLBACK_MAX_ATTEMPTS (sends and lookups) are spent: UNKNOWN.
A status callback (receive_sms_status) settles it SENT at any time.
"""

from datetime import datetime, timedelta

import flask

from functions import config, conversations, dispatch, logs, sms, store, timers
from functions.model import FALLBACK_QUERY, SWEPT_FALLBACKS, Fallback, Message
from functions.replies import Reply, reply
from functions.sweep import Outcome, Sweep
from functions.transitions import (
    backoff,
    check_later,
    claim_fallback,
    fallback_checked,
    fallback_failed,
    fallback_sent,
    fallback_unknown,
    retry_fallback,
)
from functions.work_items import Duty

# How each fallback a sweep leaves is logged (severity, and the event name
# log-based metrics count) and counted.
_REPORT = {
    Fallback.SENT: ("INFO", "sms_sent", Outcome.SENT),
    Fallback.DUE: ("WARNING", "sms_retry", Outcome.RETRIED),
    Fallback.CHECKING: ("WARNING", "sms_checking", Outcome.RETRIED),
    Fallback.FAILED: ("ERROR", "sms_failed", Outcome.FAILED),
    Fallback.CANCELLED: ("INFO", "fallback_cancelled", Outcome.CANCELLED),
    Fallback.UNKNOWN: ("ERROR", "fallback_unknown", Outcome.UNKNOWN),
}


# A lookup starts this long before the attempt began: Twilio's clock and ours may differ,
# and its date_created has whole seconds.
CLOCK_SKEW = timedelta(seconds=60)


def _reconciles(provider: sms.Provider | None) -> bool:
    """Whether the provider's own records can tell if an ambiguous send went out (Twilio)."""
    return isinstance(provider, sms.Twilio)


def _claim(m: Message, now: datetime, lease: timedelta, owner: str) -> Message | None:
    provider = sms.provider()
    resend = config.fallback_max_attempts() if provider is not None and provider.idempotent else 0
    lookups = config.fallback_max_attempts() if _reconciles(provider) else 0
    sends = m.fallback is Fallback.DUE or (m.fallback is Fallback.SENDING and resend > 0)
    opted_out = sends and conversations.opted_out(m.agent_id, m.phone)
    return claim_fallback(m, now, lease, owner, opted_out, resend, lookups)


def _answered(m: Message, result: sms.SmsResult, now: datetime, reconciles: bool) -> Message:
    """The message once the provider's answer to its SMS is known; unchanged if a status
    callback proved the SMS sent first (receive_sms_status). An ambiguous answer from a
    provider whose records can be read (`reconciles`) is looked up later (CHECKING)."""
    if m.fallback is Fallback.SENT:
        return m
    if result.outcome is sms.SmsOutcome.UNKNOWN and reconciles:
        return check_later(m, now, backoff(m.fallback_attempts, config.retry_backoff_seconds()), result.error)
    match result.outcome:
        case sms.SmsOutcome.SENT:
            return fallback_sent(m, now, result.provider_id)
        case sms.SmsOutcome.TRANSIENT:
            return retry_fallback(
                m,
                now,
                result.error,
                config.fallback_max_attempts(),
                config.retry_backoff_seconds(),
                result.retry_after,
                result.may_have_sent,
            )
        case sms.SmsOutcome.REJECTED:
            return fallback_failed(m, result.error)
        case _:
            return fallback_unknown(m, result.error)


def _send(message: Message) -> Message:
    """Calls the provider for a message this sweep holds, and records the answer.
    Both the provider (the scheduled run and the worker refuse to run without one) and
    the text (the fallback only leaves NONE when a text is given) are there."""
    provider, text = sms.provider(), message.fallback_text
    if provider is None or text is None:
        raise LookupError("no SMS provider configured, or no fallback text")
    result, now = provider.send(message.phone, text, message.message_id), store.now()
    reconciles = _reconciles(provider)
    return store.change_message(message.message_id, lambda m: _answered(m, result, now, reconciles))


def _check(message: Message) -> Message:
    """Looks the last attempt of a CHECKING message this sweep holds up in the provider's
    records (only Twilio's are read: `_reconciles`), and records what they say."""
    provider, text = sms.provider(), message.fallback_text
    tried = message.fallback_tried_at or message.created_at  # no attempt time on documents written before it
    if not isinstance(provider, sms.Twilio) or text is None or tried is None:
        raise LookupError("no Twilio provider, fallback text or attempt time to look up")
    found, now = provider.find(message.phone, text, tried - CLOCK_SKEW), store.now()
    attempts, base = config.fallback_max_attempts(), config.retry_backoff_seconds()
    return store.change_message(
        message.message_id, lambda m: fallback_checked(m, now, found.sms_id, found.error, attempts, base)
    )


def _act(claimed: Message) -> Outcome:
    if claimed.fallback is Fallback.SENDING:
        after = _send(claimed)
    elif claimed.fallback is Fallback.CHECKING:
        after = _check(claimed)
    else:
        after = claimed
    severity, event, outcome = _REPORT[after.fallback]
    # The reason goes in its own field and is ours (a status and a provider error code,
    # see sms.py), never a provider's reply text, which can hold the number in full.
    logs.log(
        severity,
        f"fallback {after.fallback.value}",
        event=event,
        message_id=after.message_id,
        agent_id=after.agent_id,
        phone=after.phone,
        sms_id=after.sms_id,
        error=after.last_error if severity != "INFO" else None,
        retry_at=after.fallback_at if after.fallback in (Fallback.DUE, Fallback.CHECKING) else None,
    )
    return outcome


FALLBACK = Sweep(
    name="send_fallbacks",
    duty=Duty.FALLBACK,
    fields=FALLBACK_QUERY,
    values=SWEPT_FALLBACKS,
    claim=_claim,
    act=_act,
    outcomes=tuple(outcome for _, _, outcome in _REPORT.values()),
)


def unconfigured(what: str) -> str | None:
    """Why no SMS can be sent — no SMS_PROVIDER, or settings it cannot use (sms.Misconfigured:
    a plain-http gateway outside loopback, an empty secret) — logged as `sms_unconfigured`
    naming `what` came without one; None when a provider is ready."""
    try:
        if sms.provider() is not None:
            return None
        reason = "no SMS_PROVIDER configured"
    except sms.Misconfigured as exc:
        reason = f"SMS provider misconfigured: {exc}"
    logs.error(f"{what} but {reason}", event="sms_unconfigured")
    return reason


def handle(request: flask.Request) -> Reply:
    """send_fallbacks (Cloud Scheduler): one scheduled pass of the FALLBACK sweep (dispatch.scheduled_run);
    503 `{"error": reason}` when it would send the SMS itself (no SMS_TASKS_QUEUE) and no provider is ready."""
    logs.bind_trace(request.headers)
    if not timers.queue(Duty.FALLBACK) and (reason := unconfigured("send_fallbacks called")):
        return reply(503, {"error": reason})
    return dispatch.scheduled_run(FALLBACK)
