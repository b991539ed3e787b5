"""process_due_work's 400: a work item whose message ids can never be documents is refused,
not answered 500 (which Cloud Tasks would retry until the queue's max attempts)."""

import json
from datetime import UTC, datetime

import flask
import pytest

from functions import process_due_work


@pytest.mark.parametrize("message_id", ["a/b", "..", "__x__", "m" * 1501])
def test_an_id_that_cannot_be_a_document_is_refused_with_400(message_id: str) -> None:
    body = json.dumps({"duty": "revoke", "message_ids": ["m-1", message_id], "due_at": datetime.now(UTC).isoformat()})
    with flask.Flask(__name__).test_request_context("/", method="POST", data=body):
        answer = process_due_work.handle(flask.request)
    response = flask.Flask(__name__).make_response(answer)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert "messageId" in response.json["error"]
