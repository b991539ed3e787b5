"""The pure state machine: DESIGN.md §3 invariants 2, 3 and 5, with no I/O."""

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from functions.model import CONVERSATION_APPLIED_KEEP, Conversation, Fallback, Message, State
from functions.transitions import (
    EVENT_FACTS,
    Fact,
    Signal,
    claim_fallback,
    claim_revoke,
    conversation_learn,
    due_from,
    fallback_sent,
    fallback_unknown,
    hold_fallback,
    learn,
    retry_fallback,
    retry_revoke,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LEASE = timedelta(seconds=60)


def sent(time_sensitive=False, fallback=Fallback.WAITING) -> Message:
    m = Message(
        "m1",
        "+15550001111",
        "agent",
        fallback=fallback,
        fallback_text="code 1234",
        time_sensitive=time_sensitive,
        revoke_at=T0 + timedelta(minutes=5),
    )
    return learn(m, Fact.ACCEPTED, T0)


def fold(m: Message, events) -> Message:
    for event_type, event_id, minute in events:
        m = learn(m, EVENT_FACTS[event_type], T0 + timedelta(minutes=minute), event_id)
    return m


def comparable(m: Message) -> dict:
    doc = m.to_doc()
    doc["applied"] = sorted(doc["applied"])
    return doc


events = st.lists(
    st.tuples(
        st.sampled_from(sorted(EVENT_FACTS)), st.sampled_from(["e1", "e2", "e3", "e4", "e5"]), st.integers(0, 20)
    ),
    max_size=8,
).map(lambda evs: list({eid: (t, eid, mi) for t, eid, mi in evs}.values()))  # one payload per event id


@settings(max_examples=500)
@given(
    events=events,
    order=st.randoms(use_true_random=False),
    dupes=st.lists(st.integers(0, 7), max_size=6),
    time_sensitive=st.booleans(),
)
def test_any_order_with_duplicates_converges_to_the_canonical_document(events, order, dupes, time_sensitive):
    canonical = fold(sent(time_sensitive), sorted(events, key=lambda e: (e[2], e[1])))
    delivered = events + [events[i] for i in dupes if i < len(events)]
    order.shuffle(delivered)
    assert comparable(fold(sent(time_sensitive), delivered)) == comparable(canonical)


@given(events=events)
def test_read_never_regresses_and_delivered_always_cancels_a_waiting_fallback(events):
    m = sent()
    for event in events:
        before = m.state
        m = fold(m, [event])
        if before is State.READ:
            assert m.state is State.READ
        if m.state in (State.DELIVERED, State.READ):
            assert m.fallback is Fallback.CANCELLED


def test_each_event_id_is_applied_once():
    m = fold(sent(), [("READ", "e1", 1)])
    assert fold(m, [("READ", "e1", 0)]) is m  # a replay, even with another time, changes nothing


def test_late_sent_never_hides_delivered():
    m = fold(Message("m1", "+1"), [("DELIVERED", "e1", 1)])
    assert learn(m, Fact.ACCEPTED, T0 + timedelta(minutes=2)).state is State.DELIVERED


def test_delivered_after_revoked_wins_and_cancels_the_due_fallback():
    m = fold(sent(), [("TTL_EXPIRATION_REVOKED", "e1", 1)])
    assert (m.state, m.fallback, m.fallback_at) == (State.REVOKED, Fallback.DUE, T0 + timedelta(minutes=1))
    m = fold(m, [("DELIVERED", "e2", 2)])
    assert (m.state, m.fallback, m.fallback_at) == (State.DELIVERED, Fallback.CANCELLED, None)


def test_delivered_after_the_sms_went_out_leaves_the_fallback_sent():
    m = fold(sent(), [("TTL_EXPIRATION_REVOKED", "e1", 1)])
    m = claim_fallback(m, T0 + timedelta(minutes=2), LEASE, "sweep", opted_out=False)
    m = fallback_sent(m, T0 + timedelta(minutes=2), "SM1")
    assert fold(m, [("DELIVERED", "e2", 3)]).fallback is Fallback.SENT


@pytest.mark.parametrize("time_sensitive, fallback", [(True, Fallback.DUE), (False, Fallback.WAITING)])
def test_revoke_failed_is_due_only_for_time_sensitive_messages(time_sensitive, fallback):
    m = fold(sent(time_sensitive), [("TTL_EXPIRATION_REVOKE_FAILED", "e1", 6)])
    assert (m.state, m.fallback) == (State.REVOKE_FAILED, fallback)
    assert m.next_action_at == T0 + timedelta(minutes=5)  # revoke again at once: the deadline has passed


def test_unreachable_and_failed_sends_make_the_fallback_due_and_none_stays_none():
    base = Message("m1", "+1", fallback=Fallback.WAITING)
    assert learn(base, Fact.UNREACHABLE, T0).fallback is Fallback.DUE
    assert learn(base, Fact.SEND_FAILED, T0, error="403").fallback is Fallback.DUE
    assert learn(Message("m1", "+1"), Fact.UNREACHABLE, T0).fallback is Fallback.NONE


def test_revoke_claims_are_exclusive_until_the_lease_runs_out():
    m = sent()
    at = m.revoke_at
    assert claim_revoke(m, at - timedelta(seconds=1), LEASE, "a") is None  # not due yet
    claimed = claim_revoke(m, at, LEASE, "a")
    assert claimed.lease_owner == "a" and claimed.attempts == 1
    assert claim_revoke(claimed, at + LEASE / 2, LEASE, "b") is None
    assert claim_revoke(claimed, at + LEASE, LEASE, "b").lease_owner == "b"


def test_revoke_retries_back_off_then_give_up_and_a_time_sensitive_sms_becomes_due():
    m = sent(time_sensitive=True)
    for _ in range(3):
        m = claim_revoke(m, m.next_action_at, LEASE, "a")
        m = retry_revoke(m, m.next_action_at - LEASE, "500", max_attempts=3, base=10)
    assert (m.state, m.next_action_at, m.fallback) == (State.REVOKE_FAILED, None, Fallback.DUE)
    assert "gave up after 3 attempts" in m.last_error


def test_pending_resends_that_give_up_fail_the_message():
    m = Message("m1", "+1", fallback=Fallback.WAITING, next_action_at=T0)
    m = retry_revoke(claim_revoke(m, T0, LEASE, "a"), T0, "503", max_attempts=1, base=10)
    assert (m.state, m.fallback) == (State.FAILED, Fallback.DUE)


def test_fallback_claim_send_and_interrupted_send_becomes_unknown():
    m = fold(sent(), [("TTL_EXPIRATION_REVOKED", "e1", 1)])
    now = T0 + timedelta(minutes=2)
    claimed = claim_fallback(m, now, LEASE, "a", opted_out=False)
    assert (claimed.fallback, claimed.fallback_at) == (Fallback.SENDING, now + LEASE)
    assert claim_fallback(claimed, now + LEASE / 2, LEASE, "b", opted_out=False) is None
    lost = claim_fallback(claimed, now + LEASE, LEASE, "b", opted_out=False)
    assert lost.fallback is Fallback.UNKNOWN and lost.fallback_at is None
    assert claim_fallback(lost, now + 10 * LEASE, LEASE, "c", opted_out=False) is None  # never re-sent


def test_opted_out_user_gets_no_sms():
    m = fold(sent(), [("TTL_EXPIRATION_REVOKED", "e1", 1)])
    assert claim_fallback(m, T0 + timedelta(minutes=2), LEASE, "a", opted_out=True).fallback is Fallback.CANCELLED


def test_provider_failures_retry_with_backoff_then_fail():
    m = fold(sent(), [("TTL_EXPIRATION_REVOKED", "e1", 1)])
    now = T0 + timedelta(minutes=2)
    m = retry_fallback(claim_fallback(m, now, LEASE, "a", False), now, "500", max_attempts=2, base=10)
    assert (m.fallback, m.fallback_at) == (Fallback.DUE, now + timedelta(seconds=10))
    m = retry_fallback(claim_fallback(m, m.fallback_at, LEASE, "a", False), now, "500", max_attempts=2, base=10)
    assert m.fallback is Fallback.FAILED and "gave up after 2" in m.last_error


def due() -> tuple[Message, datetime]:
    return fold(sent(), [("TTL_EXPIRATION_REVOKED", "e1", 1)]), T0 + timedelta(minutes=2)


@given(
    st.lists(st.sampled_from(["transient", "ambiguous", "interrupted", "sent"]), min_size=1, max_size=12),
    st.integers(1, 6),
)
def test_with_an_idempotent_provider_every_ambiguous_attempt_is_retried_and_unknown_only_when_attempts_run_out(
    fates, max_attempts
):
    """Each fate is what became of the attempt in flight: answered "not sent" (transient),
    ambiguous (a 5xx, a dropped connection, a read timeout), lost with its sweep
    (interrupted: the lease runs out in SENDING), or sent."""
    m, now = due()
    m = claim_fallback(m, now, LEASE, "a", False, resend_attempts=max_attempts)
    maybe_sent = False
    for fate in fates:
        assert m.fallback is Fallback.SENDING and m.message_id == "m1"  # the idempotency key never changes
        if fate == "sent":
            m = fallback_sent(m, now, "id-1")
            break
        maybe_sent = maybe_sent or fate != "transient"
        if fate == "interrupted":
            now = m.fallback_at  # the lease end
        else:
            m = retry_fallback(m, now, fate, max_attempts, base=1, may_have_sent=fate == "ambiguous")
            if m.fallback is not Fallback.DUE:
                break
            now = m.fallback_at
        m = claim_fallback(m, now, LEASE, "b", False, resend_attempts=max_attempts)
        if m.fallback is not Fallback.SENDING:
            break
    assert m.fallback_attempts <= max_attempts
    assert m.fallback_uncertain is maybe_sent
    if m.fallback in (Fallback.UNKNOWN, Fallback.FAILED):
        assert m.fallback_attempts == max_attempts
        assert m.fallback is (Fallback.UNKNOWN if maybe_sent else Fallback.FAILED)
    else:
        assert m.fallback in (Fallback.SENT, Fallback.SENDING)


def test_an_interrupted_send_is_sent_again_under_its_key_only_with_an_idempotent_provider():
    m, now = due()
    claimed = claim_fallback(m, now, LEASE, "a", False, resend_attempts=3)
    again = claim_fallback(claimed, now + LEASE, LEASE, "b", False, resend_attempts=3)
    assert (again.fallback, again.fallback_attempts, again.fallback_uncertain, again.lease_owner) == (
        Fallback.SENDING,
        2,
        True,
        "b",
    )
    lost = claim_fallback(claimed, now + LEASE, LEASE, "b", False)  # a provider that may ignore the key
    assert (lost.fallback, lost.fallback_uncertain) == (Fallback.UNKNOWN, True)


def test_an_opted_out_user_whose_sms_may_be_out_is_unknown_not_cancelled():
    m, now = due()
    claimed = claim_fallback(m, now, LEASE, "a", False, resend_attempts=3)
    maybe = retry_fallback(claimed, now, "provider 502", 3, base=1, may_have_sent=True)
    assert claim_fallback(maybe, maybe.fallback_at, LEASE, "b", True, 3).fallback is Fallback.UNKNOWN
    assert claim_fallback(claimed, now + LEASE, LEASE, "b", True, 3).fallback is Fallback.UNKNOWN
    surely_not = retry_fallback(claimed, now, "provider 503", 3, base=1)
    assert claim_fallback(surely_not, surely_not.fallback_at, LEASE, "b", True, 3).fallback is Fallback.CANCELLED


def test_a_retry_after_longer_than_the_backoff_sets_the_next_try():
    m = fold(sent(), [("TTL_EXPIRATION_REVOKED", "e1", 1)])
    now = T0 + timedelta(minutes=2)
    claimed = claim_fallback(m, now, LEASE, "a", False)
    assert retry_fallback(claimed, now, "429", 5, base=10, wait=45).fallback_at == now + timedelta(seconds=45)
    assert retry_fallback(claimed, now, "429", 5, base=10, wait=3).fallback_at == now + timedelta(seconds=10)


def test_an_interrupted_revoke_makes_later_claims_uncertain():
    m = sent()
    first = claim_revoke(m, m.revoke_at, LEASE, "a")
    assert (first.revoking, first.revoke_uncertain) == (True, False)
    second = claim_revoke(first, m.revoke_at + LEASE, LEASE, "b")  # "a" never recorded an outcome
    assert second.revoke_uncertain
    third = claim_revoke(retry_revoke(second, m.revoke_at + LEASE, "500", 8, 1), m.revoke_at + 2 * LEASE, LEASE, "c")
    assert third.revoke_uncertain and third.revoking  # a failure in between does not make it certain again
    assert learn(third, Fact.REVOKED, m.revoke_at).revoking is False


# Only its own messages (DESIGN §3.9): another system's message is recorded, never acted on.


def untracked() -> Message:
    """The minimal record track_delivery writes for an event about a message it never sent."""
    return Message("m9", "+15550002222", "agent", tracked=False)


@settings(max_examples=500)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(
                st.just("fact"),
                st.sampled_from(list(Fact)),
                st.sampled_from(["e1", "e2", "e3", None]),
                st.integers(0, 60),
            ),
            st.tuples(st.just("sweep"), st.sampled_from(["revoke", "fallback"]), st.booleans(), st.integers(0, 60)),
        ),
        max_size=12,
    )
)
def test_an_untracked_message_is_never_due_whatever_happens_in_any_order(steps):
    m = untracked()
    for kind, what, detail, minute in steps:
        at = T0 + timedelta(minutes=minute)
        if kind == "fact":
            m = learn(m, what, at, detail, error="x" if what is Fact.SEND_FAILED else None)
        elif what == "revoke":
            assert claim_revoke(m, at + timedelta(days=30), LEASE, "sweep") is None
        else:
            assert claim_fallback(m, at + timedelta(days=30), LEASE, "sweep", opted_out=detail) is None
        assert (m.next_action_at, m.fallback_at, m.fallback, m.lease_owner, m.tracked) == (
            None,
            None,
            Fallback.NONE,
            None,
            False,
        )


