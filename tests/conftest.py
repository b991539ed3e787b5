"""Fixtures that run the real backends: Google's emulators and each function
as its own functions-framework process (see local/processes.py)."""

import contextlib
import os
import uuid
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import settings

from local.processes import (
    PROJECT,
    Emulator,
    FunctionProcess,
    create_pull_subscription,
    create_topic,
    reset_firestore,
)

TESTS_DIR = Path(__file__).resolve().parent
# Conversation ids are keyed as in production; the function processes inherit it, and
# the tests' own reads of conversations key them the same.
os.environ.setdefault("CONVERSATION_ID_KEY", "test-conversation-id-key")
MARKED_DIRS = ("integration", "e2e")
# Property tests check what holds, never how fast: under coverage on a shared 2-core
# machine one example can take far beyond hypothesis's default 200 ms deadline.
settings.register_profile("suite", deadline=None)
settings.load_profile("suite")
STARTED: dict[str, Emulator] = {}  # the emulators this session started, by kind


def pytest_collection_modifyitems(items):
    """Mark tests by directory, so `-m "not integration and not e2e"` is the fast suite."""
    for item in items:
        if item.path.is_relative_to(TESTS_DIR):
            folder = item.path.relative_to(TESTS_DIR).parts[0]
            if folder in MARKED_DIRS:
                item.add_marker(folder)


def _emulator(kind, var, tmp_path_factory):
    """Reuse the emulator named by `var` if set, else start one; stop only
    what was started here."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
        if os.environ.get(var):
            yield os.environ[var]
            return
        with Emulator(kind, tmp_path_factory.mktemp(kind), PROJECT) as emulator:
            env.setenv(var, emulator.host)
            STARTED[kind] = emulator
            yield emulator.host
            del STARTED[kind]


@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory):
    """Host:port of the Pub/Sub emulator; PUBSUB_EMULATOR_HOST is set."""
    yield from _emulator("pubsub", "PUBSUB_EMULATOR_HOST", tmp_path_factory)


@pytest.fixture(scope="session")
def firestore_emulator(tmp_path_factory):
    """Host:port of the Firestore emulator; FIRESTORE_EMULATOR_HOST is set."""
    yield from _emulator("firestore", "FIRESTORE_EMULATOR_HOST", tmp_path_factory)


@pytest.fixture
def firestore(firestore_emulator):
    """The Firestore emulator, emptied before the test."""
    reset_firestore(firestore_emulator, PROJECT)
    return firestore_emulator


@pytest.fixture
def firestore_outage(firestore):
    """`with firestore_outage(): ...` freezes the session's Firestore emulator for
    the block (its data is kept) and always brings it back."""
    if "firestore" not in STARTED:
        pytest.skip("the Firestore emulator was not started by this session, so it can't be paused")
    emulator = STARTED["firestore"]

    @contextlib.contextmanager
    def outage():
        emulator.pause()
        try:
            yield
        finally:
            emulator.resume()

    return outage


@pytest.fixture
def functions(tmp_path, pubsub_emulator):
    """Start an entry point: `functions("receive_webhook", env={...})`, on `port` if given
    (a function that must know its own URL).

    The process gets PROJECT and the hosts of the emulators this session runs
    (always Pub/Sub's: every change of a message publishes its outcome events);
    `env` overrides them. Each log's tail is printed at teardown, which pytest
    shows only when the test failed.
    """
    started = []

    def start(target, env=None, source="main.py", port=None):
        full_env = {"GOOGLE_CLOUD_PROJECT": PROJECT}
        full_env.update(
            {var: os.environ[var] for var in ("PUBSUB_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST") if os.environ.get(var)}
        )
        full_env.update(env or {})
        log_path = tmp_path / f"{target}-{len(started)}.log"
        function = FunctionProcess(target, full_env, port=port, source=source, log_path=log_path)
        started.append(function)
        return function.start()

    yield start
    for function in started:
        function.stop()
        print(f"--- {function.log_path.name} (tail) ---")
        print("\n".join(function.read_log().splitlines()[-50:]))


class Topic(NamedTuple):
    topic: str
    subscription: str


@pytest.fixture
def topic(pubsub_emulator):
    """Create a uniquely named topic with a pull subscription: `t = topic("events")`."""

    def make(prefix="topic"):
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        create_topic(PROJECT, name)
        create_pull_subscription(PROJECT, name, f"{name}-pull")
        return Topic(name, f"{name}-pull")

    return make
