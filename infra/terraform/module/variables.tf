variable "project_id" {
  description = "Project that hosts the functions, the topics and the Firestore database."
  type        = string
}

variable "region" {
  description = "Region of the functions, the scheduler jobs and the source bucket."
  type        = string
}

variable "labels" {
  description = "Labels set on every resource that takes them."
  type        = map(string)
  default     = {}
}

variable "source_dir" {
  description = "Root of the rbm-relay source tree (main.py, requirements.txt, functions/). Defaults to this repository."
  type        = string
  default     = null
}

variable "python_runtime" {
  description = "Cloud Functions runtime of every function."
  type        = string
  default     = "python312"
}

# --- RBM -------------------------------------------------------------------

variable "rbm_agent_id" {
  description = "Default agent of send_message (RBM_AGENT_ID); a request may name another."
  type        = string
}

variable "rbm_api_endpoint" {
  description = "RBM REST root (RBM_API_ENDPOINT); regional roots are us-, europe- and asia- prefixed."
  type        = string
  default     = "https://rcsbusinessmessaging.googleapis.com"
}

variable "rbm_key_from_secret" {
  description = <<-EOT
    true: send_message and process_due_work (and revoke_expired
    when it acts without a queue) authenticate to the RBM API with the
    JSON key stored in the secret rbm-service-account-key, mounted as a file (RBM_SERVICE_ACCOUNT_KEY_FILE).
    false (preferred): they use their own identity (no key anywhere); that
    service account must then be the one your RBM partner account authorizes.
  EOT
  type        = bool
  default     = false
}

# --- SMS fallback -----------------------------------------------------------

variable "sms_provider" {
  description = "SMS provider of the fallbacks (SMS_PROVIDER): \"twilio\", \"webhook\", or \"\" for none."
  type        = string
  default     = ""

  validation {
    condition     = contains(["", "twilio", "webhook"], var.sms_provider)
    error_message = "sms_provider must be \"twilio\", \"webhook\" or \"\"."
  }
}

variable "twilio" {
  description = "Twilio settings when sms_provider = \"twilio\" (the auth token is a secret, not set here). Give from_number or messaging_service_sid."
  type = object({
    account_sid           = optional(string, "")
    from_number           = optional(string, "")
    messaging_service_sid = optional(string, "")
    api_base              = optional(string, "https://api.twilio.com")
  })
  default = {}
}

variable "sms_webhook_url" {
  description = "Endpoint of your own SMS gateway when sms_provider = \"webhook\" (SMS_WEBHOOK_URL); requests are signed with the secret rbm-sms-webhook-secret."
  type        = string
  default     = ""
}

variable "sms_webhook_idempotent" {
  description = "true when your gateway honours Idempotency-Key as the README's contract says (SMS_WEBHOOK_IDEMPOTENT): ambiguous sends are then retried under the same key."
  type        = bool
  default     = false
}

variable "sms_max_segments" {
  description = "The most SMS segments a fallback text may take, your gateway's own limit (SMS_MAX_SEGMENTS); null: only Twilio's 1,600 units."
  type        = number
  default     = null
}

# --- Behaviour ----------------------------------------------------------------

variable "log_level" {
  description = "Lowest severity the functions log (LOG_LEVEL)."
  type        = string
  default     = "INFO"
}

variable "tuning" {
  description = <<-EOT
    Overrides of the tuning settings, by their environment name; the defaults
    are in locals.tf (tuning_defaults). Keep SWEEP_BUDGET_SECONDS at least 15 s
    below the scheduled functions' 120 s timeout, and LEASE_SECONDS at least
    that timeout.
  EOT
  type        = map(string)
  default     = {}
}

variable "messages_collection" {
  description = "Firestore collection of message documents (RBM_MESSAGES_COLLECTION)."
  type        = string
  default     = "rbm_messages"
}

variable "conversations_collection" {
  description = "Firestore collection of conversation documents (RBM_CONVERSATIONS_COLLECTION)."
  type        = string
  default     = "rbm_conversations"
}

# --- Firestore ----------------------------------------------------------------

variable "create_firestore_database" {
  description = "Create the Firestore database. Set false when it already exists (a project has one \"(default)\" database created once)."
  type        = bool
  default     = true
}

variable "firestore_database" {
  description = "Firestore database id (FIRESTORE_DATABASE)."
  type        = string
  default     = "(default)"
}

