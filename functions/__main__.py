"""Operator commands.

  python -m functions status MESSAGE_ID          one message's document as JSON, with its outcome events
                                                 by seq under "outcomes" (exit 1: no such message)
  python -m functions outcomes --since 1h [--fate sms]   outcome events since a time (RFC 3339) or
                                                 a duration ago (30m, 2h, 1d), one JSON per line
  python -m functions list --fallback UNKNOWN    messages in a delivery or fallback state, one JSON per line
  python -m functions replay [--dry-run]         dead letters back onto the events topic
  python -m functions erase +E164 [--agent ID]   a number's data removed; an opt-out stays, as a keyed marker
  python -m functions migrate-conversations      conversations under unkeyed ids moved to keyed ids
  python -m functions batch ID [--cancel]        a batch's counts by state, fallback and fate, its rate of
                                                 creates and time left; --cancel withdraws the messages whose
                                                 create was never attempted (FAILED "batch cancelled", SMS
                                                 CANCELLED)

They use the environment the functions use: GOOGLE_CLOUD_PROJECT, and the
emulator hosts locally.
"""

import argparse
import json
import os
import re
import socket
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from google.api_core import exceptions
from google.auth import exceptions as auth_exceptions

from functions import config
from functions.model import Fallback, State
from functions.outcomes import Fate, OutcomeEvent

INTERNAL_ATTRIBUTES = ("dead_letter_", "CloudPubSubDeadLetter")


def _shown(event: OutcomeEvent) -> dict[str, Any]:
    """An outcome event as the operator commands print it: without the phone number."""
    return {k: v for k, v in event.data().items() if k != "phone"}


def status(args: argparse.Namespace) -> int:
    from functions import outbox, store

    message = store.get_message(args.message_id)
    if message is None:
        print(f"no message {args.message_id}", file=sys.stderr)
        return 1
    history = [_shown(e) for e in outbox.history(message)]
    print(json.dumps(message.to_doc() | {"outcomes": history}, default=str, indent=2))
    return 0


DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def e164(value: str) -> str:
    """A number as the documents hold it, E.164 (`+14155550123`); any other form would
    match nothing, and zero counts would read as an erasure done."""
    from functions.outbound import E164

    if not E164.fullmatch(value):
        raise argparse.ArgumentTypeError("the number must be E.164, like +14155550123 (no spaces)")
    return value


def batch_id(value: str) -> str:
    """A batch id as send_batch takes it (batch_request.BATCH_ID): no other names a batch,
    and some (`a/b`) are not even a Firestore document id."""
    from functions.batch_request import BATCH_ID, BATCH_ID_RULE

    if not BATCH_ID.fullmatch(value):
        raise argparse.ArgumentTypeError(f"a batch id is {BATCH_ID_RULE}")
    return value


def document_id(value: str) -> str:
    """A message id that can be a Firestore document id (store.document_id); any other names
    no document, and reading it would fail in the client rather than answer "none"."""
    from functions import store

    try:
        return store.document_id(value, "the id")
    except store.UnstorableError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive(value: str) -> int:
    """A count of at least 1 (Firestore refuses a negative limit, and 0 would list nothing)."""
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of at least 1")
    return int(value)


def since(value: str) -> datetime:
    """An RFC 3339 time with its offset, or a duration ago (`90s`, `30m`, `2h`, `1d`)."""
    if match := DURATION.fullmatch(value):
        try:
            return datetime.now(UTC) - timedelta(seconds=float(match[1]) * UNITS[match[2]])
        except OverflowError:
            raise argparse.ArgumentTypeError(f"{value!r} reaches back before the year 1") from None
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is neither an RFC 3339 time nor a duration like 30m") from None
    if at.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{value!r} has no offset (add Z or +00:00)")
    return at


def outcomes(args: argparse.Namespace) -> int:
    from functions import outbox

    for event in outbox.recent(args.since, args.fate, args.limit):
        print(json.dumps(_shown(event)))
    return 0


def list_messages(args: argparse.Namespace) -> int:
    from google.cloud.firestore_v1.base_query import FieldFilter

    from functions import store
    from functions.model import Message

    field, value = ("state", args.state) if args.state else ("fallback", args.fallback)
    for snapshot in store.query(store.messages().where(filter=FieldFilter(field, "==", value)).limit(args.limit)):
        m = Message.from_doc(store.found(snapshot))
        print(
            json.dumps(
                {
                    "message_id": m.message_id,
                    "state": m.state.value,
                    "fallback": m.fallback.value,
                    "agent_id": m.agent_id,
                    "updated_at": m.updated_at,
                    "last_error": m.last_error,
                },
                default=str,
            )
        )
    return 0


