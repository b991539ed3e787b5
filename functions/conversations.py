"""Conversations in Firestore: where the one of (agent, user) lives, whether the user
opted out, and the operator's erasure of a number.

A conversation's id is an HMAC of (agent, phone) under CONVERSATION_ID_KEY
(model.conversation_id). A conversation stored before ids were keyed sits under
the unkeyed sha256 id: it is read as a fallback (the keyed document, once it
exists, decides), and carried over to the keyed id by the next change of the
conversation (record_inbound) or by `python -m functions migrate-conversations`,
which also deletes it. Only the functions that key conversations import this
module, so only they read the key.
"""

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

from google.cloud.firestore_v1.base_document import DocumentSnapshot
from google.cloud.firestore_v1.base_query import FieldFilter
from google.cloud.firestore_v1.collection import CollectionReference
from google.cloud.firestore_v1.document import DocumentReference
from google.cloud.firestore_v1.query import Query

from functions import agents, config, store
from functions.model import OUTCOMES_COLLECTION, Conversation, conversation_id, conversation_of

READ_PAGE = 300  # documents one opted_out_among read asks for
READ_PARALLELISM = 8  # its reads in flight at once


def refs(agent_id: str | None, phone: str) -> list[DocumentReference]:
    """The conversation's document, then, while a key is set, the unkeyed one it had
    before ids were keyed. UnstorableError if the agent or phone is missing or not
    valid Unicode."""
    agent, number = store.storable_text(agent_id, "agentId"), store.storable_text(phone, "phone")
    ids = dict.fromkeys([conversation_id(agent, number, config.conversation_id_key()), conversation_id(agent, number)])
    return [store.conversations().document(i) for i in ids]


def docs(agent_id: str | None, phone: str) -> list[tuple[DocumentReference, type[Conversation]]]:
    """`refs` as store.update_all takes them; the change sees the keyed conversation first."""
    return [(ref, Conversation) for ref in refs(agent_id, phone)]


def _read(
    references: list[DocumentReference], fields: list[str] | None = None
) -> list[DocumentSnapshot[DocumentReference]]:
    """Snapshots of `references`, in their order, in one round trip."""
    snapshots = {
        s.reference.path: s
        for s in store.client().get_all(references, field_paths=fields, retry=store.RETRY, timeout=store.CALL_SECONDS)
    }
    return [snapshots[r.path] for r in references]


def opted_out(agent_id: str | None, phone: str) -> bool:
    """Whether the user opted out of the agent and has not opted back in: the keyed
    conversation decides, else the unkeyed one; one read."""
    return bool(opted_out_among([(agent_id, phone)]))


def opted_out_among(users: list[tuple[str | None, str]]) -> set[tuple[str | None, str]]:
    """The (agent, phone) pairs of `users` whose user opted out (as `opted_out` decides),
    their conversations read READ_PAGE documents to a round trip, READ_PARALLELISM at once."""
    wanted = {user: refs(*user) for user in dict.fromkeys(users)}
    every = [ref for references in wanted.values() for ref in references]
    pages = [every[i : i + READ_PAGE] for i in range(0, len(every), READ_PAGE)]
    with ThreadPoolExecutor(READ_PARALLELISM) as pool:
        found = {s.reference.path: s for page in pool.map(lambda p: _read(p, ["opted_out"]), pages) for s in page}
    deciding = {
        user: next((found[r.path] for r in references if found[r.path].exists), None)
        for user, references in wanted.items()
    }
    return {user for user, snapshot in deciding.items() if snapshot is not None and snapshot.get("opted_out")}


def _move(unkeyed: DocumentSnapshot[DocumentReference], conversation: Conversation) -> None:
    """The conversation under its keyed id (unless there already), then the unkeyed document deleted
    on the condition that nobody wrote it since it was read."""
    agent, phone = conversation.agent_id, conversation.phone
    store.update_all(docs(agent, phone), lambda found: [conversation_of(found, agent, phone), *found[1:]])
    option = store.client().write_option(last_update_time=unkeyed.update_time)
    unkeyed.reference.delete(option=option, retry=store.RETRY, timeout=store.CALL_SECONDS)


