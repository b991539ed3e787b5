"""A recorded PENDING message through RBM's agentMessages.create, and what its answer teaches.

Below both callers: send_message sends a message it has just recorded,
revoke_expired re-sends one whose create never got through (a batch message's
create is such a re-send, paced by the RBM queue). The platform
ignores a messageId it has seen (RBM reference, phones.agentMessages.create),
so a create under the message's own id is safe to repeat; one answered 409
ALREADY_EXISTS (AIP-133) was accepted by an earlier call: SENT, never a failure.
"""

from functions import logs, rbm, store
from functions.model import Message, State
from functions.transitions import Fact, learn

# A batch message's create accepted: the dashboard's batch throughput; the message_sent
# metric counts it too (infra: log_events_also).
BATCH_MESSAGE_SENT = "batch_message_sent"
# What each create outcome teaches about the message.
CREATE_FACTS = {
    rbm.Outcome.OK: Fact.ACCEPTED,
    rbm.Outcome.ALREADY_EXISTS: Fact.ACCEPTED,  # accepted before, under the same id
    rbm.Outcome.NOT_FOUND: Fact.UNREACHABLE,
    rbm.Outcome.INVALID: Fact.SEND_FAILED,
    rbm.Outcome.FORBIDDEN: Fact.SEND_FAILED,
}


def send(message: Message, paced: bool = False) -> tuple[Message | None, rbm.Result]:
    """Calls create for a recorded PENDING message and records what RBM answered: (the message
    as stored now, RBM's result), or (None, result) if the call failed transiently
    (the message stays PENDING for a later retry; the result says when RBM wants it).
    `paced`: the call is a queue's task, one try (rbm.client)."""
    result = rbm.client(paced).create_message(
        message.phone, message.message_id, message.agent_id, message.content, message.traffic_type
    )
    if result.outcome is rbm.Outcome.TRANSIENT:
        logs.warning(
            "RBM create failed transiently",
            event="send_transient",
            message_id=message.message_id,
            reason=result.error,
            retry_after=result.retry_after,
        )
        return None, result
    fact, now = CREATE_FACTS[result.outcome], store.now()
    error = None if fact is Fact.ACCEPTED else result.error
    message = store.change_message(message.message_id, lambda m: learn(m, fact, now, error=error))
    event = f"message_{message.state.value.lower()}"
    if message.batch_id and message.state is State.SENT:
        event = BATCH_MESSAGE_SENT
    logs.info(
        f"message {message.state.value.lower()}",
        event=event,
        batch_id=message.batch_id,
        message_id=message.message_id,
        agent_id=message.agent_id,
        phone=message.phone,
        reason=error,
        rbm_outcome=result.outcome.value,
    )
    return message, result
