"""send_batch: many send_message requests in one call, stored at once and sent at the queue's pace.

The answer, 202 `{"batch_id", "accepted", "rejected": [{"index", "error"}]}`,
comes once every accepted message is stored (PENDING, or UNREACHABLE after the
pre-check), the answer recorded, and the messages released to the queue
(batches.take). A call that fails before its answer is recorded has sent
nothing; a retry with the same request finishes it. Creates begin while the
release runs, so the 202 follows the first of them within that release's
seconds. The same batch_id with the same request answers the same, storing and
sending nothing twice; with another request, 409.
A body over 32 MiB (Cloud Run's request limit) or of more than 10,000 messages
answers 413; one that is not a batch, 400.
"""

import json
from typing import Any

import flask

from functions import batch_request, batches, config, logs, store
from functions.replies import Reply, reject, reply


def _json(raw: bytes) -> Any:
    """The JSON value of `raw`, or None if it is not JSON (parse then says it is not a batch)."""
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _too_large() -> Reply:
    return reject(413, f"body over {batch_request.MAX_BODY_BYTES:,} bytes")


def handle(request: flask.Request) -> Reply:
    logs.bind_trace(request.headers)
    if request.method != "POST":
        return reject(405, "method not allowed")
    if (request.content_length or 0) > batch_request.MAX_BODY_BYTES:
        return _too_large()
    raw = request.stream.read(batch_request.MAX_BODY_BYTES + 1)  # a chunked body has no length to check first
    if len(raw) > batch_request.MAX_BODY_BYTES:
        return _too_large()
    try:
        wanted = batch_request.parse(
            _json(raw) if request.is_json else None, config.agent_id(), config.sms_max_segments()
        )
    except RecursionError:
        return reject(400, "body nests maps and arrays too deep")
    except batch_request.TooLarge as exc:
        return reject(413, str(exc))
    except batch_request.InvalidBatch as exc:
        return reject(400, str(exc))
    try:
        batch = batches.take(wanted)
    except batches.Conflict as exc:
        return reject(409, str(exc), batch_id=wanted.batch_id)
    except store.UnstorableError as exc:
        return reject(400, str(exc), batch_id=wanted.batch_id)
    return reply(202, batches.answer(batch))
