"""How a message document changes: pure functions, no I/O.

Everything that can happen to a message is a `Fact` learned at a time.
Delivery state only moves up `model.RANK`, timestamps keep the earliest
sighting and each RBM event id is applied once, so the same facts in any
order, any number of times, give the same document. The fallback follows the
delivery state until an SMS is under way; from then on only the sweep moves it.
"""

import dataclasses
from collections.abc import Iterable
from datetime import datetime, timedelta
from enum import StrEnum

from functions.model import (
    APPLIED_KEEP,
    CONVERSATION_APPLIED_KEEP,
    RANK,
    SMS_STATUS_RANK,
    SWEPT_FALLBACKS,
    SWEPT_STATES,
    Conversation,
    Fallback,
    Message,
    SmsStatus,
    State,
)


class Fact(StrEnum):
    ACCEPTED = "ACCEPTED"  # RBM accepted the create call
    UNREACHABLE = "UNREACHABLE"  # create answered 404: the user has no RCS
    SEND_FAILED = "SEND_FAILED"  # create refused for good, or re-sending gave up
    DELIVERED = "DELIVERED"  # a DELIVERED receipt, or a revoke answered 404
    READ = "READ"
    REVOKED = "REVOKED"  # TTL_EXPIRATION_REVOKED, or a revoke answered 200
    REVOKE_FAILED = "REVOKE_FAILED"  # TTL_EXPIRATION_REVOKE_FAILED: revoke again
    REVOKE_ABANDONED = "REVOKE_ABANDONED"  # our revokes ran out of attempts: delivery uncertain


# RBM event types that track_delivery turns into facts.
EVENT_FACTS = {
    "DELIVERED": Fact.DELIVERED,
    "READ": Fact.READ,
    "TTL_EXPIRATION_REVOKED": Fact.REVOKED,
    "TTL_EXPIRATION_REVOKE_FAILED": Fact.REVOKE_FAILED,
}

_FACT_STATE = {
    Fact.ACCEPTED: State.SENT,
    Fact.UNREACHABLE: State.UNREACHABLE,
    Fact.SEND_FAILED: State.FAILED,
    Fact.DELIVERED: State.DELIVERED,
    Fact.READ: State.READ,
    Fact.REVOKED: State.REVOKED,
    Fact.REVOKE_FAILED: State.REVOKE_FAILED,
    Fact.REVOKE_ABANDONED: State.REVOKE_FAILED,
}
_FIRST_SEEN = {
    Fact.ACCEPTED: ("sent_at",),
    Fact.DELIVERED: ("delivered_at",),
    Fact.READ: ("read_at", "delivered_at"),
    Fact.REVOKED: ("revoked_at",),
}
_DELIVERED = (State.DELIVERED, State.READ)


def _earliest(a: datetime | None, b: datetime) -> datetime:
    return b if a is None else min(a, b)


def _makes_due(state: State, time_sensitive: bool) -> bool:
    """Whether knowing this delivery state alone makes a waiting SMS due."""
    if state is State.REVOKE_FAILED:
        return time_sensitive  # Google's advice: a one-time code goes out even at the risk of a duplicate
    return state in (State.REVOKED, State.UNREACHABLE, State.FAILED)


def _deadline(m: Message, accepted_at: datetime) -> datetime | None:
    """The deadline of a message RBM accepted at `accepted_at`: the one it was stored with,
    or, for a batch message (stored with none, its `revoke_after_seconds` kept), that long
    after this first acceptance, so its wait in the queue never shortens its RCS window."""
    if m.revoke_at is None and m.revoke_after_seconds:
        return accepted_at + timedelta(seconds=m.revoke_after_seconds)
    return m.revoke_at


def _fallback_for(m: Message) -> Fallback:
    """What a fallback not yet under way should be, given what is known of delivery."""
    if m.fallback not in (Fallback.WAITING, Fallback.DUE):
        return m.fallback
    if m.state in _DELIVERED:
        return Fallback.CANCELLED
    return Fallback.DUE if _makes_due(m.state, m.time_sensitive) else Fallback.WAITING


