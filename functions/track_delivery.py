"""track_delivery: delivery receipts and server events → the message document.

An event about a message rbm-relay did not send (the partner webhook carries every
sender's) gets a minimal `tracked: false` record: its state is kept, and nothing
ever acts on it (`transitions.learn` never makes it due).
"""

from cloudevents.http import CloudEvent

from functions import logs, store, subscriber
from functions.events import Event, Kind
from functions.model import Message
from functions.transitions import EVENT_FACTS, learn


def _handles(event: Event) -> bool:
    return event.kind in (Kind.USER_EVENT, Kind.SERVER_EVENT) and event.event_type in EVENT_FACTS


def _record(event: Event) -> None:
    message_id, phone, dedupe_id, event_type = event.message_id, event.phone, event.dedupe_id, event.event_type
    if not message_id or not phone or not dedupe_id or event_type is None:
        raise subscriber.PoisonError(f"{event_type} without messageId, phone or eventId")
    fact, at = EVENT_FACTS[event_type], event.time or store.now()

    def change(current: Message | None) -> Message:
        message = current or Message(message_id, phone, event.agent_id, tracked=False)
        return learn(message, fact, at, dedupe_id)

    message = store.update_message(message_id, change)
    logs.info(
        f"{event_type} recorded",
        event=f"receipt_{event_type.lower()}",
        state=message.state.value,
        fallback=message.fallback.value,
        tracked=message.tracked,
        **event.attributes(),
    )


def handle(cloud_event: CloudEvent) -> None:
    subscriber.run(cloud_event, "track_delivery", _handles, _record)
