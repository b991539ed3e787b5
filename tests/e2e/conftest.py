"""One local stack for the end-to-end tests, on the session's emulators.

Module-scoped: its scheduler must be gone before other tests run sweeps of
their own on the same Firestore."""

import pytest

from local.stack import Stack

# Local time runs fast: a scheduled pass every second, leases and backoffs of a second.
# A queue's task makes one RBM try (rbm.client(paced)), so each revoke attempt is one call:
# with 3 in 10 failing, 5 attempts leave about one message in 400 unrevoked, and a
# time-sensitive message whose revokes all fail gets its SMS about 8 s after its deadline.
SETTINGS = {
    "LEASE_SECONDS": "5",
    "RETRY_BACKOFF_SECONDS": "0.5",
    "REVOKE_MAX_ATTEMPTS": "5",
    "FALLBACK_MAX_ATTEMPTS": "8",
    "RBM_RETRY_SECONDS": "0.5",
}


@pytest.fixture(scope="module")
def stack(pubsub_emulator, firestore_emulator, tmp_path_factory):
    with Stack(
        tmp_path_factory.mktemp("stack"),
        period=1.0,
        settings=SETTINGS,
        simulator_options={"senders": 4, "retry_cap": 2.0},
        pubsub_host=pubsub_emulator,
        firestore_host=firestore_emulator,
    ) as running:
        yield running


@pytest.fixture
def simulator(stack):
    """The simulator, with every fault switched off again after the test."""
    yield stack.rbm
    stack.rbm.duplicate_all = stack.rbm.shuffle = False
    stack.rbm.fail_share("revoke", 0.0)
    stack.sms.fail_share(0.0)
