"""track_delivery's Firestore work per receipt, next to blind writes.

In-process, against the Firestore emulator: threads call the tracker's
per-event work (`functions.track_delivery._record`) on parsed receipts, so only
Firestore's cost is measured (no Pub/Sub push, no HTTP). The baseline is the
same threads blindly `set()`ting one document per event, twice: the whole
message document the tracker would write (same bytes, no read, no
precondition), and a two-field document. Round trips are counted at the
Firestore client's generated API methods.

The tracker's work includes its outcome events (functions/outbox.py): the
outbox documents in the same commit, the publish to the outcomes topic (on the
Pub/Sub emulator) and the marks of earlier events, carried by that commit.
`BEFORE` is the same work with outcome events switched off in this process only
(store._with_outcomes answering none), the code as it was before them, measured
in the same run. An unmeasured pass of the tracker first warms the emulators,
whose first requests are slow whichever way is measured first.

Two workloads, both over messages that send_message recorded (state SENT):
- distinct: one DELIVERED receipt per message;
- repeated: DELIVERED and READ per message, each delivered twice (as Pub/Sub
  redelivers), shuffled, so threads meet on the same documents.

    python -m bench.tracker [--threads 8] [--events 3000]
"""

import argparse
import contextlib
import dataclasses
import os
import random
import threading
import time
from collections import Counter
from datetime import timedelta
from unittest import mock

from bench.common import PROJECT, Run, accepted, check, load_average, parallel, seed, table
from local.processes import create_topic, reset_firestore

AGENT = "bench@rbm.goog"
RPCS = ("batch_get_documents", "commit", "begin_transaction", "rollback", "run_query")
FULL, SMALL = "blind set(), full doc", "blind set(), 2 fields"
BEFORE = "track_delivery, no outcome events"


class RpcCounter:
    """Counts calls to the Firestore client's RPC methods, by method name."""

    def __init__(self, client):
        api = client._firestore_api
        self._lock, self.counts = threading.Lock(), Counter()
        for name in RPCS:
            setattr(api, name, self._counting(name, getattr(api, name)))

    def _counting(self, name, method):
        def call(*args, **kwargs):
            with self._lock:
                self.counts[name] += 1
            return method(*args, **kwargs)

        return call

    def take(self) -> Counter:
        """The counts since the last take."""
        with self._lock:
            counts, self.counts = self.counts, Counter()
        return counts


def receipts(messages: int, kinds: tuple[str, ...], copies: int) -> list[dict]:
    """RBM user events: each kind for each message, each `copies` times, shuffled."""
    payloads = [
        {
            "senderPhoneNumber": phone(i),
            "eventType": kind,
            "eventId": f"{kind.lower()}-{i}",
            "messageId": f"msg-{i:05d}",
            "sendTime": f"2026-01-01T00:00:{1 + n:02d}.5Z",
            "agentId": AGENT,
        }
        for i in range(messages)
        for n, kind in enumerate(kinds)
    ] * copies
    random.Random(7).shuffle(payloads)
    return payloads


def phone(i: int) -> str:
    return f"+4477009{i:05d}"


def recorded(count: int):
    """Messages as send_message leaves them once RBM accepted them."""
    from functions import store

    later = store.now() + timedelta(hours=1)
    return [accepted(f"msg-{i:05d}", phone(i), AGENT, later, i) for i in range(count)]