def learn(m: Message, fact: Fact, at: datetime, event_id: str | None = None, error: str | None = None) -> Message:
    """The message once `fact`, seen at `at`, is known; unchanged if `event_id` was applied already."""
    if event_id and event_id in m.applied:
        return m
    m = dataclasses.replace(m, applied=[*m.applied, event_id][-APPLIED_KEEP:] if event_id else m.applied)
    m.state = max(m.state, _FACT_STATE[fact], key=RANK.__getitem__)
    for name in _FIRST_SEEN.get(fact, ()):
        setattr(m, name, _earliest(getattr(m, name), at))
    if error:
        m.last_error = error
    if fact in (Fact.REVOKED, Fact.DELIVERED, Fact.REVOKE_ABANDONED) or m.state not in SWEPT_STATES:
        m.revoking = False
    if not m.tracked:  # another system's message: recorded, never acted on, so never due
        return _dropped(m)
    if m.state not in SWEPT_STATES:
        m.next_action_at = None
    elif fact is Fact.ACCEPTED and m.state is State.SENT:
        m.revoke_at = _deadline(m, at)
        m.next_action_at, m.attempts = m.revoke_at, 0
    elif fact is Fact.REVOKE_FAILED:
        m.next_action_at = _earliest(m.next_action_at, at)
    elif fact is Fact.REVOKE_ABANDONED:
        m.next_action_at = None
    fallback = _fallback_for(m)
    if fallback is Fallback.DUE and _makes_due(_FACT_STATE[fact], m.time_sensitive):
        # Due since the earliest fact that made it due, whatever the arrival order.
        m.fallback_at = _earliest(m.fallback_at if m.fallback is Fallback.DUE else None, at)
    elif fallback is not Fallback.DUE and fallback is not m.fallback:
        m.fallback_at = None
    m.fallback = fallback
    return m


def backoff(attempt: int, base: float) -> timedelta:
    """Exponential: base, 2·base, 4·base … capped at 32·base."""
    return timedelta(seconds=base * 2 ** min(max(attempt - 1, 0), 5))


def _dropped(m: Message) -> Message:
    """Another system's message (`tracked` false) as it is kept: due for neither
    sweep and held by none. A claim of one that is due anyway (written before
    this rule) returns it so, and the sweep stores it without acting on it."""
    return dataclasses.replace(m, next_action_at=None, fallback_at=None, lease_owner=None, revoking=False)


def due_from(m: Message, now: datetime) -> Message:
    """`m` with each due time (`next_action_at`, `fallback_at`) that is already past at
    `now` moved to `now`. A due time written in the past — the sendTime of an event that
    reached us late, a deadline that passed while the message waited to be re-sent — is
    then the time of writing: its timer's task runs at once, and the scheduled safety net,
    which leaves alone what fell due in its last dispatch.SAFETY_SLACK_SECONDS (its task is
    on its way), does not look it up as a lost timer in the same second."""

    def moved(at: datetime | None) -> datetime | None:
        return now if at is not None and at < now else at

    return dataclasses.replace(m, next_action_at=moved(m.next_action_at), fallback_at=moved(m.fallback_at))


# revoke_expired: re-send PENDING, revoke SENT / REVOKE_FAILED past their deadline.


def claim_revoke(m: Message, now: datetime, lease: timedelta, owner: str) -> Message | None:
    """The message leased to `owner`, or None if it is not due (or another sweep holds it).
    A revoke still marked in flight was interrupted, so from now on a 404 may mean
    "revoked by that attempt" as well as "delivered"."""
    if m.state not in SWEPT_STATES or m.next_action_at is None or m.next_action_at > now:
        return None
    if not m.tracked:
        return _dropped(m)
    return dataclasses.replace(
        m,
        next_action_at=now + lease,
        lease_owner=owner,
        attempts=m.attempts + 1,
        revoke_uncertain=m.revoke_uncertain or m.revoking,
        revoking=m.state is not State.PENDING,
    )


def retry_revoke(
    m: Message,
    now: datetime,
    error: str,
    max_attempts: int,
    base: float,
    retry_after: float | None = None,
    may_have_acted: bool = False,
) -> Message:
    """A transient failure of a re-send or revoke: try again later, or give up and say why.
    The next try is no sooner than the backoff nor than `retry_after` seconds (RBM's
    Retry-After). `may_have_acted`: a DELETE may have been acted on although its answer
    was lost, so from now on a 404 may mean "revoked" as well as "delivered" (a re-send
    needs no such care: the messageId makes it safe)."""
    m = dataclasses.replace(
        m,
        lease_owner=None,
        last_error=error,
        revoking=False,
        revoke_uncertain=m.revoke_uncertain or (may_have_acted and m.state is not State.PENDING),
    )
    if m.state not in SWEPT_STATES:
        return m
    if m.attempts >= max_attempts:
        fact = Fact.SEND_FAILED if m.state is State.PENDING else Fact.REVOKE_ABANDONED
        return learn(m, fact, now, error=f"gave up after {m.attempts} attempts: {error}")
    m.next_action_at = now + max(backoff(m.attempts, base), timedelta(seconds=retry_after or 0))
    return m


