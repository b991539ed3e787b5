"""receive_webhook: the RBM webhook edge.

Bound, verify, classify, publish, answer. A stranger costs it no parsing: a
request without a well-formed X-Goog-Signature can only be a handshake, so
anything larger is refused unread. It answers 200 only once Pub/Sub has the
event, so RBM retries anything not safely queued; it does no processing, so
it answers fast (a slow endpoint delays every agent of the partner).
"""

import base64
import binascii
import hmac
import json
from typing import Any

import flask

from functions import config, events, logs, pubsub, signature
from functions.replies import Reply, reject, reply

# The largest push RBM sends, generously: its events carry ids, a phone number,
# a user's text, a postback (at most 2,048 characters) or a file's URI, never the
# file (README, "receive_webhook answers"); `message.data` is their base64, 4/3 of
# the event. 128 KiB holds an 8,000-character text even with every character a
# 12-byte JSON escape.
MAX_BODY = 128 << 10
# A handshake is `{"clientToken": …, "secret": …}`: a few hundred bytes. Anything
# larger without a well-formed X-Goog-Signature is refused unread.
MAX_HANDSHAKE = 4 << 10


def _handshake(body: dict[str, Any]) -> Reply:
    """RBM's webhook registration: echo the secret, as plain text, to a known token."""
    token, secret = body.get("clientToken"), body.get("secret")
    if not isinstance(token, str) or not isinstance(secret, str):
        return reject(400, "handshake needs string clientToken and secret")
    if not (events.is_unicode(token) and events.is_unicode(secret)):
        return reject(400, "handshake clientToken or secret is not valid Unicode")
    if not any(hmac.compare_digest(token.encode(), t.encode()) for t in config.client_tokens()):
        return reject(403, "unknown client token", event="handshake_rejected")
    logs.info("webhook handshake answered", event="handshake_answered")
    return secret, 200, {"Content-Type": "text/plain; charset=utf-8"}


def _envelope_data(body: dict[str, Any]) -> bytes:
    """The decoded `message.data` bytes of a push envelope (its attributes are not
    signed, so nothing here reads them)."""
    message = body.get("message")
    if not isinstance(message, dict) or not isinstance(message.get("data"), str):
        raise ValueError("body is not an RBM push envelope (message.data)")
    try:
        return base64.b64decode(message["data"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("message.data is not base64") from exc


def _oversized(signed: bool) -> Reply:
    """A body over the limit: too large for an event (413), or, without a well-formed
    signature, for the only unsigned request there is, a handshake (401)."""
    if signed:
        return reject(413, "body too large")
    return reject(401, "missing or malformed X-Goog-Signature", event="signature_rejected")


def handle(request: flask.Request) -> Reply:
    logs.bind_trace(request.headers)
    if request.method != "POST":
        return reject(405, "method not allowed")
    signed = signature.well_formed(request.headers.get("X-Goog-Signature"))
    limit = MAX_BODY if signed else MAX_HANDSHAKE
    if (request.content_length or 0) > limit:
        return _oversized(signed)
    raw = request.stream.read(limit + 1)
    if len(raw) > limit:
        return _oversized(signed)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return reject(400, "body is not JSON")
    except RecursionError:
        return reject(400, "body nests arrays and objects too deep to read")
    if not isinstance(body, dict):
        return reject(400, "body is not a JSON object")
    if "clientToken" in body and "message" not in body:
        return _handshake(body)
    try:
        data = _envelope_data(body)
    except ValueError as exc:
        return reject(400, str(exc))
    if not signature.verify(request.headers.get("X-Goog-Signature"), data, config.client_tokens()):
        return reject(401, "bad or missing X-Goog-Signature", event="signature_rejected")
    try:
        event = events.decode(data)
    except events.EventError as exc:
        return reject(400, str(exc))
    attributes = event.attributes()
    try:
        published = pubsub.publish(config.events_topic(), data, attributes)
    except pubsub.PublishError as exc:
        logs.error(
            "publish failed; answering 503 so RBM retries", event="publish_failed", reason=str(exc), **attributes
        )
        return reply(503, {"error": "event not queued, retry"})
    logs.info("event published", event="event_published", pubsub_id=published, **attributes)
    return reply(200, {"published": published})
