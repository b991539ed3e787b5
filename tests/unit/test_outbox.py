"""The republisher's promise to the scheduled run it starts: it never raises, so an
outbox document that is not an outcome event cannot stop revoke_expired's sweep, nor
the events behind it."""

from datetime import UTC, datetime

from functions import outbox
from functions.outcomes import Channel, Fate, OutcomeEvent

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
GOOD = OutcomeEvent("m-1", 1, "SENT", Channel.RCS, Fate.PENDING, False, "a@rbm.goog", "+447700900001", T0)


class Snapshot:
    def __init__(self, doc_id, doc):
        self.id, self.doc = doc_id, doc

    def to_dict(self):
        return self.doc


class Query:
    """The outbox query: every filter, order and limit returns it; `get` the snapshots."""

    def __init__(self, snapshots):
        self.snapshots = snapshots

    def where(self, **_):
        return self

    def order_by(self, *_):
        return self

    def limit(self, *_):
        return self

    def get(self, **_):
        return self.snapshots


def test_a_document_that_is_not_an_event_is_skipped_and_the_rest_republished(monkeypatch):
    snapshots = [Snapshot("bad:1", {"message_id": "bad"}), Snapshot("m-1:1", GOOD.to_doc())]
    published = []
    monkeypatch.setattr(outbox, "collection", lambda: Query(snapshots))
    monkeypatch.setattr(outbox, "_publish", lambda events: published.extend(events) or False)
    assert outbox.republish(T0) == 0  # the publish "failed": nothing marked, nothing raised
    assert published == [GOOD]
