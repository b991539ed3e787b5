"""record_inbound: user messages, typing and (un)subscribes → the conversation."""

from google.api_core import exceptions

from functions import config, logs, store, subscriber
from functions.events import CONTENT_FIELDS, Event, Kind
from functions.model import Conversation, retention
from functions.transitions import conversation_activity, conversation_subscription, conversation_typing

_USER_EVENTS = {"IS_TYPING", "SUBSCRIBE", "UNSUBSCRIBE"}


def _handles(event: Event) -> bool:
    return event.kind is Kind.USER_MESSAGE or (event.kind is Kind.USER_EVENT and event.event_type in _USER_EVENTS)


def _store_message(event: Event, agent_id: str) -> bool:
    """The user message below its conversation, both in one commit; False for a duplicate."""
    conversation = store.conversation_ref(agent_id, event.phone)
    message = conversation.collection("messages").document(event.dedupe_id)
    at = event.time or store.now()
    for _ in range(store.ATTEMPTS):
        snapshots = {s.reference.path: s for s in store.client().get_all([conversation, message])}
        if snapshots[message.path].exists:
            return False
        snapshot = snapshots[conversation.path]
        current = Conversation.from_doc(snapshot.to_dict()) if snapshot.exists else Conversation(agent_id, event.phone)
        batch = store.client().batch()
        store.stage(batch, conversation, snapshot, store.stamped(conversation_activity(current, at).to_doc(), store.now()))
        content = {field: event.raw[field] for field in CONTENT_FIELDS if field in event.raw}
        batch.create(message, {
            "message_id": event.dedupe_id,
            "agent_id": agent_id,
            "send_time": at,
            "content_type": event.content_type,
            **content,
            "received_at": store.now(),
            "expire_at": retention(store.now()),
        })
        try:
            batch.commit()
            return True
        except (exceptions.FailedPrecondition, exceptions.Conflict, exceptions.AlreadyExists):
            continue
    raise store.ContentionError(f"{conversation.path}: still contended")


def _record(event: Event) -> None:
    agent_id = event.agent_id or config.agent_id()
    if not event.phone or not agent_id or not event.dedupe_id:
        raise subscriber.PoisonError(f"{event.kind} without senderPhoneNumber, agentId or id")
    if event.kind is Kind.USER_MESSAGE:
        stored = _store_message(event, agent_id)
        logs.info("user message recorded" if stored else "duplicate user message ignored",
                  event="user_message", phone=event.phone, **event.attributes())
        return
    at = event.time or store.now()
    if event.event_type == "IS_TYPING":
        change = lambda c: conversation_typing(c, at)  # noqa: E731
    else:
        change = lambda c: conversation_subscription(c, event.event_type == "UNSUBSCRIBE", at)  # noqa: E731
    ref = store.conversation_ref(agent_id, event.phone)
    conversation = store.update(ref, Conversation, lambda c: change(c or Conversation(agent_id, event.phone)))
    logs.info(f"{event.event_type} recorded", event=f"user_{event.event_type.lower()}", phone=event.phone,
              opted_out=conversation.opted_out, **event.attributes())


def handle(cloud_event) -> None:
    subscriber.run(cloud_event, "record_inbound", _handles, _record)
