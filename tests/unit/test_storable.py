"""What Firestore can never store, found before a write; typed opt-out keywords. No I/O."""

import json
from types import SimpleNamespace

import pytest

from functions import record_inbound, store
from functions.transitions import Signal

REF = SimpleNamespace(path="rbm_conversations/0123456789abcdef0123456789abcdef/messages/m-1")
LONE = json.loads('"see you \\ud83d"')  # half an emoji, as json.loads accepts it


def nested(levels: int) -> dict:
    value = 1
    for _ in range(levels):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    "doc, reason",
    [
        ({"text": LONE}, "text is not valid Unicode"),
        ({"userFile": {"fileName": LONE}}, "userFile.fileName is not valid Unicode"),
        ({"m": {json.loads('"k\\udc00"'): 1}}, "a field name in m is not valid Unicode"),
        ({"m": {"__name__": 1}}, "reserves or refuses"),
        ({"m": {"": 1}}, "reserves or refuses"),
        ({"m": {"k" * 1501: 1}}, "field name over 1500 bytes"),
        ({"n": 2**63}, "integer outside 64 bits"),
        ({"a": [[1]]}, "array directly inside an array"),
        (nested(22), "deeper than 20 levels"),
        ({"text": "x" * 1_048_487}, "over Firestore's 1048487"),
        ({"a": "x" * 600_000, "b": "y" * 600_000}, "over Firestore's 1048576"),
        ({"m": {f"k{i}": 0 for i in range(80_000)}}, "over Firestore's 10484"),  # under 1 MiB as JSON, over as stored
    ],
)
def test_documents_firestore_refuses_are_unstorable_with_a_reason(doc, reason):
    with pytest.raises(store.UnstorableError, match=reason.replace(".", r"\.")):
        store.check(REF, doc)


def test_documents_within_the_limits_pass_unchanged():
    doc = {
        "text": "see you 😀",
        "a": [1, {"b": [2.5, None, True]}],
        "n": -(2**63),
        "m": nested(20),
        "x": "y" * 1_000_000,
    }
    assert store.check(REF, doc) is doc


@pytest.mark.parametrize("value", ["a/b", ".", "..", "__x__", "", "k" * 1501, LONE])
def test_ids_that_cannot_be_document_ids(value):
    with pytest.raises(store.UnstorableError, match="messageId"):
        store.document_id(value, "messageId")


def test_ids_that_can():
    for value in ("m-1", "...", "_x_", "__x", "a.b", "é" * 750):
        assert store.document_id(value) == value


def test_repair_replaces_lone_surrogates_only():
    content = {"text": LONE, "suggestionResponse": {"text": "ok 😀", "postbackData": [json.loads('"\\udc00x"')]}}
    assert store.repaired(content) == {
        "text": "see you \ufffd",
        "suggestionResponse": {"text": "ok 😀", "postbackData": ["\ufffdx"]},
    }


@pytest.mark.parametrize(
    "text, signals",
    [
        ("STOP", (Signal.OPT_OUT,)),
        ("  stop ", (Signal.OPT_OUT,)),
        ("Stop\n", (Signal.OPT_OUT,)),
        ("unsubscribe", (Signal.OPT_OUT,)),
        ("QUIT", (Signal.OPT_OUT,)),
        ("StopAll", (Signal.OPT_OUT,)),
        ("start", (Signal.OPT_IN,)),
        (" Yes ", (Signal.OPT_IN,)),
        ("UNSTOP", (Signal.OPT_IN,)),
        ("stop please", ()),
        ("please stop", ()),
        ("stopp", ()),
        ("", ()),
    ],
)
def test_typed_keywords_match_the_whole_text_ignoring_case_and_whitespace(text, signals):
    assert record_inbound.keyword_signals({"text": text}) == signals


def test_a_suggestion_reply_is_never_a_keyword():
    assert record_inbound.keyword_signals({"suggestionResponse": {"text": "Stop", "postbackData": "stop"}}) == ()


def test_keyword_lists_are_configurable_and_an_empty_list_disables(monkeypatch):
    monkeypatch.setenv("OPT_OUT_KEYWORDS", "arret, stop all")
    monkeypatch.setenv("OPT_IN_KEYWORDS", "")
    assert record_inbound.keyword_signals({"text": "ARRET"}) == (Signal.OPT_OUT,)
    assert record_inbound.keyword_signals({"text": "Stop  All"}) == (Signal.OPT_OUT,)
    assert record_inbound.keyword_signals({"text": "STOP"}) == ()
    assert record_inbound.keyword_signals({"text": "START"}) == ()
