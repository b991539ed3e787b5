"""The Cloud Tasks fake's rules, without a server: backoff, give-up, the token
bucket, validation, the OIDC token; and its command line."""

import base64
import json
import re
import subprocess
import sys
from email.utils import formatdate
from pathlib import Path

import pytest
import requests

from local.fake_tasks import (
    Invalid,
    TokenBucket,
    format_duration,
    format_timestamp,
    gives_up,
    halved_share,
    max_in_window,
    oidc_token,
    queue_settings,
    recovered_share,
    retry_after_seconds,
    retry_delay,
    validated_task,
)

ROOT = Path(__file__).resolve().parents[2]
QUEUE = "projects/p/locations/l/queues/q"
NOW = 1_800_000_000.0


def test_retry_intervals_double_then_grow_linearly_then_cap_as_the_reference_example():
    # RetryConfig.max_doublings: min 10 s, max 300 s, 3 doublings → 10, 20, 40, 80, 160, 240, 300, 300 s.
    retry = {"minBackoff": 10.0, "maxBackoff": 300.0, "maxDoublings": 3}
    assert [retry_delay(retry, n) for n in range(1, 9)] == [10, 20, 40, 80, 160, 240, 300, 300]


@pytest.mark.parametrize(
    ("max_attempts", "max_duration", "attempts", "since_first", "expected"),
    [
        (3, 0.0, 2, 100.0, False),  # attempts left
        (3, 0.0, 3, 0.0, True),  # attempts used, no duration limit
        (3, 60.0, 3, 10.0, False),  # both must be satisfied: the duration is not
        (3, 60.0, 3, 60.0, True),
        (-1, 0.0, 10_000, 1e9, False),  # unlimited
    ],
)
def test_a_task_is_given_up_only_when_attempts_and_duration_are_both_spent(
    max_attempts, max_duration, attempts, since_first, expected
):
    retry = {"maxAttempts": max_attempts, "maxRetryDuration": max_duration}
    assert gives_up(retry, attempts, since_first) is expected


def test_the_bucket_starts_a_backlog_after_idle_at_the_rate_not_with_a_burst():
    bucket = TokenBucket(rate=10.0, burst=10, last=NOW)
    bucket.idle(NOW + 60)  # a quiet minute keeps one token, not ten
    assert bucket.take(NOW + 60)
    assert not bucket.take(NOW + 60)
    taken = sum(bucket.take(NOW + 60 + i / 100) for i in range(1, 101))  # one second of polling
    assert taken == 10


def test_the_bucket_fills_to_the_burst_size_while_tasks_wait():
    bucket = TokenBucket(rate=10.0, burst=10, last=NOW)
    assert not bucket.take(NOW)  # a new queue starts empty; tasks wait from here on
    assert sum(bucket.take(NOW + 5) for _ in range(20)) == 10  # five seconds blocked: a burst of ten, no more
    assert bucket.wait() == pytest.approx(0.1)
    assert bucket.wait(factor=0.5) == pytest.approx(0.2)


def test_throttling_halves_the_rate_down_to_a_floor_and_recovers_by_a_tenth_a_second():
    assert halved_share(1.0) == 0.5
    assert halved_share(1 / 64) == 1 / 64
    assert recovered_share(0.5, since=2.0) == pytest.approx(0.7)
    assert recovered_share(0.5, since=60.0) == 1.0


def test_the_busiest_window_counts_what_falls_within_one_window():
    assert max_in_window([]) == 0
    assert max_in_window([0.0, 0.5, 0.99, 1.0, 1.5]) == 3
    assert max_in_window([0.0, 0.1, 0.2], window=0.15) == 2


def test_retry_after_is_read_as_seconds_or_an_http_date():
    assert retry_after_seconds("3", NOW) == 3.0
    assert retry_after_seconds(formatdate(NOW + 5, usegmt=True), NOW) == pytest.approx(5.0)
    assert retry_after_seconds("soon", NOW) == 0.0
    assert retry_after_seconds(None, NOW) == 0.0


def test_the_oidc_token_carries_the_audience_and_the_service_account():
    token = oidc_token("worker@p.iam.gserviceaccount.com", "https://worker.example", NOW)
    header, claims, signature = token.split(".")
    assert signature == ""
    decode = lambda part: json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))  # noqa: E731
    assert decode(header)["alg"] == "none"
    body = decode(claims)
    assert body["aud"] == "https://worker.example"
    assert body["email"] == "worker@p.iam.gserviceaccount.com"
    assert body["iss"] == "https://accounts.google.com"
    assert body["exp"] - body["iat"] == 3600


