"""The entry points of main.py, counted: what bench.cost serves instead of main.py.

    functions-framework --source bench/counted.py --target revoke_expired   (BENCH_COUNTS_DIR set)

Each entry point is main's own, called unchanged; around it, the generated
Google clients every function uses are wrapped at class level, so each call
the functions make is counted on its way out, as the services bill it:

- Firestore (cloud.google.com/firestore/pricing): a document read for each
  document a lookup returns (`batch_get_documents`; an absent document is
  counted too, the worst case), for each document a query returns, and one
  read for a query that returns none (the pricing page's minimum charge);
  an aggregation (`count()`) is counted as one read; a write for each write
  in a commit. Round trips (commits, lookups, queries) are counted besides.
- Pub/Sub: Publish requests and the messages in them, per topic, counted at
  functions.pubsub.publish_batch (every publish goes through it, on the
  client's gRPC channel rather than the client's `publish` method).
- Invocations of each entry point.

After each invocation the process writes its totals to
`$BENCH_COUNTS_DIR/<pid>.json`; `totals()` adds up every process's file.
"""

import collections
import functools
import json
import os
import threading
from pathlib import Path

import functions_framework
from google.cloud.firestore_v1.services.firestore.client import FirestoreClient

import main
from functions import pubsub

COUNTS: collections.Counter = collections.Counter()
_lock = threading.Lock()


def count(**amounts: int) -> None:
    with _lock:
        COUNTS.update(amounts)


def _dump() -> None:
    folder = os.environ.get("BENCH_COUNTS_DIR")
    if not folder:
        return
    with _lock:
        path = Path(folder) / f"{os.getpid()}.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(COUNTS))
        temporary.replace(path)


def totals(folder: Path) -> collections.Counter:
    """Every process's counts in `folder`, added up."""
    result: collections.Counter = collections.Counter()
    for path in Path(folder).glob("*.json"):
        result.update(json.loads(path.read_text()))
    return result


def _stream(method, counter):
    """Wraps a server-streaming client method: `counter(response)` for each response."""

    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        for response in method(self, *args, **kwargs):
            counter(response)
            yield response

    return wrapped


def _found(response) -> None:
    count(firestore_reads=1 if response._pb.HasField("found") or response._pb.HasField("missing") else 0)


def _query_stream(method):
    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        returned = 0
        for response in method(self, *args, **kwargs):
            returned += response._pb.HasField("document")
            yield response
        count(firestore_queries=1, firestore_reads=max(1, returned), firestore_empty_queries=int(returned == 0))

    return wrapped


def _commit(method):
    @functools.wraps(method)
    def wrapped(self, *args, request=None, **kwargs):
        count(firestore_commits=1, firestore_writes=len((request or {}).get("writes", ())))
        return method(self, *args, request=request, **kwargs)

    return wrapped


def _lookup(method):
    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        count(firestore_lookups=1)
        yield from _stream(method, _found)(self, *args, **kwargs)

    return wrapped


def _aggregation(method):
    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        count(firestore_queries=1, firestore_reads=1)
        return method(self, *args, **kwargs)

    return wrapped


def _publish(function):
    @functools.wraps(function)
    def wrapped(topic, messages, *args, **kwargs):
        calls = -(-len(messages) // pubsub.MAX_PER_CALL)
        count(
            **{
                "pubsub_publish_requests": calls,
                "pubsub_messages": len(messages),
                f"pubsub_messages.{topic}": len(messages),
            }
        )
        return function(topic, messages, *args, **kwargs)

    return wrapped


FirestoreClient.batch_get_documents = _lookup(FirestoreClient.batch_get_documents)
FirestoreClient.run_query = _query_stream(FirestoreClient.run_query)
FirestoreClient.run_aggregation_query = _aggregation(FirestoreClient.run_aggregation_query)
FirestoreClient.commit = _commit(FirestoreClient.commit)
pubsub.publish_batch = _publish(pubsub.publish_batch)


def _counted(entry):
    @functools.wraps(entry)
    def invoked(argument):
        try:
            return entry(argument)
        finally:
            count(**{f"invocations.{entry.__name__}": 1})
            _dump()

    return invoked


receive_webhook = functions_framework.http(_counted(main.receive_webhook))
send_message = functions_framework.http(_counted(main.send_message))
revoke_expired = functions_framework.http(_counted(main.revoke_expired))
send_fallbacks = functions_framework.http(_counted(main.send_fallbacks))
track_delivery = functions_framework.cloud_event(_counted(main.track_delivery))
record_inbound = functions_framework.cloud_event(_counted(main.record_inbound))
process_due_work = functions_framework.http(_counted(main.process_due_work))
