"""The harness itself: real emulators and functions-framework servers come up,
talk to each other, and go away without leaving a process behind."""

import base64
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from google.cloud import firestore as firestore_client

from local.processes import PROJECT, Emulator, StartError, create_push_subscription, publish, pull_all, reset_firestore

SAMPLES = "tests/integration/samples/harness_samples.py"


def group_members(pgid):
    """Live (non-zombie) processes of a process group, as {pid: command line}."""
    members = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, _ppid, group = entry.joinpath("stat").read_text().rsplit(")", 1)[1].split()[:3]
            if int(group) == pgid and state != "Z":
                members[int(entry.name)] = entry.joinpath("cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (FileNotFoundError, ProcessLookupError):  # exited while we looked
            continue
    return members


def listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def wait_for(predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.parametrize("kind", ["pubsub", "firestore"])
def test_emulator_stop_kills_the_java_server(kind, tmp_path):
    emulator = Emulator(kind, tmp_path, PROJECT).start()
    pgid = emulator.pid
    try:
        members = group_members(pgid)
        assert any("java" in command for command in members.values()), members
        assert requests.get(f"http://{emulator.host}/", timeout=5).status_code == 200
    finally:
        emulator.stop()
    assert not listening(emulator.port)
    assert group_members(pgid) == {}


def test_function_serves_http_and_kill_stops_it(functions):
    function = functions("hello", source=SAMPLES)
    assert requests.get(function.url, params={"name": "relay"}, timeout=5).text == "hello relay"
    pgid = function.pid

    function.kill()
    assert not listening(function.port)
    assert group_members(pgid) == {}

    function.restart()
    assert requests.get(function.url, timeout=5).text == "hello world"


def test_function_records_the_time_it_spent_inside_requests_overlaps_once(functions):
    function = functions("hold", source=SAMPLES)
    started = time.time()
    with ThreadPoolExecutor(2) as pool:  # two requests of 1 s at once: one second of instance time
        assert list(pool.map(lambda _: requests.get(function.url, params={"seconds": 1}, timeout=10).text, "ab")) == [
            "held",
            "held",
        ]
    time.sleep(1.0)  # idle: not counted
    requests.get(function.url, params={"seconds": 0.5}, timeout=10)
    assert 1.5 <= function.request_seconds() < 2.5
    assert function.request_seconds(since=time.time()) == 0.0
    assert function.request_seconds(since=started - 60) == function.request_seconds()


def test_function_that_cannot_start_fails_with_its_log(functions):
    with pytest.raises(StartError, match="no_such_target"):
        functions("no_such_target", source=SAMPLES)


def test_firestore_reset_clears_documents(firestore):
    document = firestore_client.Client(project=PROJECT).collection("harness").document("doc")
    document.set({"written": True})
    assert document.get().exists

    reset_firestore(firestore, PROJECT)
    assert not document.get().exists


def test_push_subscription_delivers_a_cloud_event(functions, topic, tmp_path):
    output = tmp_path / "events.jsonl"
    function = functions("record_event", env={"SAMPLE_OUTPUT": str(output)}, source=SAMPLES)
    events = topic("events")
    create_push_subscription(
        PROJECT, events.topic, f"{events.topic}-push", f"{function.url}/projects/{PROJECT}/topics/{events.topic}"
    )

    message_id = publish(PROJECT, events.topic, b'{"hello": 1}', kind="demo")

    wait_for(output.exists)
    event = json.loads(output.read_text().splitlines()[0])
    assert event["attributes"]["source"] == f"//pubsub.googleapis.com/projects/{PROJECT}/topics/{events.topic}"
    assert event["attributes"]["type"] == "google.cloud.pubsub.topic.v1.messagePublished"
    message = event["data"]["message"]
    assert (message["messageId"], message["attributes"]) == (message_id, {"kind": "demo"})
    assert base64.b64decode(message["data"]) == b'{"hello": 1}'
    assert pull_all(PROJECT, events.subscription, 10, expect=1) == [(b'{"hello": 1}', {"kind": "demo"})]


def test_failing_push_ends_in_the_dead_letter_topic(functions, topic):
    function = functions("always_fail", source=SAMPLES)
    events, dead = topic("events"), topic("dead")
    create_push_subscription(
        PROJECT,
        events.topic,
        f"{events.topic}-push",
        f"{function.url}/projects/{PROJECT}/topics/{events.topic}",
        dead_letter_topic=dead.topic,
        max_delivery_attempts=5,
    )

    publish(PROJECT, events.topic, b"poison", kind="demo")

    [(data, attributes)] = pull_all(PROJECT, dead.subscription, 60, expect=1)
    assert data == b"poison"
    assert attributes["kind"] == "demo"
    assert attributes["CloudPubSubDeadLetterSourceDeliveryCount"] == "5"
