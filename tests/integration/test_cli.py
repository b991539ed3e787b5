"""The operator commands against the emulators, run as a user runs them."""

import dataclasses
import json
import os
import subprocess
import sys

from functions import store
from functions.model import Fallback, Message, State
from local.processes import PROJECT, create_pull_subscription, create_topic, free_port, publish, pull_all


def cli(*args, env=None):
    full_env = {**os.environ, "GOOGLE_CLOUD_PROJECT": PROJECT, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "functions", *args], capture_output=True, text=True, env=full_env, timeout=60
    )


def test_status_prints_the_document_or_exits_1(firestore):
    store.update_message("m-42", lambda _: Message("m-42", "+447700900999", "agent", state=State.SENT))
    shown = cli("status", "m-42")
    assert shown.returncode == 0
    doc = json.loads(shown.stdout)
    assert (doc["message_id"], doc["state"], doc["fallback"]) == ("m-42", "SENT", "NONE") and doc["updated_at"]
    assert cli("status", "nope").returncode == 1


def test_status_shows_the_outcome_history_and_outcomes_lists_recent_ones_by_fate(firestore):
    store.update_message("m-7", lambda _: Message("m-7", "+447700900777", "agent", state=State.SENT))
    store.change_message("m-7", lambda m: dataclasses.replace(m, state=State.REVOKED, fallback=Fallback.SENT))
    store.update_message("m-8", lambda _: Message("m-8", "+447700900888", "agent", state=State.DELIVERED))
    shown = json.loads(cli("status", "m-7").stdout)
    assert [(e["seq"], e["status"], e["fate"]) for e in shown["outcomes"]] == [
        (1, "SENT", "pending"),
        (2, "REVOKED", "sms"),
        (3, "SMS_SENT", "sms"),
    ]
    recent = cli("outcomes", "--since", "10m")
    assert recent.returncode == 0, recent.stderr
    assert [json.loads(line)["event_id"] for line in recent.stdout.splitlines()] == ["m-7:1", "m-7:2", "m-7:3", "m-8:1"]
    assert "+4477" not in recent.stdout
    by_fate = cli("outcomes", "--since", "2020-01-01T00:00:00Z", "--fate", "sms")
    assert [json.loads(line)["event_id"] for line in by_fate.stdout.splitlines()] == ["m-7:2", "m-7:3"]
    assert cli("outcomes", "--since", "2020-01-01").returncode == 2  # no offset: refused


def test_list_by_fallback_state(firestore):
    store.update_message("a", lambda _: Message("a", "+447700900001", fallback=Fallback.UNKNOWN))
    store.update_message("b", lambda _: Message("b", "+447700900002", fallback=Fallback.SENT))
    listed = cli("list", "--fallback", "UNKNOWN")
    assert [json.loads(line)["message_id"] for line in listed.stdout.splitlines()] == ["a"]
    assert "+4477" not in listed.stdout


def test_replay_moves_dead_letters_back_without_their_dead_letter_attributes(pubsub_emulator):
    create_topic(PROJECT, "replay-events")
    create_pull_subscription(PROJECT, "replay-events", "replay-events-pull")
    create_topic(PROJECT, "replay-dead")
    create_pull_subscription(PROJECT, "replay-dead", "replay-dead-inspect")
    publish(PROJECT, "replay-dead", b'{"eventType": "DELIVERED"}', kind="user_event", dead_letter_reason="boom")
    env = {"RBM_EVENTS_TOPIC": "replay-events"}
    dry = cli("replay", "--subscription", "replay-dead-inspect", "--dry-run", env=env)
    assert dry.returncode == 0 and '"would replay"' in dry.stdout and "boom" in dry.stdout
    assert pull_all(PROJECT, "replay-events-pull", wait_seconds=1) == []
    done = cli("replay", "--subscription", "replay-dead-inspect", env=env)
    assert done.returncode == 0, done.stderr
    assert pull_all(PROJECT, "replay-events-pull", wait_seconds=5, expect=1) == [
        (b'{"eventType": "DELIVERED"}', {"kind": "user_event"})
    ]
    assert pull_all(PROJECT, "replay-dead-inspect", wait_seconds=1) == []


def test_unreachable_emulator_is_a_clear_error():
    result = cli("status", "x", env={"FIRESTORE_EMULATOR_HOST": f"127.0.0.1:{free_port()}"})
    assert result.returncode == 2 and "cannot reach" in result.stderr


def test_erase_refuses_a_number_that_is_not_e164_rather_than_erase_nothing(firestore):
    """Documents hold numbers in E.164: a spaced or national form would match nothing,
    and an answer of zero counts would read as an erasure done."""
    store.update_message("m-9", lambda _: Message("m-9", "+447700900999", "agent", state=State.SENT))
    for typed in ("+44 7700 900999", "07700900999", "447700900999"):
        refused = cli("erase", typed)
        assert refused.returncode == 2 and "E.164" in refused.stderr, refused.stdout
    assert store.get_message("m-9") is not None


def test_batch_refuses_an_id_no_batch_can_have_as_a_bad_argument(firestore):
    """`a/b` is no batch id (send_batch refuses it) and not even a Firestore document id."""
    for typed in ("a/b", "-", "x" * 129):
        refused = cli("batch", "--", typed)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
        assert "a batch id is 1 to 128 letters" in refused.stderr.splitlines()[-1]
    assert cli("batch", "no-such-batch").returncode == 1


def test_bad_arguments_are_usage_errors_not_tracebacks_nor_an_unreachable_cloud(firestore):
    """An id that can never be a document, a duration past the calendar, a limit below 1: refused
    with the usage (exit 2), not a traceback (exit 1, like "no such message") nor "cannot reach
    Google Cloud" (Firestore's own refusal of a negative limit)."""
    for args in (
        ("status", "a/b"),
        ("status", ""),
        ("batch", "a/b"),
        ("batch", ""),
        ("outcomes", "--since", "99999999d"),
        ("outcomes", "--since", "1h", "--limit", "-1"),
        ("list", "--state", "SENT", "--limit", "0"),
        ("replay", "--max", "0", "--dry-run"),
    ):
        run = cli(*args)
        assert (run.returncode, "usage:" in run.stderr) == (2, True), (args, run.stderr[-300:])
        assert "Traceback" not in run.stderr and "cannot reach" not in run.stderr, (args, run.stderr[-300:])