def migrate() -> int:
    """Moves every conversation stored under its unkeyed id to its keyed id (its user
    messages stay below the unkeyed id until their retention ends) and deletes the
    unkeyed document; returns how many moved. Nothing to do without a key."""
    if not config.conversation_id_key():
        return 0
    moved = 0
    for snapshot in store.conversations().stream(retry=store.RETRY, timeout=store.CALL_SECONDS):
        conversation = Conversation.from_doc(store.found(snapshot))
        if conversation.phone and snapshot.id == conversation_id(conversation.agent_id, conversation.phone):
            _move(snapshot, conversation)
            moved += 1
    return moved


def _delete(references: Iterable[DocumentReference]) -> int:
    """Deletes the documents, in batches; returns how many."""
    count, batch = 0, store.client().batch()
    for ref in references:
        batch.delete(ref)
        count += 1
        if count % store.BATCH_WRITES == 0:
            batch.commit(retry=store.RETRY, timeout=store.CALL_SECONDS)
            batch = store.client().batch()
    batch.commit(retry=store.RETRY, timeout=store.CALL_SECONDS)
    return count


def _stream(query: Query | CollectionReference) -> Iterator[DocumentSnapshot[DocumentReference]]:
    yield from query.stream(retry=store.RETRY, timeout=store.CALL_SECONDS)


def _of_phone(
    collection: CollectionReference, phone: str, agent: str | None
) -> list[DocumentSnapshot[DocumentReference]]:
    """The documents of `collection` about `phone`, of `agent` (canonical) or of any agent."""
    found = _stream(collection.where(filter=FieldFilter("phone", "==", phone)))
    return [s for s in found if agent is None or agents.canonical(s.get("agent_id") or "") == agent]


def _erase_conversation(agent: str, phone: str, found: list[DocumentReference]) -> dict[str, int]:
    """Deletes the conversation of (agent, phone), keyed and unkeyed, and `found` (its
    documents a query by the number found, whatever key their ids were made with), with
    their user messages; leaves the opt-out marker if the user had opted out."""
    references = list({r.path: r for r in [*refs(agent, phone), *found]}.values())
    stored = [Conversation.from_doc(s.to_dict() or {}) if s.exists else None for s in _read(references)]
    counts = {
        "user_messages": sum(_delete(s.reference for s in _stream(ref.collection("messages"))) for ref in references),
        "conversations": _delete(ref for ref, c in zip(references, stored, strict=True) if c),
        "opt_out_markers": 0,
    }
    current = next((c for c in stored if c), None)
    if current and current.opted_out:
        marker = Conversation(agent, "", opted_out=True, subscription_changed_at=current.subscription_changed_at)
        references[0].set(
            store.stamped(references[0], marker.to_doc(), store.now()), retry=store.RETRY, timeout=store.CALL_SECONDS
        )
        counts["opt_out_markers"] = 1
    return counts


def erase(phone: str, agent_id: str | None = None) -> dict[str, int]:
    """Removes what rbm-relay holds about `phone` (for one agent, or all): its message
    documents, their outcome events' outbox documents (which carry the phone), its
    conversations (keyed and unkeyed) and the user messages below them.
    Where the user had opted out, a marker stays under the keyed conversation id: the
    agent id, the opt-out and its time, no phone number, no TTL; the opt-out holds as
    before. Returns the counts of what it removed and kept."""
    agent = agents.canonical(agent_id) if agent_id else None
    counts = {
        "messages": _delete(s.reference for s in _of_phone(store.messages(), phone, agent)),
        "outcome_events": _delete(
            s.reference for s in _of_phone(store.client().collection(OUTCOMES_COLLECTION), phone, agent)
        ),
    }
    found: dict[str, list[DocumentReference]] = {agent: []} if agent else {}
    for snapshot in _of_phone(store.conversations(), phone, agent):
        found.setdefault(agents.canonical(snapshot.get("agent_id")), []).append(snapshot.reference)
    for each, references in sorted(found.items()):
        for what, count in _erase_conversation(each, phone, references).items():
            counts[what] = counts.get(what, 0) + count
    return {"conversations": 0, "user_messages": 0, "opt_out_markers": 0} | counts