def cancel_pending(m: Message, now: datetime, reason: str) -> Message:
    """A message whose create was never attempted, withdrawn by its sender (a cancelled
    batch): FAILED with `reason`, and its SMS, not under way, CANCELLED (a withdrawn message
    is sent on neither channel). A message no longer PENDING is left as it is, and so is one
    whose create was claimed (`attempts`, counted by claim_revoke): its lease running, or run
    out while the call may still be in flight, or its call answered with a timeout or a 5xx
    that RBM may have acted on — RBM may hold it, so cancelling it could leave the user an
    RCS message recorded as never sent. Its create finishes: re-sent, if need be, under the
    same messageId, which RBM ignores once seen (RBM reference, phones.agentMessages.create).
    The SMS of an UNREACHABLE message (no RCS: the pre-check's, parked or released, or a
    create answered 404) that is DUE, so not yet under way (a send that may have reached
    the provider is SENDING, CHECKING or UNKNOWN, never DUE), is CANCELLED with `reason`
    too: it is the send that message has instead of its create."""
    if m.state is State.UNREACHABLE and m.fallback is Fallback.DUE:
        return dataclasses.replace(m, fallback=Fallback.CANCELLED, fallback_at=None, last_error=reason)
    if m.state is not State.PENDING or m.attempts:
        return m
    m = learn(m, Fact.SEND_FAILED, now, error=reason)
    if m.fallback in (Fallback.WAITING, Fallback.DUE):
        m = dataclasses.replace(m, fallback=Fallback.CANCELLED, fallback_at=None)
    return m


# send_batch: a batch's messages are stored parked and released once the batch is answered.


def parked(m: Message) -> Message:
    """`m` due for nothing until `released`: with neither due time, no timer is set for it
    and neither sweep's query finds it (a range filter on a field matches no null)."""
    return dataclasses.replace(m, next_action_at=None, fallback_at=None)


def released(m: Message, now: datetime) -> Message:
    """A parked message made due at `now`: its create if it is PENDING, its SMS if it is
    DUE (a number the pre-check found unreachable). A due time already set (released
    before, or claimed since) and a message no longer waiting (cancelled, created) are left
    as they are, so releasing again changes nothing."""
    if m.state is State.PENDING and m.next_action_at is None:
        m = dataclasses.replace(m, next_action_at=now)
    if m.fallback is Fallback.DUE and m.fallback_at is None:
        m = dataclasses.replace(m, fallback_at=now)
    return m


def hold_fallback(m: Message, until: datetime) -> Message:
    """A due SMS held back until `until`: the grace after a revoke's 200, in which a
    DELIVERED racing the revoke (Google's revoke guide: a 200 does not prove the
    message was revoked) cancels it."""
    if m.fallback is not Fallback.DUE:
        return m
    return dataclasses.replace(m, fallback_at=max(m.fallback_at or until, until))


# send_fallbacks: one SMS per message, at most.


def claim_fallback(
    m: Message,
    now: datetime,
    lease: timedelta,
    owner: str,
    opted_out: bool,
    resend_attempts: int = 0,
    lookup_attempts: int = 0,
) -> Message | None:
    """DUE → SENDING under a lease, DUE → CANCELLED for an opted-out user, and a
    SENDING whose lease ran out (its SMS may have gone) → UNKNOWN, never re-sent —
    unless the provider honours our idempotency key: then `resend_attempts` is
    FALLBACK_MAX_ATTEMPTS and, while attempts remain, it is sent again under the same
    key (SENDING again, `fallback_uncertain` set). An opted-out user whose SMS may
    already be out ends UNKNOWN, not CANCELLED. When the provider's own records can
    be read (Twilio), `lookup_attempts` is FALLBACK_MAX_ATTEMPTS: a CHECKING one, or
    a SENDING one whose lease ran out, is claimed (CHECKING) for a lookup of the last
    attempt while attempts (sends and lookups) stay under it, else it ends UNKNOWN.
    None if there is nothing to do."""
    if m.fallback not in SWEPT_FALLBACKS or m.fallback_at is None or m.fallback_at > now:
        return None
    if not m.tracked:
        return _dropped(m)
    m = dataclasses.replace(m, fallback_at=None, lease_owner=None)
    if m.fallback is Fallback.CHECKING:
        if m.fallback_attempts >= lookup_attempts:
            return fallback_unknown(m, f"gave up after {m.fallback_attempts} attempts: {m.last_error}")
        m.fallback_at, m.lease_owner, m.fallback_attempts = now + lease, owner, m.fallback_attempts + 1
        return m
    if m.fallback is Fallback.SENDING:
        m.fallback_uncertain = True
        if m.fallback_attempts < lookup_attempts:  # the provider's records will tell: look the attempt up now
            m.fallback, m.fallback_at, m.lease_owner = Fallback.CHECKING, now + lease, owner
            m.fallback_attempts += 1
            return m
        if m.fallback_attempts >= resend_attempts:
            m.fallback, m.last_error = Fallback.UNKNOWN, "SMS send interrupted; outcome unknown"
            return m
    if opted_out:
        m.fallback = Fallback.UNKNOWN if m.fallback_uncertain else Fallback.CANCELLED
        m.last_error = "user opted out"
    else:
        m.fallback, m.fallback_at, m.lease_owner = Fallback.SENDING, now + lease, owner
        m.fallback_attempts, m.fallback_tried_at = m.fallback_attempts + 1, now
    return m


