"""Every setting rbm-relay reads from the environment, in one place.

Settings are read when asked for, not at import, so tests and the local stack
can point a process at emulators and fakes through its environment alone.
Each function reads only the settings of its own concern.
"""

import os

from functions import agents


def env(name: str, default: str = "") -> str:
    """One environment setting; an empty value counts as unset."""
    return os.environ.get(name) or default


def env_int(name: str, default: int) -> int:
    return int(env(name, str(default)))


def env_float(name: str, default: float) -> float:
    return float(env(name, str(default)))


def project() -> str:
    return env("GOOGLE_CLOUD_PROJECT")


def client_tokens() -> list[str]:
    """Webhook client tokens; more than one while a token is being rotated."""
    return [t.strip() for t in env("RBM_CLIENT_TOKEN").split(",") if t.strip()]


def events_topic() -> str:
    return env("RBM_EVENTS_TOPIC", "rbm-events")


def outcomes_topic() -> str:
    """Topic of the outcome events the sender subscribes to."""
    return env("RBM_OUTCOMES_TOPIC", "rbm-outcomes")


def outbox_grace() -> float:
    """Seconds an outcome event may stay unpublished (its own function publishing it)
    before a scheduled run's republisher publishes it."""
    return env_float("OUTBOX_GRACE_SECONDS", 30.0)


def dead_letter_topic() -> str:
    return env("RBM_DEAD_LETTER_TOPIC", "rbm-events-dead-letter")


def publish_timeout() -> float:
    """Seconds the webhook waits for Pub/Sub before answering 503."""
    return env_float("PUBLISH_TIMEOUT_SECONDS", 5.0)


def agent_id() -> str:
    """The default agent, in canonical form (functions/agents.py) whichever form is configured."""
    return agents.canonical(env("RBM_AGENT_ID"))


def conversation_id_key() -> bytes:
    """The secret conversation ids are keyed with (model.conversation_id); empty: unkeyed
    sha256 ids, for local use only (every deployment sets it from Secret Manager)."""
    return env("CONVERSATION_ID_KEY").encode()


# The universal opt-out keywords of CTIA's Short Code Monitoring Handbook (STOP, END,
# CANCEL, UNSUBSCRIBE, QUIT) and the further ones and opt-in keywords Twilio handles by
# default (Twilio docs: "Customize users' opt-in and opt-out experience with Advanced Opt-Out").
OPT_OUT_KEYWORDS = "STOP,STOPALL,UNSUBSCRIBE,CANCEL,END,QUIT,REVOKE,OPTOUT"
OPT_IN_KEYWORDS = "START,UNSTOP,YES"


def _list(value: str | None, default: str) -> list[str]:
    """A comma-separated setting; unset gives `default`, set but empty gives no entries."""
    return [item.strip() for item in (default if value is None else value).split(",") if item.strip()]


def opt_out_keywords() -> list[str]:
    """Typed texts that opt the user out of the agent, as UNSUBSCRIBE does; empty: none."""
    return _list(os.environ.get("OPT_OUT_KEYWORDS"), OPT_OUT_KEYWORDS)


def opt_in_keywords() -> list[str]:
    """Typed texts that opt the user back in, as SUBSCRIBE does; empty: none."""
    return _list(os.environ.get("OPT_IN_KEYWORDS"), OPT_IN_KEYWORDS)


def rbm_endpoint() -> str:
    return env("RBM_API_ENDPOINT", "https://rcsbusinessmessaging.googleapis.com").rstrip("/")


def rbm_service_account_key_file() -> str:
    """Path of the RBM service account's JSON key file (deployed: the secret
    rbm-service-account-key mounted as a volume); empty means the function's own
    identity (Application Default Credentials)."""
    return env("RBM_SERVICE_ACCOUNT_KEY_FILE")


def rbm_retry_seconds() -> float:
    """How long one RBM call may keep retrying 429 / 5xx / connection failures."""
    return env_float("RBM_RETRY_SECONDS", 10.0)


def retry_backoff_seconds() -> float:
    """First wait before a sweep tries a failed revoke or SMS again; it doubles each time."""
    return env_float("RETRY_BACKOFF_SECONDS", 30.0)


def messages_collection() -> str:
    return env("RBM_MESSAGES_COLLECTION", "rbm_messages")


def conversations_collection() -> str:
    return env("RBM_CONVERSATIONS_COLLECTION", "rbm_conversations")


