"""The SMS leg's own fate, pure: status callbacks verified and read (functions/sms_status.py),
and the status only moving forward (transitions.sms_status_learned)."""

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from functions import sms
from functions.model import SMS_STATUS_RANK, Fallback, Message, SmsStatus
from functions.sms_status import SIGNATURE_TOLERANCE, Refused, from_gateway, from_twilio, twilio_signature
from functions.transitions import sms_status_learned

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TOKEN, SECRET = "twilio-token", "gateway-secret"
URL = "https://rbm-receive-sms-status-123.europe-west1.run.app?message_id=m1"


def test_twilio_signature_is_the_documented_hmac_sha1_of_the_url_and_sorted_fields():
    # Twilio's security page: the URL, then each POST field's name and value, sorted by name.
    params = [("To", "+15550001111"), ("MessageSid", "SM1"), ("AccountSid", "AC1"), ("MessageStatus", "sent")]
    signed = URL + "AccountSidAC1MessageSidSM1MessageStatussentTo+15550001111"
    expected = base64.b64encode(hmac.new(TOKEN.encode(), signed.encode(), hashlib.sha1).digest()).decode()
    assert twilio_signature(TOKEN, URL, params) == expected


def _twilio(fields: dict, url: str = URL, token: str = TOKEN) -> tuple[bytes, str]:
    return urlencode(fields).encode(), twilio_signature(token, url, list(fields.items()))


def test_a_signed_twilio_callback_reads_into_a_report():
    body, signature = _twilio({"MessageSid": "SM1", "MessageStatus": "undelivered", "ErrorCode": "30003"})
    report = from_twilio(URL, body, signature, TOKEN)
    assert (report.message_id, report.sms_id, report.status, report.error_code) == (
        "m1",
        "SM1",
        SmsStatus.UNDELIVERED,
        "30003",
    )


@pytest.mark.parametrize(
    "change",
    [
        lambda b, s, u: (b, None, u),  # unsigned
        lambda b, s, u: (b, "x" + s, u),  # wrong
        lambda b, s, u: (b + b"&ErrorCode=30007", s, u),  # a field added after signing
        lambda b, s, u: (b, s, u.replace("m1", "m2")),  # another message id in the URL
        lambda b, s, u: (b, s, u.replace("https", "http")),  # the URL Twilio did not call
    ],
)
def test_a_twilio_callback_not_signed_as_received_is_401(change):
    body, signature = _twilio({"MessageSid": "SM1", "MessageStatus": "delivered"})
    body, signature, url = change(body, signature, URL)
    with pytest.raises(Refused) as refused:
        from_twilio(url, body, signature, TOKEN)
    assert refused.value.status == 401


def test_without_a_token_nothing_verifies():
    body, signature = _twilio({"MessageSid": "SM1", "MessageStatus": "delivered"}, token="")
    with pytest.raises(Refused):
        from_twilio(URL, body, signature, "")


@pytest.mark.parametrize(
    "fields, url",
    [
        ({"MessageSid": "SM1", "MessageStatus": "teleported"}, URL),
        ({"MessageStatus": "sent"}, URL),
        ({"MessageSid": "SM1", "MessageStatus": "sent"}, URL.split("?")[0]),  # no message_id
        ({"MessageSid": "SM1", "MessageStatus": "failed", "ErrorCode": "+15550001111"}, URL),  # not a code
    ],
)
def test_a_signed_but_malformed_twilio_callback_is_400(fields, url):
    body, signature = _twilio(fields, url)
    with pytest.raises(Refused) as refused:
        from_twilio(url, body, signature, TOKEN)
    assert refused.value.status == 400


def _gateway(payload: dict, t: int, secret: str = SECRET) -> tuple[bytes, str]:
    body = json.dumps(payload).encode()
    return body, sms.sign(secret.encode(), t, payload.get("message_id", ""), body)


def test_a_signed_gateway_callback_reads_into_a_report():
    body, signature = _gateway({"message_id": "m1", "id": "g-1", "status": "delivered"}, 1000)
    report = from_gateway(body, signature, SECRET, 1000.0)
    assert (report.message_id, report.sms_id, report.status, report.error_code) == (
        "m1",
        "g-1",
        SmsStatus.DELIVERED,
        None,
    )


