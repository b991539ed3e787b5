"""Work items as bytes (work_items.encode / decode) and how due messages become items (dispatch.items)."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from functions import dispatch, revoke_expired, send_fallbacks, work_items
from functions.model import Fallback, Message, State
from functions.work_items import WorkItem, WorkItemError

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def test_an_item_survives_encode_and_decode():
    item = WorkItem("revoke", ("m-1", "m-2"), T0 + timedelta(microseconds=250))
    data, attributes = item.encode()
    assert attributes == {"duty": "revoke"}
    assert work_items.decode(data) == item


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"duty": "revoke", "message_ids": ["m-1"]}',  # no due_at
        json.dumps({"duty": "delete", "message_ids": ["m-1"], "due_at": T0.isoformat()}).encode(),
        json.dumps({"duty": ["revoke"], "message_ids": ["m-1"], "due_at": T0.isoformat()}).encode(),  # unhashable
        json.dumps({"duty": {"revoke": 1}, "message_ids": ["m-1"], "due_at": T0.isoformat()}).encode(),
        json.dumps({"duty": "revoke", "message_ids": [], "due_at": T0.isoformat()}).encode(),
        json.dumps({"duty": "revoke", "message_ids": "m-1", "due_at": T0.isoformat()}).encode(),
        json.dumps({"duty": "revoke", "message_ids": ["m-1", ""], "due_at": T0.isoformat()}).encode(),
        json.dumps({"duty": "revoke", "message_ids": [7], "due_at": T0.isoformat()}).encode(),
        json.dumps(
            {"duty": "revoke", "message_ids": ["m"] * (work_items.MAX_IDS + 1), "due_at": T0.isoformat()}
        ).encode(),
        json.dumps({"duty": "revoke", "message_ids": ["m-1"], "due_at": "2026-01-01T12:00:00"}).encode(),  # no zone
        json.dumps({"duty": "revoke", "message_ids": ["m-1"], "due_at": "tomorrow"}).encode(),
    ],
)
def test_anything_else_is_not_a_work_item(body):
    with pytest.raises(WorkItemError):
        work_items.decode(body)


def revoke_due(i: int, seconds: float) -> Message:
    return Message(f"m-{i}", "+447700900001", "agent", state=State.SENT, next_action_at=T0 + timedelta(seconds=seconds))


def test_messages_due_close_together_share_an_item_due_with_its_last():
    messages = [revoke_due(0, 0), revoke_due(1, 0.2), revoke_due(2, 0.5), revoke_due(3, 0.6), revoke_due(4, 3)]
    assert dispatch.items(revoke_expired.REVOKE, messages) == [
        WorkItem("revoke", ("m-0", "m-1", "m-2"), T0 + timedelta(seconds=0.5)),
        WorkItem("revoke", ("m-3",), T0 + timedelta(seconds=0.6)),  # 0.6 s after the first of the previous item
        WorkItem("revoke", ("m-4",), T0 + timedelta(seconds=3)),
    ]


def test_an_item_holds_at_most_work_item_size_ids(monkeypatch):
    monkeypatch.setenv("WORK_ITEM_SIZE", "2")
    result = dispatch.items(revoke_expired.REVOKE, [revoke_due(i, 0) for i in range(5)])
    assert [item.message_ids for item in result] == [("m-0", "m-1"), ("m-2", "m-3"), ("m-4",)]
    assert {item.due_at for item in result} == {T0}


def test_a_fallback_item_follows_the_fallback_time_and_no_messages_give_no_items():
    late_revoke = Message(
        "m-9",
        "+447700900001",
        "agent",
        state=State.REVOKED,
        fallback=Fallback.DUE,
        next_action_at=T0 + timedelta(hours=1),
        fallback_at=T0,
    )
    assert dispatch.items(send_fallbacks.FALLBACK, [late_revoke]) == [WorkItem("fallback", ("m-9",), T0)]
    assert dispatch.items(revoke_expired.REVOKE, []) == []