def test_an_untracked_message_still_records_its_delivery_state():
    m = fold(untracked(), [("TTL_EXPIRATION_REVOKE_FAILED", "e1", 6), ("DELIVERED", "e2", 7)])
    assert (m.state, m.delivered_at, m.applied) == (State.DELIVERED, T0 + timedelta(minutes=7), ["e1", "e2"])


@pytest.mark.parametrize(
    "claim",
    [
        lambda m, now: claim_revoke(m, now, LEASE, "sweep"),
        lambda m, now: claim_fallback(m, now, LEASE, "sweep", opted_out=False),
    ],
)
def test_a_legacy_untracked_message_that_is_due_is_dropped_at_its_first_claim(claim):
    """Written before untracked messages were kept from becoming due: the first claim
    makes it due for neither sweep and holds it for none; a second finds nothing."""
    legacy = Message(
        "m9",
        "+15550002222",
        "agent",
        state=State.REVOKE_FAILED,
        fallback=Fallback.DUE,
        tracked=False,
        next_action_at=T0,
        fallback_at=T0,
        revoking=True,
    )
    dropped = claim(legacy, T0 + LEASE)
    assert (dropped.next_action_at, dropped.fallback_at, dropped.lease_owner, dropped.tracked) == (
        None,
        None,
        None,
        False,
    )
    assert claim_revoke(dropped, T0 + 100 * LEASE, LEASE, "b") is None
    assert claim_fallback(dropped, T0 + 100 * LEASE, LEASE, "b", opted_out=False) is None


