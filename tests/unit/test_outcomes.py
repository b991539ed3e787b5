"""Outcome events from message changes: DESIGN.md §3 invariant 11, with no I/O."""

import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from functions.model import Fallback, Message, SmsStatus, State
from functions.outcomes import FALLBACK_STATUS, SMS_LEG_STATUS, Channel, Fate, cause, changes, fate, numbered
from functions.transitions import (
    EVENT_FACTS,
    Fact,
    claim_fallback,
    fallback_failed,
    fallback_sent,
    fallback_unknown,
    learn,
)
from tests.support import OUTCOME_SCHEMA, valid_outcome

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PHONE = "+15550001111"


def new(fallback=Fallback.WAITING, tracked=True) -> Message:
    return Message(
        "m1",
        PHONE,
        "agent",
        fallback=fallback,
        fallback_text="code 1234" if fallback is not Fallback.NONE else None,
        tracked=tracked,
        client_ref="order-42",
        metadata={"shop": "7"},
        created_at=T0,
    )


def history(steps):
    """Commits each step in turn as store.update_all does; returns (message, all events)."""
    m, everything = None, []
    for step in steps:
        m, events = numbered(m, step(m), T0 + timedelta(minutes=len(everything)))
        everything += events
    return m, everything


def test_a_new_pending_message_has_no_event():
    assert changes(None, new(), T0) == []


def test_each_change_of_state_or_fallback_is_one_numbered_event():
    m, events = history(
        [
            lambda _: new(),
            lambda m: learn(m, Fact.ACCEPTED, T0 + timedelta(seconds=1)),
            lambda m: learn(m, Fact.REVOKED, T0 + timedelta(seconds=2)),
            lambda m: claim_fallback(m, T0 + timedelta(minutes=1), timedelta(seconds=60), "me", opted_out=False),
            lambda m: fallback_sent(m, T0 + timedelta(seconds=3), "SM1"),
        ]
    )
    assert [(e.seq, e.status, e.channel, e.fate, e.final) for e in events] == [
        (1, "SENT", Channel.RCS, Fate.PENDING, False),
        (2, "REVOKED", Channel.RCS, Fate.PENDING, False),
        (3, "SMS_SENT", Channel.SMS, Fate.SMS, True),
    ]
    assert [e.event_id for e in events] == ["m1:1", "m1:2", "m1:3"]
    assert m.outcome_seq == 3
    assert events[0].occurred_at == T0 + timedelta(seconds=1)  # the fact's time, not the commit's
    assert events[2].occurred_at == T0 + timedelta(seconds=3)
    assert {(e.client_ref, e.phone, e.agent_id) for e in events} == {("order-42", PHONE, "agent")}
    assert all(e.metadata == {"shop": "7"} for e in events)


def test_one_commit_changing_both_fields_is_two_events_of_one_fate():
    before = learn(new(), Fact.ACCEPTED, T0)
    events = changes(before, learn(before, Fact.DELIVERED, T0), T0)
    assert [(e.status, e.channel, e.fate, e.final) for e in events] == [
        ("DELIVERED", Channel.RCS, Fate.RCS, True),
        ("SMS_CANCELLED", Channel.SMS, Fate.RCS, True),
    ]


def test_untracked_messages_have_no_events():
    before = new(tracked=False)
    assert changes(before, learn(before, Fact.DELIVERED, T0), T0) == []


@pytest.mark.parametrize(
    "message, expected",
    [
        (dataclasses.replace(new(Fallback.NONE), state=State.UNREACHABLE), (Fate.FAILED, True)),
        (dataclasses.replace(new(), state=State.UNREACHABLE, fallback=Fallback.DUE), (Fate.PENDING, False)),
        (dataclasses.replace(new(), state=State.REVOKED, fallback=Fallback.CANCELLED), (Fate.FAILED, True)),
        (dataclasses.replace(new(), state=State.REVOKED, fallback=Fallback.UNKNOWN), (Fate.UNKNOWN, True)),
        (dataclasses.replace(new(), state=State.REVOKED, fallback=Fallback.FAILED), (Fate.FAILED, True)),
        (dataclasses.replace(new(), state=State.READ, fallback=Fallback.SENT), (Fate.RCS, True)),
        (dataclasses.replace(new(Fallback.NONE), state=State.REVOKE_FAILED), (Fate.PENDING, False)),
    ],
)
def test_fate(message, expected):
    assert fate(message) == expected