def fallback_sent(m: Message, now: datetime, sms_id: str | None) -> Message:
    return dataclasses.replace(
        m, fallback=Fallback.SENT, sms_id=sms_id, fallback_sent_at=now, fallback_at=None, lease_owner=None
    )


def fallback_failed(m: Message, error: str | None) -> Message:
    return dataclasses.replace(m, fallback=Fallback.FAILED, last_error=error, fallback_at=None, lease_owner=None)


def fallback_unknown(m: Message, error: str | None) -> Message:
    """The provider may have got the request but its answer was lost, and it is not tried again: the SMS may be out."""
    return dataclasses.replace(
        m, fallback=Fallback.UNKNOWN, fallback_uncertain=True, last_error=error, fallback_at=None, lease_owner=None
    )


def retry_fallback(
    m: Message,
    now: datetime,
    error: str | None,
    max_attempts: int,
    base: float,
    wait: float | None = None,
    may_have_sent: bool = False,
) -> Message:
    """The provider sent nothing, or (`may_have_sent`) may have, under a key it honours, so a
    repeat sends at most one SMS: due again after the backoff, or after `wait` seconds
    (the provider's Retry-After) when that is longer. Out of attempts: FAILED, or UNKNOWN
    when this or an earlier attempt may have sent it (`fallback_uncertain`)."""
    m = dataclasses.replace(m, fallback_uncertain=m.fallback_uncertain or may_have_sent)
    if m.fallback_attempts >= max_attempts:
        gave_up = f"gave up after {m.fallback_attempts} attempts: {error}"
        return fallback_unknown(m, gave_up) if m.fallback_uncertain else fallback_failed(m, gave_up)
    delay = max(backoff(m.fallback_attempts, base), timedelta(seconds=wait or 0))
    return dataclasses.replace(m, fallback=Fallback.DUE, fallback_at=now + delay, last_error=error, lease_owner=None)


# receive_sms_status: the SMS leg's own fate.

# Fallbacks an SMS status callback settles: a callback about the message proves the
# provider created its SMS, so one whose send was interrupted or answered ambiguously
# (SENDING, CHECKING, UNKNOWN, or DUE again after such a try) is SENT, never sent again.
_PROVEN_BY_CALLBACK = (Fallback.SENDING, Fallback.CHECKING, Fallback.UNKNOWN, Fallback.DUE)


def _status_key(status: SmsStatus, at: datetime, error_code: str | None) -> tuple[int, float, str]:
    """The order of status reports: by rank, then the earliest report, then the code, so the
    winner of any set of reports is one report whatever order they came in."""
    return SMS_STATUS_RANK[status], -at.timestamp(), error_code or ""