variable "firestore_location" {
  description = "Firestore location (a region or a multi-region such as eur3 / nam5). Defaults to region."
  type        = string
  default     = null
}

# --- Scaling and access ---------------------------------------------------------

variable "webhook_min_instances" {
  description = "Warm instances of receive_webhook. RBM shares one delivery queue across a partner's agents, so a cold start slows every agent: 1 removes it for a small cost. Null: infra/functions.json's (0)."
  type        = number
  default     = null
}

variable "webhook_max_instances" {
  description = "Upper bound of receive_webhook instances (each serves its concurrency, 80, at once). Null: infra/functions.json's (20)."
  type        = number
  default     = null
}

variable "worker_max_instances" {
  description = <<-EOT
    Upper bound of process_due_work instances. The queues' rates, not the
    worker, bound the calls into RBM and the SMS provider (rbm_max_calls_per_second,
    sms_max_sends_per_second); the worker needs room for what both queues
    dispatch at once: instances × 80 (its concurrency) at least the queues'
    max_concurrent_dispatches together (infra/README.md, "Sizing the worker").
    Null: infra/functions.json's (10).
  EOT
  type        = number
  default     = null

  validation {
    condition     = coalesce(var.worker_max_instances, 1) >= 1
    error_message = "worker_max_instances must be at least 1."
  }
}

variable "rbm_max_calls_per_second" {
  description = "The most RBM calls per second (revokes, re-sends) the due work makes: the rbm queue's dispatch rate. Your agent's RBM quota; null: infra/topology.json's (50)."
  type        = number
  default     = null

  validation {
    condition     = coalesce(var.rbm_max_calls_per_second, 1) > 0 && coalesce(var.rbm_max_calls_per_second, 1) <= 500
    error_message = "rbm_max_calls_per_second must be above 0 and at most 500 (Cloud Tasks' highest dispatch rate per queue)."
  }
}

variable "sms_max_sends_per_second" {
  description = "The most SMS provider calls per second (sends, look-ups) the fallbacks make: the sms queue's dispatch rate. Your provider's rate; null: infra/topology.json's (20)."
  type        = number
  default     = null

  validation {
    condition     = coalesce(var.sms_max_sends_per_second, 1) > 0 && coalesce(var.sms_max_sends_per_second, 1) <= 500
    error_message = "sms_max_sends_per_second must be above 0 and at most 500 (Cloud Tasks' highest dispatch rate per queue)."
  }
}

variable "send_message_invokers" {
  description = "IAM members allowed to call send_message, e.g. [\"serviceAccount:backend@my-project.iam.gserviceaccount.com\"]."
  type        = list(string)
  default     = []
}

variable "send_message_ingress" {
  description = "Ingress of send_message: ALLOW_ALL (callers outside the project, still IAM-authenticated) or ALLOW_INTERNAL_ONLY."
  type        = string
  default     = "ALLOW_ALL"

  validation {
    condition     = contains(["ALLOW_ALL", "ALLOW_INTERNAL_ONLY", "ALLOW_INTERNAL_AND_GCLB"], var.send_message_ingress)
    error_message = "send_message_ingress must be ALLOW_ALL, ALLOW_INTERNAL_ONLY or ALLOW_INTERNAL_AND_GCLB."
  }
}

# --- Monitoring ------------------------------------------------------------------

variable "notification_channels" {
  description = "Monitoring notification channel ids (projects/P/notificationChannels/N) the alert policies notify. No default: give [] to deploy alerts that notify nobody (they still show in the console)."
  type        = list(string)

  validation {
    condition     = alltrue([for c in var.notification_channels : can(regex("^projects/[^/]+/notificationChannels/[^/]+$", c))])
    error_message = "Each notification channel is projects/PROJECT/notificationChannels/ID."
  }
}

variable "signature_rejections_threshold" {
  description = "Rejected webhook signatures per 5 minutes above which an alert opens (a few are probes; many mean a wrong token)."
  type        = number
  default     = 10
}

variable "outcomes_push_endpoint" {
  description = "The sender's HTTPS endpoint the outcome events are pushed to (README, Outcome events); empty: no push subscription."
  type        = string
  default     = ""
}

variable "outcomes_push_audience" {
  description = "Audience of the OIDC token of the outcome events' push; empty: the endpoint itself."
  type        = string
  default     = ""
}