def test_the_reason_is_our_cause_never_the_provider_text():
    before = dataclasses.replace(new(), state=State.REVOKED, fallback=Fallback.SENDING)
    (event,) = changes(before, fallback_unknown(before, f"RBM 500: number {PHONE} unknown"), T0)
    assert event.reason == "RBM 500"
    assert PHONE not in str(event.reason)
    (event,) = changes(before, fallback_failed(before, "provider 400, code 21211"), T0)
    assert (event.status, event.reason) == ("SMS_FAILED", "provider 400, code 21211")
    assert cause(None) is None


def test_an_sms_cancelled_by_delivery_has_no_reason_and_one_cancelled_by_an_opt_out_has_its_own():
    retried = dataclasses.replace(learn(new(), Fact.ACCEPTED, T0), last_error="RBM 503: unavailable")
    delivered = changes(retried, learn(retried, Fact.DELIVERED, T0), T0)
    assert [(e.status, e.reason) for e in delivered] == [("DELIVERED", None), ("SMS_CANCELLED", None)]
    revoked = dataclasses.replace(learn(retried, Fact.REVOKED, T0), fallback=Fallback.DUE, fallback_at=T0)
    opted_out = claim_fallback(revoked, T0, timedelta(seconds=60), "me", opted_out=True)
    assert [(e.status, e.reason) for e in changes(revoked, opted_out, T0)] == [("SMS_CANCELLED", "user opted out")]


def test_data_and_attributes_follow_the_contract():
    before = learn(new(), Fact.ACCEPTED, T0)
    (event, _) = changes(before, learn(before, Fact.DELIVERED, T0), T0)
    assert set(event.data()) == {
        "event_id",
        "message_id",
        "seq",
        "status",
        "channel",
        "fate",
        "final",
        "client_ref",
        "metadata",
        "agent_id",
        "phone",
        "occurred_at",
        "reason",
        "batch_id",
    }
    assert event.data()["occurred_at"] == "2026-01-01T00:00:00Z"
    assert event.attributes() == {
        "event_id": "m1:1",
        "message_id": "m1",
        "status": "DELIVERED",
        "fate": "rcs",
        "agent_id": "agent",
        "client_ref": "order-42",
    }
    assert "client_ref" not in dataclasses.replace(event, client_ref=None).attributes()
    assert type(event).from_doc(event.to_doc()) == event
    in_batch = dataclasses.replace(event, batch_id="spring-campaign")
    assert in_batch.data()["batch_id"] == in_batch.attributes()["batch_id"] == "spring-campaign"
    assert "batch_id" not in event.attributes() and event.data()["batch_id"] is None
    assert type(event).from_doc(in_batch.to_doc()) == in_batch


def test_a_receipt_time_with_an_offset_is_published_in_utc_as_its_republished_copy_is():
    """A sendTime with an offset (RFC 3339 allows one) is published with `Z`, as the
    schema says and as the outbox's republished copy reads it back from Firestore
    (in UTC): two deliveries of one event_id carry the same data."""
    before = learn(new(), Fact.ACCEPTED, T0)
    at = datetime(2026, 1, 1, 2, 0, tzinfo=timezone(timedelta(hours=2)))  # T0, written as +02:00
    (event, _) = changes(before, learn(before, Fact.DELIVERED, at), T0)
    republished = type(event).from_doc(event.to_doc() | {"occurred_at": at.astimezone(UTC)})
    assert valid_outcome(event.data())["occurred_at"] == "2026-01-01T00:00:00Z"
    assert event.data() == republished.data()


# Everything that can happen to a message: facts (with event ids, so redeliveries
# repeat), and the fallback sweep's steps.
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("fact"), st.sampled_from(list(Fact)), st.sampled_from(["e1", "e2", "e3", None])),
        st.tuples(st.just("sms"), st.sampled_from(["claim", "sent", "failed", "unknown"]), st.none()),
    ),
    max_size=12,
)


def apply(m: Message, step, at: datetime) -> Message:
    kind, what, event_id = step
    if kind == "fact":
        return learn(m, what, at, event_id)
    if what == "claim":
        return claim_fallback(m, at, timedelta(seconds=60), "me", opted_out=False) or m
    if m.fallback is not Fallback.SENDING:
        return m
    return {"sent": lambda: fallback_sent(m, at, "SM1"), "failed": lambda: fallback_failed(m, "provider 400")}.get(
        what, lambda: fallback_unknown(m, "RBM 500")
    )()