# record_inbound: conversations.


def fold_conversation(c: Conversation, events) -> Conversation:
    for signal, event_id, minute in events:
        c = conversation_learn(c, [signal], T0 + timedelta(minutes=minute), event_id)
    return c


conversation_events = st.lists(
    st.tuples(st.sampled_from(list(Signal)), st.sampled_from(["e1", "e2", "e3", "e4", "e5"]), st.integers(0, 5)),
    max_size=8,
).map(lambda evs: list({eid: (s, eid, mi) for s, eid, mi in evs}.values()))  # one payload per event id


@settings(max_examples=300)
@given(
    events=conversation_events, order=st.randoms(use_true_random=False), dupes=st.lists(st.integers(0, 7), max_size=6)
)
def test_conversation_events_in_any_order_with_duplicates_converge(events, order, dupes):
    canonical = fold_conversation(Conversation("agent", "+15550001111"), events)
    delivered = events + [events[i] for i in dupes if i < len(events)]
    order.shuffle(delivered)
    got = fold_conversation(Conversation("agent", "+15550001111"), delivered)
    assert sorted(got.applied) == sorted(canonical.applied)
    assert dataclasses.replace(got, applied=[]) == dataclasses.replace(canonical, applied=[])


def test_the_latest_opt_out_or_opt_in_wins_and_an_opt_out_wins_a_tie():
    c = fold_conversation(
        Conversation("agent", "+15550001111"), [(Signal.OPT_IN, "in", 5), (Signal.OPT_OUT, "old-out", 3)]
    )
    assert not c.opted_out and c.subscription_changed_at == T0 + timedelta(minutes=5)
    for first, second in ((Signal.OPT_IN, Signal.OPT_OUT), (Signal.OPT_OUT, Signal.OPT_IN)):
        tied = fold_conversation(Conversation("agent", "+15550001111"), [(first, "a", 7), (second, "b", 7)])
        assert tied.opted_out