def test_queue_settings_fill_the_defaults_and_truncate_backoffs_to_seconds():
    rates, retry = queue_settings({"retryConfig": {"minBackoff": "1.700s", "maxAttempts": 5}})
    assert rates == {"maxDispatchesPerSecond": 500.0, "maxConcurrentDispatches": 1000}
    assert retry == {
        "maxAttempts": 5,
        "minBackoff": 1.0,
        "maxBackoff": 3600.0,
        "maxDoublings": 16,
        "maxRetryDuration": 0.0,
    }
    _, defaults = queue_settings({})
    assert defaults["minBackoff"] == 0.1


@pytest.mark.parametrize(
    "body",
    [
        {"rateLimits": {"maxDispatchesPerSecond": 501}},
        {"rateLimits": {"maxConcurrentDispatches": 5001}},
        {"retryConfig": {"maxAttempts": -2}},
        {"retryConfig": {"minBackoff": "10s", "maxBackoff": "5s"}},
        {"retryConfig": {"minBackoff": "ten"}},
    ],
)
def test_queue_settings_refuse_what_the_reference_forbids(body):
    with pytest.raises(Invalid):
        queue_settings(body)


def http_task(**fields):
    return {"task": {"httpRequest": {"url": "https://worker.example/run"}, **fields}}


def test_a_task_defaults_to_post_now_and_a_ten_minute_deadline_with_a_generated_name():
    task = validated_task(QUEUE, http_task(), NOW)
    assert (task["method"], task["eta"], task["deadline"]) == ("POST", NOW, 600.0)
    assert re.fullmatch(rf"{QUEUE}/tasks/\d+", task["name"])


def test_headers_cloud_tasks_computes_or_reserves_are_dropped():
    headers = {"Content-Type": "application/json", "Host": "x", "user-agent": "me", "X-CloudTasks-TaskName": "forged"}
    task = validated_task(QUEUE, http_task(httpRequest={"url": "https://x", "headers": headers}), NOW)
    assert task["headers"] == {"Content-Type": "application/json"}


def test_a_past_schedule_time_becomes_now():
    assert validated_task(QUEUE, http_task(scheduleTime="2020-01-01T00:00:00Z"), NOW)["eta"] == NOW


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"scheduleTime": format_timestamp(NOW + 30 * 86400 + 1)}, "too far in the future"),
        ({"dispatchDeadline": "14s"}, "between 15 seconds and 30 minutes"),
        ({"dispatchDeadline": "1801s"}, "between 15 seconds and 30 minutes"),
        ({"name": "projects/p/locations/l/queues/other/tasks/a"}, "must be"),
        ({"name": f"{QUEUE}/tasks/a.b"}, "must be"),
        ({"appEngineHttpRequest": {}}, "Unknown name"),
        ({"httpRequest": {"url": "ftp://x"}}, "http:// or https://"),
        ({"httpRequest": {"url": "https://x", "httpMethod": "GET", "body": "aGk="}}, "only if the HTTP method"),
        ({"httpRequest": {"url": "https://x", "oidcToken": {"audience": "a"}}}, "service_account_email"),
        ({"httpRequest": {"url": "https://x", "colour": "red"}}, "Unknown name"),
        ({"httpRequest": {"url": "https://x", "body": "not base64!"}}, "not base64"),
        ({"httpRequest": {"url": "https://x", "headers": {"X-Big": "x" * 81920}}}, "less than 80KB"),
    ],
)
def test_a_task_is_refused_as_the_reference_says(fields, problem):
    with pytest.raises(Invalid, match=problem):
        validated_task(QUEUE, http_task(**fields), NOW)


def test_a_task_up_to_thirty_days_ahead_is_accepted():
    eta = NOW + 30 * 86400 - 1
    task = validated_task(QUEUE, http_task(scheduleTime=format_timestamp(eta)), NOW)
    assert task["eta"] == pytest.approx(eta)


def test_durations_are_written_as_protobuf_json():
    assert (format_duration(600.0), format_duration(0.1)) == ("600s", "0.1s")


def test_command_line_prints_the_url_and_serves():
    process = subprocess.Popen(
        [sys.executable, "-m", "local.fake_tasks", "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        url = process.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        answer = requests.get(f"{url}/v2/{QUEUE}", timeout=5)
        assert (answer.status_code, answer.json()["error"]["status"]) == (404, "NOT_FOUND")
    finally:
        process.terminate()
        process.wait(5)
