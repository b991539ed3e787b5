"""What every Pub/Sub subscriber does around its own work.

Return acknowledges, raise makes Pub/Sub redeliver. An event that can never
be processed is published to the dead-letter topic with its reason and then
acknowledged, so poison never loops: bytes that are not an RBM event, an event
missing what its handler needs (PoisonError), and an event Firestore can never
store (store.UnstorableError: an id that cannot be a document id, text that is
not valid Unicode where it cannot be repaired, a document over Firestore's
limits), whichever subscriber meets it, on its first delivery. Kinds a subscriber does not handle are
acknowledged without action: production subscriptions filter them out, but
the Pub/Sub emulator ignores filters.
"""

import base64
import binascii
from collections.abc import Callable
from typing import Any

from cloudevents.http import CloudEvent

from functions import config, events, logs, pubsub, store


class PoisonError(ValueError):
    """The event can never be processed; retrying would not help."""


def _dead_letter(data: bytes, attributes: dict[str, Any], reason: str, subscriber: str) -> None:
    pubsub.publish(
        config.dead_letter_topic(),
        data,
        attributes | {"dead_letter_reason": reason[:1000], "dead_letter_subscriber": subscriber},
    )
    logs.error(
        f"event dead-lettered: {reason}",
        event="event_dead_lettered",
        subscriber=subscriber,
        reason=reason,
        **attributes,
    )


def run(
    cloud_event: CloudEvent,
    subscriber: str,
    handles: Callable[[events.Event], bool],
    process: Callable[[events.Event], None],
) -> None:
    """Decodes the pushed Pub/Sub message and gives it to `process` if `handles` it."""
    message = (cloud_event.data or {}).get("message") or {}
    attributes = {k: v for k, v in (message.get("attributes") or {}).items() if isinstance(v, str)}
    raw = message.get("data") or ""
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError, TypeError):
        return _dead_letter(str(raw).encode(), attributes, "message data is not base64", subscriber)
    try:
        event = events.decode(data)
        if not handles(event):
            logs.debug("event kind not handled here; acknowledged", subscriber=subscriber, **event.attributes())
            return
        process(event)
    except (events.EventError, PoisonError, store.UnstorableError) as exc:
        _dead_letter(data, attributes, str(exc), subscriber)
