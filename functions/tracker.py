"""track_delivery: delivery receipts and server events → the message document.

An event about a message rbm-relay did not send (the partner webhook carries every
sender's) gets a minimal `tracked: false` record: its state is kept, and nothing
ever acts on it (`transitions.learn` never makes it due).
"""

from functions import logs, store, subscriber, work_items
from functions.events import Event, Kind
from functions.model import Fallback, Message
from functions.transitions import EVENT_FACTS, learn


def _handles(event: Event) -> bool:
    return event.kind in (Kind.USER_EVENT, Kind.SERVER_EVENT) and event.event_type in EVENT_FACTS


def _record(event: Event) -> None:
    if not event.message_id or not event.phone or not event.dedupe_id:
        raise subscriber.PoisonError(f"{event.event_type} without messageId, phone or eventId")
    fact, at = EVENT_FACTS[event.event_type], event.time or store.now()

    was_due = False

    def change(current: Message | None) -> Message:
        nonlocal was_due
        message = current or Message(event.message_id, event.phone, event.agent_id, tracked=False)
        was_due = message.fallback is Fallback.DUE
        return learn(message, fact, at, event.dedupe_id)

    message = store.update_message(event.message_id, change)
    if not was_due:
        work_items.fallback_due(message)  # made due by this event (e.g. TTL_EXPIRATION_REVOKED): its SMS now
    logs.info(
        f"{event.event_type} recorded",
        event=f"receipt_{event.event_type.lower()}",
        state=message.state.value,
        fallback=message.fallback.value,
        tracked=message.tracked,
        **event.attributes(),
    )


def handle(cloud_event) -> None:
    subscriber.run(cloud_event, "track_delivery", _handles, _record)
