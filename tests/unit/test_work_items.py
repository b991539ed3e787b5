"""Work items as a task's body (work_items.encode / decode)."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from functions import work_items
from functions.work_items import WorkItem, WorkItemError

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def test_an_item_survives_encode_and_decode():
    item = WorkItem("revoke", ("m-1", "m-2"), T0 + timedelta(microseconds=250))
    assert work_items.decode(item.encode()) == item


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