@given(steps=STEPS, fallback=st.sampled_from([Fallback.NONE, Fallback.WAITING]))
def test_seq_is_gap_free_and_each_event_is_one_change(steps, fallback):
    m, events = history([lambda _: new(fallback)] + [lambda m, s=s: apply(m, s, T0) for s in steps])
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert all(valid_outcome(e.data()) for e in events)
    assert len({e.event_id for e in events}) == len(events)
    assert m.outcome_seq == len(events)


@given(steps=STEPS)
def test_a_change_that_changes_nothing_yields_nothing(steps):
    m, _ = history([lambda _: new()] + [lambda m, s=s: apply(m, s, T0) for s in steps])
    assert changes(m, m, T0) == []
    for step in steps:  # every step again: a redelivery, a replayed work item
        again = apply(m, step, T0)
        if (again.state, again.fallback) == (m.state, m.fallback):
            assert changes(m, again, T0) == []


@given(
    facts=st.lists(st.tuples(st.sampled_from(sorted(EVENT_FACTS)), st.integers(0, 20)), max_size=6),
    order=st.randoms(use_true_random=False),
)
def test_the_same_facts_in_any_order_end_in_the_same_fate(facts, order):
    sent = learn(new(), Fact.ACCEPTED, T0)
    facts = [(f, minute, f"e{i}") for i, (f, minute) in enumerate(facts)]
    shuffled = list(facts)
    order.shuffle(shuffled)
    ends = []
    for sequence in (facts, shuffled):
        m, events = history(
            [lambda _: sent]
            + [
                lambda m, f=f, minute=minute, i=i: learn(m, EVENT_FACTS[f], T0 + timedelta(minutes=minute), i)
                for f, minute, i in sequence
            ]
        )
        assert (events[-1].fate, events[-1].final) == fate(m)
        ends.append(fate(m))
    assert ends[0] == ends[1]


def test_the_json_schema_names_every_field_and_value_the_code_publishes():
    properties = OUTCOME_SCHEMA["properties"]
    assert set(OUTCOME_SCHEMA["required"]) == set(properties) == set(changes(None, sent_message(), T0)[0].data())
    assert set(properties["status"]["enum"]) == {s.value for s in State if s is not State.PENDING} | set(
        FALLBACK_STATUS.values()
    ) | set(SMS_LEG_STATUS.values())
    assert set(properties["fate"]["enum"]) == {f.value for f in Fate}
    assert set(properties["channel"]["enum"]) == {c.value for c in Channel}


def sent_message() -> Message:
    return learn(new(), Fact.ACCEPTED, T0)


def test_the_sms_legs_own_fate_is_an_event_once_per_change_and_undelivered_is_failed():
    """Status callbacks (receive_sms_status) move sms_status: DELIVERED is SMS_DELIVERED
    (fate sms), UNDELIVERED or FAILED is SMS_UNDELIVERED with the provider's code (fate
    failed); the steps on the way, and a second report that publishes the same, are none."""
    sent = dataclasses.replace(
        sent_message(), state=State.REVOKED, fallback=Fallback.SENT, fallback_sent_at=T0, outcome_seq=3
    )
    queued = dataclasses.replace(sent, sms_status=SmsStatus.QUEUED, sms_status_at=T0)
    assert changes(sent, queued, T0) == []
    at = T0 + timedelta(seconds=4)
    undelivered = dataclasses.replace(
        queued, sms_status=SmsStatus.UNDELIVERED, sms_error_code="30003", sms_status_at=at
    )
    (event,) = changes(queued, undelivered, at + timedelta(seconds=1))
    assert (event.seq, event.status, event.channel, event.reason) == (4, "SMS_UNDELIVERED", Channel.SMS, "30003")
    assert (event.fate, event.final, event.occurred_at) == (Fate.FAILED, True, at)
    failed_too = dataclasses.replace(undelivered, sms_status=SmsStatus.FAILED)
    assert changes(undelivered, failed_too, at) == []  # published the same: nothing new
    delivered = dataclasses.replace(queued, sms_status=SmsStatus.DELIVERED, sms_status_at=at)
    (event,) = changes(queued, delivered, at)
    assert (event.status, event.fate, event.final, event.reason) == ("SMS_DELIVERED", Fate.SMS, True, None)
    valid_outcome(event.data())