def firestore_database() -> str:
    return env("FIRESTORE_DATABASE", "(default)")


def retention_days() -> int:
    """Days a document is kept after its last change; the TTL policy deletes it then."""
    return env_int("RETENTION_DAYS", 90)


def sweep_parallelism() -> int:
    """Messages acted on (or, by the safety net, looked up and enqueued) at once by one instance,
    all its passes and tasks together (sweep._executor)."""
    return env_int("SWEEP_PARALLELISM", 16)


def sweep_budget() -> float:
    """Seconds a scheduled pass may spend; well inside the function timeout."""
    return env_float("SWEEP_BUDGET_SECONDS", 90.0)


def rbm_tasks_queue() -> str:
    """Cloud Tasks queue (projects/P/locations/L/queues/Q) of the tasks that call RBM
    (revokes, re-sends of PENDING messages); empty: revoke_expired acts itself."""
    return env("RBM_TASKS_QUEUE")


def sms_tasks_queue() -> str:
    """Cloud Tasks queue of the SMS sends and lookups; empty: send_fallbacks acts itself."""
    return env("SMS_TASKS_QUEUE")


def worker_url() -> str:
    """process_due_work's URL: every task's HTTP target and its OIDC token's audience."""
    return env("WORKER_URL")


def tasks_service_account() -> str:
    """Email of the service account whose OIDC token each task carries (process_due_work's invoker)."""
    return env("TASKS_SERVICE_ACCOUNT")


def tasks_endpoint() -> str:
    """Cloud Tasks API root; empty: Google's. A plain http:// root is a local fake and gets no credentials."""
    return env("CLOUD_TASKS_ENDPOINT").rstrip("/")


def tasks_timeout() -> float:
    """Seconds one Cloud Tasks call (an enqueue, a look-up) may take, retries of 429 / 5xx /
    connection failures included."""
    return env_float("TASKS_TIMEOUT_SECONDS", 5.0)


def revoke_grace() -> float:
    """Seconds between a revoke's 200 and its SMS, in which a racing DELIVERED cancels the SMS."""
    return env_float("REVOKE_GRACE_SECONDS", 5.0)


def lease_seconds() -> float:
    """How long a sweep owns a claimed message before another may take it over."""
    return env_float("LEASE_SECONDS", 120.0)


def revoke_max_attempts() -> int:
    return env_int("REVOKE_MAX_ATTEMPTS", 8)


def fallback_max_attempts() -> int:
    return env_int("FALLBACK_MAX_ATTEMPTS", 5)


def pending_resend_seconds() -> float:
    """Age after which a message still PENDING is re-sent by revoke_expired."""
    return env_float("PENDING_RESEND_SECONDS", 60.0)


def sms_provider() -> str:
    """`twilio`, `webhook`, or empty for no SMS provider."""
    return env("SMS_PROVIDER")


def sms_webhook_idempotent() -> bool:
    """Whether the signed gateway honours `Idempotency-Key` (the README's contract): `true`, or
    `false` (the default); then an ambiguous send is retried under the same key. ValueError otherwise."""
    value = env("SMS_WEBHOOK_IDEMPOTENT", "false").lower()
    if value not in ("true", "false"):
        raise ValueError("SMS_WEBHOOK_IDEMPOTENT must be true or false")
    return value == "true"


def sms_status_callback_url() -> str:
    """receive_sms_status's public URL, without a query: the senders pass it (with
    `?message_id=<id>`) as Twilio's StatusCallback, and receive_sms_status checks Twilio's
    signature against it, since behind Cloud Run's front end the function cannot know the
    scheme and host Twilio called. Empty: no status callbacks."""
    return env("SMS_STATUS_CALLBACK_URL").split("?")[0]


def twilio_auth_token() -> str:
    """Twilio's auth token (a secret): it signs Twilio's status callbacks."""
    return env("TWILIO_AUTH_TOKEN")


def sms_webhook_secret() -> str:
    """The signed gateway's secret: it signs the gateway's status callbacks."""
    return env("SMS_WEBHOOK_SECRET")


def sms_max_segments() -> int | None:
    """The most SMS segments a fallback text may take (your gateway's own limit); unset: no
    limit but Twilio's 1,600 units (sms_text.MAX_UNITS)."""
    value = env("SMS_MAX_SEGMENTS")
    return int(value) if value else None