def test_a_redelivered_event_changes_nothing_even_stamped_later():
    """An event without sendTime is stamped when it is processed: a redelivery comes with a later time."""
    c = conversation_learn(Conversation("agent", "+15550001111"), [Signal.OPT_OUT], T0, "unsub")
    c = conversation_learn(c, [Signal.OPT_IN], T0 + timedelta(minutes=1), "sub")
    again = conversation_learn(c, [Signal.OPT_OUT], T0 + timedelta(minutes=2), "unsub")
    assert again == c and not again.opted_out
    typed = conversation_learn(c, [Signal.TYPING], T0 + timedelta(minutes=3), "t1")
    assert conversation_learn(typed, [Signal.TYPING], T0 + timedelta(minutes=9), "t1") == typed


def test_a_conversation_remembers_a_bounded_number_of_event_ids():
    c = Conversation("agent", "+15550001111")
    for i in range(CONVERSATION_APPLIED_KEEP + 10):
        c = conversation_learn(c, [Signal.TYPING], T0 + timedelta(seconds=i), f"t{i}")
    assert len(c.applied) == CONVERSATION_APPLIED_KEEP and c.applied[-1] == f"t{CONVERSATION_APPLIED_KEEP + 9}"


def test_a_message_counts_as_activity_and_may_carry_an_opt_out():
    c = conversation_learn(Conversation("agent", "+15550001111"), [Signal.ACTIVITY, Signal.OPT_OUT], T0)
    assert (c.opted_out, c.last_activity_at, c.subscription_changed_at, c.applied) == (True, T0, T0, [])