@pytest.mark.parametrize(
    "signature, now",
    [
        (None, 1000.0),
        ("t=1000,v1=" + "0" * 64, 1000.0),
        ("sha256=abc", 1000.0),
        ("ok", 1000.0 + SIGNATURE_TOLERANCE + 1),  # stale
        ("ok", 1000.0 - SIGNATURE_TOLERANCE - 1),  # from the future
        ("other-secret", 1000.0),
    ],
)
def test_a_gateway_callback_unsigned_wrongly_signed_or_stale_is_401(signature, now):
    payload = {"message_id": "m1", "id": "g-1", "status": "delivered"}
    body, good = _gateway(payload, 1000)
    given_signature = {"ok": good, "other-secret": _gateway(payload, 1000, "other")[1]}.get(signature, signature)
    with pytest.raises(Refused) as refused:
        from_gateway(body, given_signature, SECRET, now)
    assert refused.value.status == 401


def test_a_gateway_signature_does_not_carry_over_to_another_message():
    body, signature = _gateway({"message_id": "m1", "id": "g-1", "status": "delivered"}, 1000)
    other = body.replace(b'"m1"', b'"m2"')
    with pytest.raises(Refused) as refused:
        from_gateway(other, signature, SECRET, 1000.0)
    assert refused.value.status == 401


# The SMS leg's status: forward only, each report once.

reports = st.lists(
    st.tuples(st.sampled_from(list(SmsStatus)), st.integers(0, 30), st.sampled_from([None, "30003", "30007"])),
    min_size=1,
    max_size=8,
)


def sending(fallback=Fallback.SENDING, uncertain=False) -> Message:
    return Message("m1", "+15550001111", "agent", fallback=fallback, fallback_text="code", fallback_uncertain=uncertain)


def fold(m: Message, events) -> Message:
    for status, second, code in events:
        m = sms_status_learned(m, "SM1", status, T0 + timedelta(seconds=second), code)
    return m


@settings(max_examples=300)
@given(
    events=reports,
    order=st.randoms(use_true_random=False),
    dupes=st.lists(st.integers(0, 7), max_size=6),
    fallback=st.sampled_from([Fallback.SENDING, Fallback.UNKNOWN, Fallback.SENT]),
)
def test_any_order_with_duplicates_ends_in_the_same_document(events, order, dupes, fallback):
    start = sending(fallback)
    canonical = fold(start, events)
    delivered = events + [events[i] for i in dupes if i < len(events)]
    order.shuffle(delivered)
    assert fold(start, delivered) == canonical
    assert SMS_STATUS_RANK[canonical.sms_status] == max(SMS_STATUS_RANK[s] for s, _, _ in events)


@given(events=reports)
def test_the_status_never_goes_back(events):
    m = sending()
    for status, second, code in events:
        before = m.sms_status
        m = sms_status_learned(m, "SM1", status, T0 + timedelta(seconds=second), code)
        assert before is None or SMS_STATUS_RANK[m.sms_status] >= SMS_STATUS_RANK[before]


def test_a_late_sent_never_hides_delivered():
    m = fold(sending(), [(SmsStatus.DELIVERED, 5, None), (SmsStatus.SENT, 9, None), (SmsStatus.QUEUED, 10, None)])
    assert (m.sms_status, m.sms_status_at) == (SmsStatus.DELIVERED, T0 + timedelta(seconds=5))


def test_undelivered_keeps_its_code_and_time():
    m = fold(sending(), [(SmsStatus.SENT, 1, None), (SmsStatus.UNDELIVERED, 7, "30005")])
    assert (m.sms_status, m.sms_error_code, m.sms_status_at) == (
        SmsStatus.UNDELIVERED,
        "30005",
        T0 + timedelta(seconds=7),
    )


@pytest.mark.parametrize(
    "fallback, uncertain",
    [(Fallback.SENDING, False), (Fallback.UNKNOWN, True), (Fallback.DUE, True)],
)
def test_a_callback_proves_an_uncertain_send_sent(fallback, uncertain):
    m = sms_status_learned(sending(fallback, uncertain), "SM9", SmsStatus.QUEUED, T0, None)
    assert (m.fallback, m.sms_id, m.fallback_sent_at, m.fallback_at, m.lease_owner) == (
        Fallback.SENT,
        "SM9",
        T0,
        None,
        None,
    )


@pytest.mark.parametrize("fallback", [Fallback.WAITING, Fallback.CANCELLED, Fallback.FAILED, Fallback.DUE])
def test_a_callback_leaves_a_fallback_that_never_went_to_the_provider(fallback):
    m = sms_status_learned(sending(fallback), "SM9", SmsStatus.DELIVERED, T0, None)
    assert m.fallback is fallback and m.sms_status is SmsStatus.DELIVERED


def test_a_report_about_another_sms_changes_nothing():
    m = sms_status_learned(sending(Fallback.SENT), "SM1", SmsStatus.SENT, T0, None)
    assert sms_status_learned(m, "SM2", SmsStatus.UNDELIVERED, T0, "30003") == m