def sms_status_learned(m: Message, sms_id: str, status: SmsStatus, at: datetime, error_code: str | None) -> Message:
    """The message once the provider reported, at `at`, that its SMS `sms_id` is `status`
    (with `error_code`, e.g. "30003"). The status only moves up model.SMS_STATUS_RANK, so
    callbacks duplicated, late or out of order end in the same status, code and time.
    A report about another SMS than the one recorded (`sms_id` differs) changes nothing.
    A report proves the SMS exists, so a fallback left SENDING, UNKNOWN, or DUE after an
    attempt that may have sent (`fallback_uncertain`), becomes SENT with this sid, sent at
    the earliest report's time."""
    if m.sms_id is not None and m.sms_id != sms_id:
        return m
    m = dataclasses.replace(m, sms_id=sms_id)
    if (
        m.sms_status is None
        or m.sms_status_at is None
        or _status_key(status, at, error_code) > _status_key(m.sms_status, m.sms_status_at, m.sms_error_code)
    ):
        m.sms_status, m.sms_status_at, m.sms_error_code = status, at, error_code
    if m.tracked and m.fallback in _PROVEN_BY_CALLBACK and (m.fallback is not Fallback.DUE or m.fallback_uncertain):
        m = fallback_sent(m, at, sms_id)
    elif m.fallback is Fallback.SENT and m.fallback_sent_at is not None:
        m.fallback_sent_at = min(m.fallback_sent_at, at)
    return m


def check_later(m: Message, now: datetime, settle: timedelta, error: str | None) -> Message:
    """A send the provider may have acted on, to a provider whose own records can be
    read (Twilio's Messages list): CHECKING, looked up once `settle` has passed."""
    return dataclasses.replace(
        m,
        fallback=Fallback.CHECKING,
        fallback_uncertain=True,
        fallback_at=now + settle,
        lease_owner=None,
        last_error=error,
    )


def fallback_checked(
    m: Message, now: datetime, sms_id: str | None, error: str | None, max_attempts: int, base: float
) -> Message:
    """The provider's records looked up for the last attempt: found (`sms_id`) → SENT;
    proven absent (no id, no `error`) → DUE at once, sent once more; the lookup failed
    (`error`) → CHECKING again after the backoff, or UNKNOWN once FALLBACK_MAX_ATTEMPTS
    (sends and lookups together) are spent. A fallback no longer CHECKING (a status
    callback settled it meanwhile) is left as it is."""
    if m.fallback is not Fallback.CHECKING:
        return m
    if sms_id is not None:
        return fallback_sent(m, now, sms_id)
    if error is None:
        return dataclasses.replace(
            m,
            fallback=Fallback.DUE,
            fallback_at=now,
            fallback_uncertain=False,
            lease_owner=None,
            last_error="the provider has no record of the last attempt: sending again",
        )
    if m.fallback_attempts >= max_attempts:
        return fallback_unknown(m, f"gave up after {m.fallback_attempts} attempts: {error}")
    return dataclasses.replace(
        m, fallback_at=now + backoff(m.fallback_attempts, base), lease_owner=None, last_error=error
    )


# record_inbound: a conversation per (agent, user).


class Signal(StrEnum):
    """What a user message or a user event tells about its conversation."""

    ACTIVITY = "ACTIVITY"  # the user wrote something
    TYPING = "TYPING"  # IS_TYPING
    OPT_OUT = "OPT_OUT"  # UNSUBSCRIBE, or a typed opt-out keyword
    OPT_IN = "OPT_IN"  # SUBSCRIBE, or a typed opt-in keyword


def _latest(a: datetime | None, b: datetime) -> datetime:
    return b if a is None else max(a, b)


def _subscription(c: Conversation, opted_out: bool, at: datetime) -> Conversation:
    """The latest opt-out / opt-in by send time wins, whatever order they arrive in;
    at the same send time the opt-out wins, so the result does not depend on the order either."""
    if c.subscription_changed_at is not None and (
        at < c.subscription_changed_at or (at == c.subscription_changed_at and (c.opted_out or not opted_out))
    ):
        return c
    return dataclasses.replace(c, opted_out=opted_out, subscription_changed_at=at)


def conversation_learn(
    c: Conversation, signals: Iterable[Signal], at: datetime, event_id: str | None = None
) -> Conversation:
    """The conversation once `signals` (Signal values), sent at `at`, are known;
    unchanged if the event `event_id` was applied already (the last
    CONVERSATION_APPLIED_KEEP ids are remembered)."""
    if event_id and event_id in c.applied:
        return c
    if event_id:
        c = dataclasses.replace(c, applied=[*c.applied, event_id][-CONVERSATION_APPLIED_KEEP:])
    for signal in signals:
        if signal is Signal.ACTIVITY:
            c = dataclasses.replace(c, last_activity_at=_latest(c.last_activity_at, at))
        elif signal is Signal.TYPING:
            c = dataclasses.replace(c, last_typing_at=_latest(c.last_typing_at, at))
        else:
            c = _subscription(c, signal is Signal.OPT_OUT, at)
    return c
