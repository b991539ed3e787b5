"""Agent ids: one canonical form, whichever form one arrives in. Pure; no I/O.

RBM events name an agent `<id>@rbm.goog` (guides/build/events); Google's samples
configure "the part before @rbm.goog" (rbm-api-examples). Every agent id that
enters (RBM_AGENT_ID, send_message's agent_id, an event's agentId, a stored
document) goes through `canonical`, so both forms name the same agent in opt-outs,
conversations, message documents, outcome events and logs.
"""

import re

AGENT_DOMAIN = "@rbm.goog"  # ends every canonical agent id
# A canonical id an event can carry: one name, no whitespace, no second `@`, no `/`.
_CANONICAL = re.compile(r"[^\s@/]+" + re.escape(AGENT_DOMAIN))


def canonical(agent_id: str) -> str:
    """The one form of an agent id rbm-relay stores, keys, logs and publishes:
    `x_agent` and `x_agent@rbm.goog` both give `x_agent@rbm.goog`; "" stays ""."""
    if not agent_id:
        return agent_id
    if agent_id.casefold().endswith(AGENT_DOMAIN):
        return agent_id[: -len(AGENT_DOMAIN)] + AGENT_DOMAIN
    return agent_id + AGENT_DOMAIN


def api_form(agent_id: str) -> str:
    """The form RBM API calls take in their `agentId` parameter: the part before
    `@rbm.goog`, as Google's samples pass it (rbm-api-examples, "Provide your agent id
    (the part before @rbm.goog)"); either form in, the same answer out."""
    return canonical(agent_id).removesuffix(AGENT_DOMAIN)


def spellings(agent_id: str) -> tuple[str, str]:
    """The two forms a caller may have given for the agent of canonical `agent_id`."""
    return canonical(agent_id), api_form(agent_id)


def well_formed(agent_id: str) -> bool:
    """Whether canonical `agent_id` can be an agent's id at all: one name before
    `@rbm.goog`, without whitespace, `@` or `/`. Any other spelling would key a
    conversation no event reaches, and so miss the user's opt-out."""
    return _CANONICAL.fullmatch(agent_id) is not None
