"""receive_sms_status: the SMS providers' status callbacks, onto the message document.

Twilio's (form-encoded, `X-Twilio-Signature`) and the signed gateway's (JSON,
`X-Signature`) callbacks are verified and read by `sms_status`; the SMS leg's
status only moves forward (`transitions.sms_status_learned`), so callbacks
duplicated, late or out of order change nothing more, and a callback for a
message whose send was interrupted or answered ambiguously settles it as SENT.
Unsigned or wrongly signed: 401; malformed: 400; a message we do not have: 200,
ignored and logged; nothing is stored for any of them. Firestore unavailable:
503, so the provider may try again.
"""

import time

import flask

from functions import config, logs, store
from functions.model import Fallback, Message
from functions.replies import Reply, reject, reply
from functions.sms_status import Refused, StatusReport, from_gateway, from_twilio
from functions.transitions import sms_status_learned

MAX_BODY = 64 * 1024  # a status callback is a few hundred bytes


def _report(request: flask.Request, raw: bytes) -> StatusReport:
    """The verified report of a callback; Refused when there is none to act on."""
    if "X-Twilio-Signature" in request.headers:
        base = config.sms_status_callback_url()
        if not base:
            raise Refused(401, "SMS_STATUS_CALLBACK_URL is unset: Twilio's signature cannot be checked")
        query = request.query_string.decode("latin-1")
        url = f"{base}?{query}" if query else base
        return from_twilio(url, raw, request.headers["X-Twilio-Signature"], config.twilio_auth_token())
    return from_gateway(raw, request.headers.get("X-Signature"), config.sms_webhook_secret(), time.time())


def handle(request: flask.Request) -> Reply:
    logs.bind_trace(request.headers)
    if request.method != "POST":
        return reject(405, "method not allowed")
    raw = request.stream.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        return reject(413, "body too large")
    try:
        report = _report(request, raw)
    except Refused as exc:
        return reject(exc.status, str(exc), event="sms_status_rejected")
    try:
        store.message_ref(report.message_id)
    except store.UnstorableError as exc:
        return reject(400, str(exc))
    fields = {"message_id": report.message_id, "sms_id": report.sms_id, "sms_status": report.status.value}
    at, seen = store.now(), list[Message]()  # seen: the message as the last try read it

    def learned(m: Message) -> Message:
        seen[:] = [m]
        return sms_status_learned(m, report.sms_id, report.status, at, report.error_code)

    try:
        after = store.claim_message(report.message_id, learned)
    except store.ContentionError:
        return reply(503, {"error": "message busy, retry"})
    if after is None:
        logs.warning("status of an SMS for a message we do not have; ignored", event="sms_status_unknown", **fields)
        return reply(200, {"ignored": "unknown message"})
    if after.sms_id != report.sms_id:
        logs.warning("status of another SMS than the one recorded; ignored", event="sms_status_other_sms", **fields)
        return reply(200, {"ignored": "another SMS of this message"})
    if seen[0].fallback is not Fallback.SENT and after.fallback is Fallback.SENT:
        logs.warning(
            "an SMS whose send was uncertain is proven sent by its status callback",
            event="fallback_confirmed",
            was=seen[0].fallback.value,
            **fields,
        )
    logs.info(
        f"SMS {after.sms_status.value if after.sms_status else ''}",
        event="sms_status_recorded",
        error_code=after.sms_error_code,
        **fields,
    )
    return reply(200, {"message_id": report.message_id, "sms_status": after.sms_status})