def drive(work, items, threads: int) -> tuple[float, int]:
    """Seconds to run `work` over `items` on `threads` threads, and how many raised."""

    def safely(item) -> bool:
        try:
            work(item)
            return True
        except Exception:  # counted and reported, never hidden
            return False

    started = time.monotonic()
    done = parallel(safely, items, threads)
    return time.monotonic() - started, done.count(False)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tracker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--events", type=int, default=3000, help="receipts per workload")
    args = parser.parse_args(argv)
    load_before = load_average()
    os.environ["LOG_LEVEL"] = "WARNING"  # one INFO line per event would flood the table; logging is not Firestore

    with Run("tracker") as run:
        host = run.emulator("firestore")
        run.emulator("pubsub")
        from functions import config, events, outbox, store, track_delivery
        from functions.model import State

        create_topic(PROJECT, config.outcomes_topic())

        def switched_off():
            """This process's store as it was before outcome events: none numbered, staged or published."""
            return mock.patch.object(store, "_with_outcomes", lambda current, new, at: (new, []))

        # The emulators (JVMs) answer their first requests slowly while they compile, and
        # whichever way ran first paid for it: one unmeasured pass of the tracker first.
        seed(recorded(args.events))
        drive(track_delivery._record, [events.parse(p) for p in receipts(args.events, ("DELIVERED",), 1)], args.threads)
        counter = RpcCounter(store.client())
        workloads = {
            "distinct": (args.events, receipts(args.events, ("DELIVERED",), 1)),
            "repeated": (args.events // 4, receipts(args.events // 4, ("DELIVERED", "READ"), 2)),
        }

        def blind_set(event) -> None:
            store.messages().document(event.message_id).set({"state": event.event_type, "updated_at": store.now()})

        rows, results = [], {"threads": args.threads, "workloads": {}}
        for name, (messages, payloads) in workloads.items():
            parsed = [events.parse(p) for p in payloads]
            documents = {m.message_id: m for m in recorded(messages)}

            def blind_full(event, documents=documents) -> None:
                m = dataclasses.replace(
                    documents[event.message_id], state=State(event.event_type), applied=[event.dedupe_id]
                )
                store.messages().document(event.message_id).set(store.stamped(m.to_doc(), store.now()))

            measured = {}
            ways = {
                "track_delivery": track_delivery._record,
                BEFORE: track_delivery._record,
                FULL: blind_full,
                SMALL: blind_set,
            }
            for way, work in ways.items():
                reset_firestore(host, PROJECT)
                outbox.forget_marks()  # those of the previous way: their documents are gone
                seed(documents.values())
                counter.take()
                cpu = time.process_time()
                with switched_off() if way == BEFORE else contextlib.nullcontext():
                    seconds, errors = drive(work, parsed, args.threads)
                cpu, rpcs = time.process_time() - cpu, counter.take()
                states = Counter(s.get("state") for s in store.messages().select(["state"]).stream())
                counter.take()
                n = len(parsed)
                measured[way] = {
                    "events": n,
                    "messages": messages,
                    "seconds": round(seconds, 2),
                    "events_per_s": round(n / seconds, 1),
                    "client_cpu_ms_per_event": round(1000 * cpu / n, 2),
                    "errors": errors,
                    "rpcs": dict(rpcs),
                    "final_states": dict(states),
                }
                rows.append(
                    [
                        name,
                        way,
                        n,
                        messages,
                        seconds,
                        n / seconds,
                        1000 * cpu / n,
                        rpcs["batch_get_documents"] / n,
                        rpcs["commit"] / n,
                        rpcs["begin_transaction"] / n,
                        errors,
                        _states(states),
                    ]
                )
            rate = measured["track_delivery"]["events_per_s"]
            rpcs = measured["track_delivery"]["rpcs"]
            measured["verdicts"] = {
                f"rate vs {BEFORE}": check(rate / measured[BEFORE]["events_per_s"], 0.9, at_least=True),
                f"rate vs {FULL}": check(rate / measured[FULL]["events_per_s"], 0.6, at_least=True),
                f"rate vs {SMALL}": check(rate / measured[SMALL]["events_per_s"], 0.6, at_least=True),
                "reads per event": f"{rpcs.get('batch_get_documents', 0) / len(parsed):.2f} (target <= 1)",
                "commits per event": f"{rpcs.get('commit', 0) / len(parsed):.2f} (target <= 1)",
            }
            results["workloads"][name] = measured

        results["load_average"] = {"before": load_before, "after": load_average()}
        print(
            f"\n{args.threads} threads in one process, Firestore emulator; log lines below WARNING off;"
            " CPU ms/ev = this process's CPU (Python and gRPC) per event.\n"
            f"Machine load average before/after: {load_before:.2f}/{results['load_average']['after']:.2f}"
            f" ({os.cpu_count()} CPUs)"
        )
        table(
            "Receipts recorded per second and Firestore round trips per event",
            [
                "workload",
                "way",
                "events",
                "messages",
                "seconds",
                "events/s",
                "CPU ms/ev",
                "reads/ev",
                "commits/ev",
                "begin_tx/ev",
                "errors",
                "final states",
            ],
            rows,
        )
        table(
            "Against the targets",
            ["workload", "measure", "result"],
            [[w, k, v] for w, m in results["workloads"].items() for k, v in m["verdicts"].items()],
        )
        run.save(results)


def _states(states: Counter) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(states.items()))


if __name__ == "__main__":
    main()
