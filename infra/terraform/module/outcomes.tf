# The optional push subscription of the outcome events (README "Outcome events")
# to the sender's HTTPS endpoint, created only when outcomes_push_endpoint is
# set: an OIDC token of its own service account (audience outcomes_push_audience,
# the endpoint by default), the retry policy and a dead-letter topic of its own,
# all from infra/topology.json (outcomes_push).
locals {
  outcomes_push          = local.topology.outcomes_push
  outcomes_push_enabled  = var.outcomes_push_endpoint != ""
  outcomes_push_audience = coalesce(var.outcomes_push_audience, var.outcomes_push_endpoint, "unused")
}

resource "google_service_account" "outcomes_push" {
  count = local.outcomes_push_enabled ? 1 : 0

  project      = var.project_id
  account_id   = "rbm-outcomes-push"
  display_name = "rbm-relay outcome events push identity"
  description  = "Identity in the OIDC token of the outcome events pushed to the sender's endpoint; no role of its own."

  depends_on = [google_project_service.this]
}

resource "google_service_account_iam_member" "outcomes_push_token" {
  count = local.outcomes_push_enabled ? 1 : 0

  service_account_id = google_service_account.outcomes_push[0].name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_agent
}

resource "google_pubsub_topic" "outcomes_dead_letter" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption, as for the events topic.
  count = local.outcomes_push_enabled ? 1 : 0

  project = var.project_id
  name    = local.outcomes_push.dead_letter_topic
  labels  = local.common_labels

  depends_on = [google_project_service.this]
}

resource "google_pubsub_subscription" "outcomes_dead_letter_inspect" {
  count = local.outcomes_push_enabled ? 1 : 0

  project                    = var.project_id
  name                       = local.outcomes_push.dead_letter_subscription
  topic                      = google_pubsub_topic.outcomes_dead_letter[0].id
  ack_deadline_seconds       = local.outcomes_push.ack_deadline_seconds
  message_retention_duration = local.outcomes_push.message_retention
  retain_acked_messages      = false
  labels                     = local.common_labels

  expiration_policy {
    ttl = ""
  }
}

resource "google_pubsub_subscription" "outcomes_push" {
  count = local.outcomes_push_enabled ? 1 : 0

  project                    = var.project_id
  name                       = local.outcomes_push.subscription
  topic                      = google_pubsub_topic.outcomes.id
  ack_deadline_seconds       = local.outcomes_push.ack_deadline_seconds
  message_retention_duration = local.outcomes_push.message_retention
  enable_message_ordering    = true
  labels                     = local.common_labels

  push_config {
    push_endpoint = var.outcomes_push_endpoint

    oidc_token {
      service_account_email = google_service_account.outcomes_push[0].email
      audience              = local.outcomes_push_audience
    }
  }

  retry_policy {
    minimum_backoff = local.outcomes_push.minimum_backoff
    maximum_backoff = local.outcomes_push.maximum_backoff
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.outcomes_dead_letter[0].id
    max_delivery_attempts = local.outcomes_push.max_delivery_attempts
  }

  expiration_policy {
    ttl = ""
  }

  lifecycle {
    precondition {
      condition     = startswith(var.outcomes_push_endpoint, "https://")
      error_message = "outcomes_push_endpoint must be an https:// URL (Pub/Sub pushes with an OIDC token only over HTTPS)."
    }
  }
}

# The Pub/Sub service agent forwards undeliverable outcome events to their dead-letter topic.
resource "google_pubsub_topic_iam_member" "agent_outcomes_dead_letter" {
  count = local.outcomes_push_enabled ? 1 : 0

  project = var.project_id
  topic   = google_pubsub_topic.outcomes_dead_letter[0].name
  role    = "roles/pubsub.publisher"
  member  = local.pubsub_agent
}

resource "google_pubsub_subscription_iam_member" "agent_outcomes_source" {
  count = local.outcomes_push_enabled ? 1 : 0

  project      = var.project_id
  subscription = google_pubsub_subscription.outcomes_push[0].name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}