def test_a_retry_is_no_sooner_than_rbm_asked():
    m = claim_revoke(sent(), sent().revoke_at, LEASE, "a")
    now = m.revoke_at
    assert retry_revoke(m, now, "429", 8, base=10, retry_after=300).next_action_at == now + timedelta(seconds=300)
    assert retry_revoke(m, now, "429", 8, base=10, retry_after=2).next_action_at == now + timedelta(
        seconds=10
    )  # the backoff is longer
    assert retry_revoke(m, now, "429", 8, base=10).next_action_at == now + timedelta(seconds=10)


def test_a_revoke_whose_answer_was_lost_makes_a_later_404_uncertain_but_a_resend_does_not():
    m = claim_revoke(sent(), sent().revoke_at, LEASE, "a")
    assert retry_revoke(m, m.revoke_at, "RBM unreachable", 8, 1, may_have_acted=True).revoke_uncertain
    assert not retry_revoke(m, m.revoke_at, "RBM 503", 8, 1).revoke_uncertain
    pending = claim_revoke(Message("m1", "+1", next_action_at=T0), T0, LEASE, "a")
    assert not retry_revoke(pending, T0, "RBM unreachable", 8, 1, may_have_acted=True).revoke_uncertain


def test_a_revokes_sms_waits_out_the_grace_and_a_racing_delivered_cancels_it():
    revoked_at, grace = T0 + timedelta(minutes=5), timedelta(seconds=5)
    m = hold_fallback(learn(sent(), Fact.REVOKED, revoked_at), revoked_at + grace)
    assert (m.fallback, m.fallback_at) == (Fallback.DUE, revoked_at + grace)
    assert claim_fallback(m, revoked_at + grace / 2, LEASE, "worker", opted_out=False) is None  # not before the grace
    raced = learn(m, Fact.DELIVERED, revoked_at + grace / 2, "e-delivered")
    assert (raced.fallback, raced.fallback_at) == (Fallback.CANCELLED, None)
    assert claim_fallback(m, revoked_at + grace, LEASE, "worker", opted_out=False).fallback is Fallback.SENDING


