"""send_batch's request rules and a batch message's life in the state machine, with no I/O."""

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from functions import batch_request, outbound
from functions.batch_request import InvalidBatch, TooLarge, message_id, parse
from functions.model import Batch, Fallback, State
from functions.outcomes import changes
from functions.transitions import (
    Fact,
    cancel_pending,
    claim_fallback,
    claim_revoke,
    fallback_sent,
    learn,
    parked,
    released,
    retry_revoke,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CONTENT = {"text": "hi"}


def phone(i: int) -> str:
    return f"+1415555{i:04d}"


def test_defaults_are_merged_under_each_message_and_checked_by_send_messages_rules():
    batch = parse(
        {
            "batch_id": "b1",
            "defaults": {"content": CONTENT, "revoke_after_seconds": 60, "fallback": {"text": "sms"}},
            "messages": [{"phone": phone(0)}, {"phone": phone(1), "fallback": {"text": "own", "time_sensitive": True}}],
        },
        "agent",
    )
    (i0, first), (i1, second) = batch.accepted
    assert (i0, i1, batch.rejected) == (0, 1, [])
    assert first == outbound.parse(
        {"phone": phone(0), "content": CONTENT, "revoke_after_seconds": 60, "fallback": {"text": "sms"}}
        | {"message_id": message_id("b1", 0)},
        "agent",
    )
    assert (second.fallback_text, second.time_sensitive, second.revoke_after_seconds) == ("own", True, 60)


def test_message_ids_are_derived_from_the_batch_and_the_index_alone():
    assert message_id("b1", 0) == message_id("b1", 0) != message_id("b1", 1) != message_id("b2", 1)
    body = {"batch_id": "b1", "messages": [{"phone": phone(0), "content": CONTENT}]}
    assert parse(body, "a").accepted[0][1].message_id == message_id("b1", 0)


def test_invalid_duplicate_and_self_named_messages_are_rejected_with_their_index():
    body = {
        "batch_id": "b1",
        "defaults": {"content": CONTENT},
        "messages": [
            {"phone": phone(0)},
            {"phone": "+1 415"},
            {"phone": phone(0)},
            {"phone": phone(0), "agent_id": "other"},  # another agent: not a duplicate
            {"phone": phone(2), "message_id": message_id("b1", 9)},
            "not an object",
        ],
    }
    batch = parse(body, "agent")
    assert [i for i, _ in batch.accepted] == [0, 3]
    assert [(r.index, r.error.split(" ")[0]) for r in batch.rejected] == [
        (1, "phone"),
        (2, "phone"),
        (4, "message_id"),
        (5, "message"),
    ]
    assert "at index 0" in batch.rejected[1].error


@pytest.mark.parametrize(
    "body, reason",
    [
        ([], "JSON object"),
        ({"messages": []}, "non-empty"),
        ({"messages": [{}], "defaults": []}, "defaults"),
        ({"messages": [{}], "defaults": {"phone": "+14155550123"}}, "may not set"),
        ({"messages": [{}], "defaults": {"message_id": "x"}}, "may not set"),
        ({"messages": [{}], "precheck": "yes"}, "precheck"),
        ({"messages": [{}], "batch_id": "a/b"}, "batch_id"),
        ({"messages": [{}], "batch_id": "x" * 129}, "batch_id"),
        # A falsy idempotency key is a bad one, not an absent one: a random id would store a retry twice.
        ({"messages": [{}], "batch_id": ""}, "batch_id"),
        ({"messages": [{}], "batch_id": 0}, "batch_id"),
        ({"messages": [{}], "batch_id": False}, "batch_id"),
        ({"messages": [{}], "batch_id": []}, "batch_id"),
    ],
)
def test_a_body_that_is_no_batch_is_refused_whole(body, reason):
    with pytest.raises(InvalidBatch, match=reason):
        parse(body, "agent")


def test_more_than_the_maximum_is_too_large():
    with pytest.raises(TooLarge):
        parse({"messages": [{}] * (batch_request.MAX_MESSAGES + 1)}, "agent")


def test_the_fingerprint_is_the_request_and_not_its_batch_id():
    body = {"batch_id": "b1", "defaults": {"content": CONTENT}, "messages": [{"phone": phone(0)}]}
    same = parse(body | {"batch_id": "b2"}, "agent").fingerprint
    assert parse(body, "agent").fingerprint == same
    assert parse(body | {"precheck": True}, "agent").fingerprint != same
    assert parse(body | {"messages": [{"phone": phone(1)}]}, "agent").fingerprint != same


def record(revoke_after: int | None = 600, fallback: str | None = "sms"):
    body = {"phone": phone(0), "content": CONTENT, "revoke_after_seconds": revoke_after}
    wanted = outbound.parse(body | ({"fallback": {"text": fallback}} if fallback else {}), "agent")
    return wanted.record(T0, 30, batch_id="b1")


def test_a_batch_message_is_stored_parked_released_due_and_its_deadline_counts_from_its_accepted_create():
    m = record()
    assert (m.state, m.next_action_at, m.fallback_at, m.revoke_at, m.revoke_after_seconds, m.batch_id) == (
        State.PENDING,
        None,  # parked: no timer, no sweep finds it, until its batch is answered
        None,
        None,
        600,
        "b1",
    )
    released_at = T0 + timedelta(seconds=3)
    due = released(m, released_at)
    assert (due.next_action_at, due.fallback, due.fallback_at) == (released_at, Fallback.WAITING, None)
    accepted_at = T0 + timedelta(minutes=7)  # it waited in the queue
    sent = learn(due, Fact.ACCEPTED, accepted_at)
    assert sent.revoke_at == sent.next_action_at == accepted_at + timedelta(seconds=600)
    again = learn(sent, Fact.ACCEPTED, accepted_at + timedelta(seconds=5))  # a late 409 keeps the first deadline
    assert again.revoke_at == sent.revoke_at
    assert learn(record(revoke_after=None), Fact.ACCEPTED, accepted_at).next_action_at is None


def test_the_precheck_parks_an_unreachable_numbers_sms_until_the_release():
    unreachable = parked(learn(record(), Fact.UNREACHABLE, T0, error="no RCS"))
    assert (unreachable.state, unreachable.fallback, unreachable.fallback_at) == (State.UNREACHABLE, Fallback.DUE, None)
    due = released(unreachable, T0 + timedelta(seconds=3))
    assert (due.fallback_at, due.next_action_at) == (T0 + timedelta(seconds=3), None)


def test_releasing_again_or_releasing_what_moved_on_changes_nothing():
    due = released(record(), T0)
    assert released(due, T0 + timedelta(seconds=9)) == due  # its timer's due time stays the first
    claimed = claim_revoke(due, T0, timedelta(seconds=60), "worker")
    assert claimed is not None and released(claimed, T0 + timedelta(seconds=9)) == claimed
    cancelled = cancel_pending(record(), T0, "batch cancelled")
    assert released(cancelled, T0) == cancelled
    sms_sent = fallback_sent(released(parked(learn(record(), Fact.UNREACHABLE, T0)), T0), T0, "SM1")
    assert released(sms_sent, T0 + timedelta(seconds=9)) == sms_sent


def test_cancelling_withdraws_an_unclaimed_pending_message_and_its_sms_with_events_of_its_batch():
    m = record()
    cancelled = cancel_pending(m, T0, "batch cancelled")
    assert (cancelled.state, cancelled.fallback, cancelled.fallback_at, cancelled.next_action_at) == (
        State.FAILED,
        Fallback.CANCELLED,
        None,
        None,
    )
    events = changes(m, cancelled, T0)
    assert [(e.status, e.fate.value, e.reason, e.batch_id) for e in events] == [
        ("FAILED", "failed", "batch cancelled", "b1"),
        ("SMS_CANCELLED", "failed", "batch cancelled", "b1"),
    ]


def test_cancelling_a_message_without_a_fallback_leaves_its_fallback_none():
    cancelled = cancel_pending(record(fallback=None), T0, "batch cancelled")
    assert (cancelled.state, cancelled.fallback, cancelled.last_error) == (
        State.FAILED,
        Fallback.NONE,
        "batch cancelled",
    )


def test_cancelling_leaves_a_create_once_attempted_and_a_created_message_alone():
    claimed = claim_revoke(released(record(), T0), T0, timedelta(seconds=60), "worker")
    assert claimed is not None and cancel_pending(claimed, T0, "x") == claimed
    # Its lease ran out while the call may still be in flight: RBM may hold the message.
    assert cancel_pending(claimed, T0 + timedelta(seconds=61), "x") == claimed
    # Answered with a timeout or a 5xx, which RBM may have acted on: it is re-sent, not withdrawn.
    transient = retry_revoke(claimed, T0, "503", max_attempts=5, base=1.0)
    assert transient.state is State.PENDING and cancel_pending(transient, T0 + timedelta(seconds=61), "x") == transient
    sent = learn(record(), Fact.ACCEPTED, T0)
    assert cancel_pending(sent, T0, "x") == sent


def test_cancelling_a_batch_cancels_the_sms_not_yet_under_way_of_a_number_without_rcs_with_its_event():
    unreachable = parked(learn(record(), Fact.UNREACHABLE, T0, error="no RCS"))
    cancelled = cancel_pending(unreachable, T0, "batch cancelled")
    assert (cancelled.state, cancelled.fallback, cancelled.fallback_at, cancelled.last_error) == (
        State.UNREACHABLE,
        Fallback.CANCELLED,
        None,
        "batch cancelled",
    )
    events = changes(unreachable, cancelled, T0)
    assert [(e.status, e.reason, e.batch_id) for e in events] == [("SMS_CANCELLED", "batch cancelled", "b1")]
    due = released(unreachable, T0)  # released: its SMS is due, not yet under way
    assert cancel_pending(due, T0, "batch cancelled") == dataclasses.replace(cancelled, updated_at=due.updated_at)
    sending = claim_fallback(due, T0, timedelta(seconds=60), "worker", opted_out=False)
    assert sending is not None and cancel_pending(sending, T0, "batch cancelled") == sending  # under way: it finishes


def test_a_batch_document_answers_its_rejections_by_index():
    rejections = [{"error": "b", "indexes": [1, 5]}, {"error": "a", "indexes": [3]}]
    stored = Batch("b1", "f", 6, rejections=rejections)
    assert stored.rejected() == [{"index": 1, "error": "b"}, {"index": 3, "error": "a"}, {"index": 5, "error": "b"}]
    assert Batch.from_doc(stored.to_doc()) == stored
    assert dataclasses.replace(stored, stored=True).to_doc()["stored"] is True
