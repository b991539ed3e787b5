variable "project_id" {
  description = "Project to deploy into."
  type        = string
}

variable "region" {
  description = "Region of the functions and the scheduler jobs."
  type        = string
  default     = "europe-west1"
}

variable "rbm_agent_id" {
  description = "Default RBM agent of send_message."
  type        = string
}

variable "rbm_api_endpoint" {
  description = "RBM REST root; use the regional root of your agent's region if it has one."
  type        = string
  default     = "https://rcsbusinessmessaging.googleapis.com"
}

variable "rbm_key_from_secret" {
  description = "Authenticate to RBM with a JSON key kept in Secret Manager instead of the functions' own identity."
  type        = bool
  default     = false
}

variable "sms_provider" {
  description = "\"twilio\", \"webhook\" or \"\" (no SMS fallback)."
  type        = string
  default     = ""
}

variable "twilio" {
  description = "Twilio account settings (the auth token goes to Secret Manager)."
  type = object({
    account_sid           = optional(string, "")
    from_number           = optional(string, "")
    messaging_service_sid = optional(string, "")
    api_base              = optional(string, "https://api.twilio.com")
  })
  default = {}
}

variable "sms_webhook_url" {
  description = "Your SMS gateway's endpoint when sms_provider = \"webhook\"."
  type        = string
  default     = ""
}

variable "sms_webhook_idempotent" {
  description = "true when your gateway honours Idempotency-Key (README, the signed gateway's contract)."
  type        = bool
  default     = false
}

variable "sms_max_segments" {
  description = "Your gateway's limit on segments per SMS; null: only Twilio's 1,600 units."
  type        = number
  default     = null
}

variable "create_firestore_database" {
  description = "false when the project already has its Firestore database."
  type        = bool
  default     = true
}

variable "firestore_location" {
  description = "Firestore location; defaults to region."
  type        = string
  default     = null
}

variable "webhook_min_instances" {
  description = "Warm webhook instances (1 removes cold starts from RBM's shared queue); null: infra/functions.json's."
  type        = number
  default     = null
}

variable "worker_max_instances" {
  description = "Upper bound of process_due_work instances; × 80 it must hold what both queues dispatch at once (infra/README.md, \"Sizing the worker\"); null: infra/functions.json's."
  type        = number
  default     = null
}

variable "rbm_max_calls_per_second" {
  description = "Your agent's RBM quota: the most RBM calls per second the due work makes (0 < rate <= 500); null: infra/topology.json's."
  type        = number
  default     = null
}

variable "sms_max_sends_per_second" {
  description = "Your SMS provider's rate: the most sends per second the fallbacks make (0 < rate <= 500); null: infra/topology.json's."
  type        = number
  default     = null
}

variable "send_message_invokers" {
  description = "IAM members that may call send_message."
  type        = list(string)
  default     = []
}

variable "notification_channels" {
  description = "Monitoring notification channels for the alert policies; [] deploys alerts that notify nobody."
  type        = list(string)
}

variable "tuning" {
  description = "Overrides of tuning settings by environment name, e.g. { SWEEP_PARALLELISM = \"32\" }."
  type        = map(string)
  default     = {}
}

variable "labels" {
  description = "Labels for every resource."
  type        = map(string)
  default     = {}
}