def test_holding_leaves_a_fallback_that_is_not_due_alone():
    m = sent()
    assert hold_fallback(m, T0 + timedelta(hours=1)) == m


def test_a_due_time_already_past_is_written_as_now_and_a_later_one_is_kept():
    late = learn(
        Message("m", "+447700900001", state=State.SENT, fallback=Fallback.WAITING, next_action_at=T0),
        Fact.REVOKED,
        T0 - timedelta(minutes=2),
        "ttl-1",
    )  # an event sent two minutes before it reached us
    assert (late.fallback, late.fallback_at) == (Fallback.DUE, T0 - timedelta(minutes=2))
    now = T0 + timedelta(seconds=1)
    assert (due_from(late, now).fallback_at, due_from(late, now).next_action_at) == (now, None)
    ahead = dataclasses.replace(late, fallback_at=T0 + timedelta(seconds=5), next_action_at=T0 + timedelta(hours=1))
    assert due_from(ahead, now) == ahead


def test_a_late_acceptance_does_not_move_a_failed_revokes_next_try():
    """ACCEPTED (a re-send answered 409, say) after a revoke failed: the state, its retry time
    and its attempts stay. The retry time is not the deadline, so a reset to it would show."""
    deadline = T0 + timedelta(minutes=5)
    retrying = retry_revoke(claim_revoke(sent(), deadline, LEASE, "a"), deadline, "503", max_attempts=8, base=90)
    m = learn(retrying, Fact.REVOKE_FAILED, T0 + timedelta(minutes=7))
    assert (m.state, m.next_action_at, m.attempts) == (State.REVOKE_FAILED, deadline + timedelta(seconds=90), 1)
    later = learn(m, Fact.ACCEPTED, T0 + timedelta(minutes=8))
    assert (later.state, later.next_action_at, later.attempts) == (m.state, m.next_action_at, m.attempts)


def test_a_retry_of_a_message_that_left_the_sweep_meanwhile_changes_only_the_lease_and_error():
    """DELIVERED arrived while the revoke was failing: no next try, whatever the attempts."""
    m = learn(claim_revoke(sent(), T0 + timedelta(minutes=5), LEASE, "a"), Fact.DELIVERED, T0 + timedelta(minutes=5))
    after = retry_revoke(m, T0 + timedelta(minutes=6), "503", max_attempts=1, base=10)
    assert (after.state, after.next_action_at, after.lease_owner, after.last_error) == (
        State.DELIVERED,
        None,
        None,
        "503",
    )
    assert after.fallback is Fallback.CANCELLED


def test_an_sms_whose_answer_was_lost_is_unknown_and_never_due_again():
    m = claim_fallback(learn(sent(fallback=Fallback.WAITING), Fact.REVOKED, T0), T0, LEASE, "a", opted_out=False)
    assert m is not None and m.fallback is Fallback.SENDING
    after = fallback_unknown(m, "read timeout")
    assert (after.fallback, after.fallback_at, after.lease_owner, after.last_error) == (
        Fallback.UNKNOWN,
        None,
        None,
        "read timeout",
    )
    assert claim_fallback(after, T0 + timedelta(days=1), LEASE, "b", opted_out=False) is None
