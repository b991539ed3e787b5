"""record_inbound: user messages, typing and (un)subscribes → the conversation.

A user message is stored below its conversation, and the conversation learns
from it, in one commit: the message document is the record that it was applied.
A user event is applied once per (eventId, phone): the conversation keeps the
ids of the events it applied.

Typed keywords: a user text message whose whole text is an opt-out keyword
(`OPT_OUT_KEYWORDS`) opts the user out of this agent exactly as UNSUBSCRIBE
does, an opt-in keyword (`OPT_IN_KEYWORDS`) back in as SUBSCRIBE does; the
message is stored all the same. A suggestion reply never counts: its text is
the label of a chip the agent offered ("Cancel my booking"), and its
postbackData is the agent's to act on.
"""

from typing import Any

from cloudevents.http import CloudEvent

from functions import config, conversations, logs, store, subscriber
from functions.events import CONTENT_FIELDS, Event, Kind
from functions.model import Conversation, UserMessage, conversation_of
from functions.transitions import Signal, conversation_learn

_USER_EVENTS = {"IS_TYPING": (Signal.TYPING,), "SUBSCRIBE": (Signal.OPT_IN,), "UNSUBSCRIBE": (Signal.OPT_OUT,)}


def _handles(event: Event) -> bool:
    return event.kind is Kind.USER_MESSAGE or (event.kind is Kind.USER_EVENT and event.event_type in _USER_EVENTS)


def _normal(text: str) -> str:
    """Text as keywords are compared: case-folded, whitespace trimmed and runs of it made one space."""
    return " ".join(text.split()).casefold()


def keyword_signals(content: dict[str, Any]) -> tuple[Signal, ...]:
    """(Signal.OPT_OUT,) if a message's content is a text that is an opt-out keyword,
    (Signal.OPT_IN,) for an opt-in keyword, else (); opt-out wins if a text is in both lists."""
    text = content.get("text")
    if not isinstance(text, str):
        return ()
    typed = _normal(text)
    if typed in map(_normal, config.opt_out_keywords()):
        return (Signal.OPT_OUT,)
    if typed in map(_normal, config.opt_in_keywords()):
        return (Signal.OPT_IN,)
    return ()


def _store_message(event: Event, agent_id: str, phone: str, dedupe_id: str) -> tuple[bool, Conversation]:
    """The user message below its conversation, both in one commit. Returns whether it
    was new (False: a duplicate, nothing changed) and the conversation."""
    conversation = conversations.docs(agent_id, phone)
    ref = conversation[0][0].collection("messages").document(store.document_id(dedupe_id, "messageId"))
    original = {field: event.raw[field] for field in CONTENT_FIELDS if field in event.raw}
    content = store.repaired(original)  # text that is not valid Unicode: stored with U+FFFD in place
    if content != original:
        logs.warning(
            "user message text repaired: lone UTF-16 surrogates replaced by U+FFFD",
            event="user_message_repaired",
            **event.attributes(),
        )
    at = event.time or store.now()
    fresh = UserMessage(dedupe_id, agent_id, at, event.content_type, content, received_at=store.now())
    signals = (Signal.ACTIVITY, *keyword_signals(content))

    def change(current: list[Any]) -> list[Any]:
        *found, stored = current
        if stored is not None:
            return current
        return [conversation_learn(conversation_of(found, agent_id, phone), signals, at), *found[1:], fresh]

    after, *_, stored = store.update_all([*conversation, (ref, UserMessage)], change)
    return stored is fresh, after


def _record(event: Event) -> None:
    agent_id, phone, dedupe_id = event.agent_id or config.agent_id(), event.phone, event.dedupe_id
    if not phone or not agent_id or not dedupe_id:
        raise subscriber.PoisonError(f"{event.kind} without senderPhoneNumber, agentId or id")
    if event.kind is Kind.USER_MESSAGE:
        stored, conversation = _store_message(event, agent_id, phone, dedupe_id)
        logs.info(
            "user message recorded" if stored else "duplicate user message ignored",
            event="user_message",
            phone=event.phone,
            opted_out=bool(conversation and conversation.opted_out),
            **event.attributes(),
        )
        return
    event_type = event.event_type or ""  # a user event `_handles` took: one of _USER_EVENTS
    at, signals = event.time or store.now(), _USER_EVENTS[event_type]
    conversation = store.update_all(
        conversations.docs(agent_id, phone),
        lambda found: [conversation_learn(conversation_of(found, agent_id, phone), signals, at, dedupe_id), *found[1:]],
    )[0]
    logs.info(
        f"{event_type} recorded",
        event=f"user_{event_type.lower()}",
        phone=event.phone,
        opted_out=conversation.opted_out,
        **event.attributes(),
    )


def handle(cloud_event: CloudEvent) -> None:
    subscriber.run(cloud_event, "record_inbound", _handles, _record)
