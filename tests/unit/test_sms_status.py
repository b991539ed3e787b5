"""The SMS leg's own fate, pure: status callbacks verified and read (functions/sms_status.py),
and the status only moving forward (transitions.sms_status_learned)."""

import base64
import dataclasses
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
from functions.transitions import check_later, claim_fallback, fallback_checked, sms_status_learned
from local.fake_sms import FakeTwilio

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


# Reconciling an ambiguous Twilio send: CHECKING, then the Messages list decides.

LEASE = timedelta(seconds=60)


def checking(attempts=1) -> Message:
    m = sending(Fallback.SENDING)
    return check_later(
        dataclasses.replace(m, fallback_attempts=attempts, fallback_tried_at=T0), T0, timedelta(seconds=30), "e"
    )


def test_an_ambiguous_send_is_looked_up_after_the_settle_delay():
    m = checking()
    assert (m.fallback, m.fallback_at, m.fallback_uncertain, m.lease_owner) == (
        Fallback.CHECKING,
        T0 + timedelta(seconds=30),
        True,
        None,
    )
    assert claim_fallback(m, T0 + timedelta(seconds=29), LEASE, "run", False, 0, 5) is None
    claimed = claim_fallback(m, T0 + timedelta(seconds=30), LEASE, "run", False, 0, 5)
    assert (claimed.fallback, claimed.lease_owner, claimed.fallback_attempts) == (Fallback.CHECKING, "run", 2)


def test_lookups_end_unknown_once_the_attempts_are_spent():
    claimed = claim_fallback(checking(attempts=5), T0 + timedelta(minutes=1), LEASE, "run", False, 0, 5)
    assert (claimed.fallback, claimed.fallback_uncertain) == (Fallback.UNKNOWN, True)
    assert claimed.last_error.startswith("gave up after 5 attempts")


def test_found_is_sent_absent_is_due_again_and_a_failed_lookup_waits():
    m, later = checking(attempts=2), T0 + timedelta(minutes=1)
    found = fallback_checked(m, later, "SM1", None, 5, 30.0)
    assert (found.fallback, found.sms_id, found.fallback_sent_at) == (Fallback.SENT, "SM1", later)
    absent = fallback_checked(m, later, None, None, 5, 30.0)
    assert (absent.fallback, absent.fallback_at, absent.fallback_uncertain) == (Fallback.DUE, later, False)
    failed = fallback_checked(m, later, None, "lookup answered 500", 5, 30.0)
    assert (failed.fallback, failed.fallback_at) == (Fallback.CHECKING, later + timedelta(seconds=60))
    spent = fallback_checked(checking(attempts=5), later, None, "lookup answered 500", 5, 30.0)
    assert spent.fallback is Fallback.UNKNOWN


def test_a_lookup_answer_after_a_callback_settled_it_changes_nothing():
    settled = sms_status_learned(checking(), "SM7", SmsStatus.DELIVERED, T0, None)
    assert settled.fallback is Fallback.SENT
    assert fallback_checked(settled, T0, None, None, 5, 30.0) == settled


def test_twilio_find_reads_the_list_newest_first_until_the_attempts_time(monkeypatch):
    with FakeTwilio("AC" + "2" * 32, TOKEN) as fake:
        for name, value in {
            "TWILIO_ACCOUNT_SID": fake.account_sid,
            "TWILIO_AUTH_TOKEN": TOKEN,
            "TWILIO_FROM_NUMBER": "+15005550006",
            "TWILIO_API_BASE": fake.url,
        }.items():
            monkeypatch.setenv(name, value)
        twilio = sms.Twilio()
        since = datetime.now(UTC) - timedelta(seconds=60)
        assert twilio.find("+15550001111", "code 1", since) == sms.Lookup()  # proven absent
        fake.script_statuses("+15550001111", [("queued", None)])  # no date_sent yet: still found
        sid = twilio.send("+15550001111", "code 1", "m1").provider_id
        for i in range(60):  # more than a page of later messages to the same number
            twilio.send("+15550001111", f"other {i}", f"o{i}")
        assert twilio.find("+15550001111", "code 1", since) == sms.Lookup(sms_id=sid)
        assert twilio.find("+15550002222", "code 1", since) == sms.Lookup()
        assert twilio.find("+15550001111", "code 1", datetime.now(UTC) + timedelta(seconds=5)) == sms.Lookup()
        fake.script_lookups([500])
        assert twilio.find("+15550001111", "code 1", since) == sms.Lookup(error="lookup answered 500, code 20500")


def test_a_send_whose_lease_ran_out_is_looked_up_when_the_provider_keeps_records():
    m = dataclasses.replace(
        sending(Fallback.SENDING), fallback_attempts=1, fallback_tried_at=T0, fallback_at=T0 + LEASE, lease_owner="dead"
    )
    later = T0 + LEASE + timedelta(seconds=1)
    claimed = claim_fallback(m, later, LEASE, "run", False, 0, 5)
    assert (claimed.fallback, claimed.lease_owner, claimed.fallback_attempts, claimed.fallback_uncertain) == (
        Fallback.CHECKING,
        "run",
        2,
        True,
    )
    assert claim_fallback(m, later, LEASE, "run", False, 0, 0).fallback is Fallback.UNKNOWN  # no records: as before
    assert claim_fallback(m, later, LEASE, "run", False, 0, 1).fallback is Fallback.UNKNOWN  # attempts spent
