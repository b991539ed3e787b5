"""Structured log lines: Cloud Logging's fields, masked phones, trace ids."""

import json
import re
import unicodedata
from functools import cache

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from functions import logs


def lines(capsys):
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.mark.parametrize("phone, masked", [("+447700900123", "+44********23"), ("+15", "*15"), (None, None)])
def test_mask_keeps_country_code_and_last_two_digits(phone, masked):
    assert logs.mask_phone(phone) == masked


def test_a_line_has_severity_message_labels_and_a_masked_phone(capsys):
    logs.info("hello", phone="+447700900123", message_id="m1", agent_id="a", event="x")
    [line] = lines(capsys)
    assert line["severity"] == "INFO" and line["message"] == "hello" and line["event"] == "x"
    assert line["phone"] == "+44********23"
    assert line["logging.googleapis.com/labels"] == {"message_id": "m1", "agent_id": "a"}


@pytest.mark.parametrize(
    "headers",
    [
        {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        {"X-Cloud-Trace-Context": "0af7651916cd43dd8448eb211c80319c/123;o=1"},
    ],
)
def test_trace_comes_from_either_header(capsys, monkeypatch, headers):
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "p")
    logs.bind_trace(headers)
    logs.info("traced")
    assert lines(capsys)[0]["logging.googleapis.com/trace"] == "projects/p/traces/0af7651916cd43dd8448eb211c80319c"
    logs.bind_trace({})


def test_debug_is_off_unless_asked(capsys, monkeypatch):
    logs.debug("quiet")
    assert lines(capsys) == []
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    logs.debug("loud")
    assert lines(capsys)[0]["severity"] == "DEBUG"


@pytest.mark.parametrize(
    "text",
    [
        "The 'To' number +15005550001 is not a valid phone number.",
        "number+447700900123",
        "call +1 (415) 555-0123 now",
        "call (415) 555-0123 now",
        "415.555.0123",
        "national 07700900123 form",
        "Traceback ...\nValueError: 4155550123",
        "uk 07700 900123",
        "london 020 7946 0958",
        "fr 06 12 34 56 78",
        "de 0151 12345678",
        "in 98765 43210",
        "cn 138 1234 5678",
        "url To=%2B14155550123&Body=x",
        "user-4155550123",
        "id:4155550123_x",
        "slashes 415/555/0123",
        "de 0151-1234-5678",
        "eight digits 12345678 here",
        "nine 123456789",
        "content.14155550123: not valid",
        "arabic-indic +\u0664\u0664\u0667\u0667\u0660\u0660\u0669\u0660\u0660\u0661\u0662\u0663",
        "extended arabic-indic \u06f0\u06f7\u06f7\u06f0\u06f0\u06f9\u06f0\u06f0\u06f1\u06f2\u06f3",
        "full-width \uff0b\uff14\uff14\uff17\uff17\uff10\uff10\uff19\uff10\uff10\uff11\uff12\uff13",
        "no-break spaces +44\u00a07700\u00a0900123",
        "narrow no-break (415)\u202f555\u202f0123",
        "en dashes 415\u2013555\u20130123",
    ],
)
def test_phone_shaped_text_is_masked_anywhere_in_a_line(capsys, text):
    logs.error(f"provider said: {text}", reason=text, detail={"nested": [text], text: (text,)})
    raw = capsys.readouterr().out
    assert not re.search(r"\d{4}", re.sub(r"\*+\d\d", "", plain(json.loads(raw)))), raw


def plain(line: dict) -> str:
    """A log line's text with every decimal digit (any script) as ASCII, to look for digits left."""
    text = json.dumps(line, ensure_ascii=False)
    return "".join(str(unicodedata.decimal(c)) if unicodedata.decimal(c, None) is not None else c for c in text)


def test_an_integer_field_that_is_a_phone_number_is_masked(capsys):
    logs.info("x", number=14155550123, count=12345)
    line = lines(capsys)[0]
    assert line["number"] == "141******23" and line["count"] == 12345


# Every example number phonenumbers has (each region's, each type's, the non-geographic
# ones') in each of its formats. NATIONAL forms of fewer than 8 digits are left out:
# without a country code they read as ordinary figures (a count, a port, an amount).
FORMATS = (
    PhoneNumberFormat.NATIONAL,
    PhoneNumberFormat.INTERNATIONAL,
    PhoneNumberFormat.E164,
    PhoneNumberFormat.RFC3966,
)


@cache
def formatted_examples() -> tuple[str, ...]:
    numbers = [
        phonenumbers.example_number_for_type(region, kind)
        for region in sorted(phonenumbers.SUPPORTED_REGIONS)
        for kind in (getattr(PhoneNumberType, name) for name in dir(PhoneNumberType) if name.isupper())
    ] + [
        phonenumbers.example_number_for_non_geo_entity(cc)
        for cc in sorted(phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS)
    ]
    texts = {phonenumbers.format_number(n, f) for n in numbers if n for f in FORMATS}
    return tuple(sorted(t for t in texts if t.startswith(("+", "tel:")) or sum(c.isdigit() for c in t) >= 8))


def test_the_examples_cover_every_region_and_format():
    assert len(phonenumbers.SUPPORTED_REGIONS) >= 245 and len(formatted_examples()) > 3500


def assert_masked(text: str) -> None:
    masked = logs.mask_phones(text)
    normalised = "".join(str(unicodedata.decimal(c)) if unicodedata.decimal(c, None) is not None else c for c in masked)
    assert not re.search(r"\d{4}", re.sub(r"\*+\d\d", "", normalised)), (text, masked)


def test_every_example_number_in_every_format_is_masked():
    for text in formatted_examples():
        assert_masked(f"provider said: {text}.")


# Decimal digits of other scripts (Arabic-Indic, extended Arabic-Indic, Devanagari, full-width).
DIGIT_ZEROS = ("0", "\u0660", "\u06f0", "\u0966", "\uff10")
SPACES = (" ", "\u00a0", "\u202f", "\u2007")
DASHES = ("-", "\u2010", "\u2011", "\u2013", "\u2212")
CONTEXTS = ("{}", "reason: {} refused", "content.{}", "id:{}_x", "user-{}", "({})", "To={}&Body=x", "line\n{}\n")


@settings(max_examples=400, deadline=None)
@given(
    text=st.sampled_from(formatted_examples()),
    zero=st.sampled_from(DIGIT_ZEROS),
    space=st.sampled_from(SPACES),
    dash=st.sampled_from(DASHES),
    context=st.sampled_from(CONTEXTS),
)
def test_example_numbers_in_any_digits_spaces_and_dashes_are_masked_in_context(text, zero, space, dash, context):
    def script(c: str) -> str:
        return chr(ord(zero) + int(c)) if c.isdigit() else space if c == " " else dash if c == "-" else c

    assert_masked(context.format("".join(script(c) for c in text)))


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-30T12:09:57.123456+00:00",
        "123e4567-e89b-12d3-a456-426614174000",
        "projects/p/traces/0af7651916cd43dd8448eb211c80319c",
        "SM1234567890abcdef1234567890abcdef",
        "took 12.3456 s",
        "pubsub id 12345678901234567",
        "at 12:09:57 on 2026-11-30",
        "listening on 127.0.0.1:8080",
        "3 of 12 in 45 s",
        "version 2.34.2",
        'summary {"scanned": 300, "sent": 284}',
        "2026-11-30 12:09:57Z",
        "bench-message-1234",
        "retry 3 of 5 after 0.25 s",
    ],
)
def test_timestamps_ids_and_figures_are_left_alone(capsys, text):
    logs.info(text)
    assert lines(capsys)[0]["message"] == text
