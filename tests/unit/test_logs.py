"""Structured log lines: Cloud Logging's fields, masked phones, trace ids."""

import json
import re

import pytest

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
    ],
)
def test_phone_shaped_text_is_masked_anywhere_in_a_line(capsys, text):
    logs.error(f"provider said: {text}", reason=text, detail={"nested": [text]})
    raw = capsys.readouterr().out
    assert not re.search(r"\d{4}", re.sub(r"\*+\d\d", "", raw)), raw


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
    ],
)
def test_timestamps_ids_and_figures_are_left_alone(capsys, text):
    logs.info(text)
    assert lines(capsys)[0]["message"] == text