def replay(args: argparse.Namespace) -> int:
    """Moves dead letters back onto the events topic, without the attributes the
    dead-lettering added; acknowledges each only once it is republished."""
    import google.cloud.pubsub_v1 as pubsub_v1

    subscriber, publisher = pubsub_v1.SubscriberClient(), pubsub_v1.PublisherClient()
    subscription = subscriber.subscription_path(config.project(), args.subscription)
    topic = publisher.topic_path(config.project(), config.events_topic())
    moved = 0
    while moved < args.max:
        response = subscriber.pull(subscription=subscription, max_messages=min(100, args.max - moved), timeout=10)
        if not response.received_messages:
            break
        for received in response.received_messages:
            message = received.message
            attributes = {k: v for k, v in message.attributes.items() if not k.startswith(INTERNAL_ATTRIBUTES)}
            print(
                json.dumps(
                    {
                        "pubsub_id": message.message_id,
                        "reason": message.attributes.get("dead_letter_reason"),
                        "attributes": attributes,
                        "action": "would replay" if args.dry_run else "replayed",
                    }
                )
            )
            if not args.dry_run:
                publisher.publish(topic, message.data, **attributes).result(timeout=30)
        ack_ids = [r.ack_id for r in response.received_messages]
        if args.dry_run:  # leave them for later: make them available again at once
            subscriber.modify_ack_deadline(subscription=subscription, ack_ids=ack_ids, ack_deadline_seconds=0)
            moved += len(ack_ids)
            break
        subscriber.acknowledge(subscription=subscription, ack_ids=ack_ids)
        moved += len(ack_ids)
    print(f"{'found' if args.dry_run else 'replayed'} {moved} dead letter(s)", file=sys.stderr)
    return 0


def erase(args: argparse.Namespace) -> int:
    """Honours an erasure request: see conversations.erase. Prints the counts as JSON."""
    from functions import conversations

    print(json.dumps(conversations.erase(args.phone, args.agent)))
    return 0


def migrate_conversations(args: argparse.Namespace) -> int:
    from functions import conversations

    if not config.conversation_id_key():
        print("CONVERSATION_ID_KEY is not set: conversation ids are not keyed, nothing to move", file=sys.stderr)
        return 1
    print(json.dumps({"moved": conversations.migrate()}))
    return 0


def batch(args: argparse.Namespace) -> int:
    from functions import batches, store

    stored = batches.get(args.batch_id)
    if stored is None:
        print(f"no batch {args.batch_id}", file=sys.stderr)
        return 1
    shown: dict[str, Any] = {"batch_id": stored.batch_id, "size": stored.size, "accepted": stored.accepted}
    shown |= {"rejected": sum(len(r["indexes"]) for r in stored.rejections), "stored": stored.stored}
    shown["released"] = stored.released_at is not None  # false: no 202 yet (its call running, failed, or cut short)
    shown |= {"precheck": stored.precheck, "unreachable": stored.unreachable}
    shown["cancelled_at"] = stored.cancelled_at.isoformat() if stored.cancelled_at else None
    if args.cancel:  # a create in flight finishes within its lease: wait that long for it
        shown["cancel"] = batches.cancel(args.batch_id, config.lease_seconds())
    print(json.dumps(shown | batches.progress(args.batch_id, store.now()), indent=2))
    return 0


def _check_emulators() -> None:
    """Fails at once on an emulator that is not listening; the clients would retry for minutes."""
    for var in ("FIRESTORE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST"):
        host = os.environ.get(var)
        if host:
            name, _, port = host.rpartition(":")
            socket.create_connection((name, int(port)), timeout=2).close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m functions", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("status", help="print a message's document as JSON; exit 1 if it does not exist")
    show.add_argument("message_id", type=document_id)
    show.set_defaults(run=status)
    listing = commands.add_parser("list", help="list messages by delivery or fallback state")
    which = listing.add_mutually_exclusive_group(required=True)
    which.add_argument("--state", choices=[s.value for s in State])
    which.add_argument("--fallback", choices=[f.value for f in Fallback])
    listing.add_argument("--limit", type=positive, default=100)
    listing.set_defaults(run=list_messages)
    again = commands.add_parser("replay", help="republish dead letters onto the events topic")
    again.add_argument(
        "--subscription", default="rbm-events-dead-letter-inspect", help="the dead-letter inspect subscription"
    )
    again.add_argument("--max", type=positive, default=1000, help="replay at most this many")
    again.add_argument("--dry-run", action="store_true", help="show what would be replayed; change nothing")
    again.set_defaults(run=replay)
    forget = commands.add_parser(
        "erase", help="remove a number's messages and conversations; keep only a keyed opt-out marker"
    )
    forget.add_argument("phone", type=e164, help="the number, E.164")
    forget.add_argument("--agent", help="only this agent's data (either form of its id); default: every agent")
    forget.set_defaults(run=erase)
    move = commands.add_parser(
        "migrate-conversations", help="move conversations stored under unkeyed ids to their keyed ids"
    )
    move.set_defaults(run=migrate_conversations)
    recent = commands.add_parser("outcomes", help="list recent outcome events, oldest first")
    recent.add_argument("--since", type=since, required=True, help="RFC 3339 time, or a duration ago: 30m, 2h, 1d")
    recent.add_argument("--fate", choices=[f.value for f in Fate])
    recent.add_argument("--limit", type=positive, default=1000)
    recent.set_defaults(run=outcomes)
    progress = commands.add_parser("batch", help="a batch's progress; --cancel withdraws what was never tried")
    progress.add_argument("batch_id", type=batch_id)
    progress.add_argument(
        "--cancel", action="store_true", help="withdraw the messages whose create was never attempted"
    )
    progress.set_defaults(run=batch)
    args = parser.parse_args(argv)
    try:
        _check_emulators()
        code: int = args.run(args)
        return code
    except (exceptions.GoogleAPIError, auth_exceptions.GoogleAuthError, OSError) as exc:
        print(
            f"cannot reach Google Cloud ({type(exc).__name__}: {str(exc)[:200]}); "
            "check GOOGLE_CLOUD_PROJECT, credentials, or the emulator hosts",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
