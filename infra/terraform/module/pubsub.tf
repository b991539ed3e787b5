# Topics and subscriptions as infra/topology.json defines them.

resource "google_pubsub_topic" "events" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption at rest; a customer-managed key would add key administration this deployment does not need.
  project = var.project_id
  name    = local.topology.events_topic
  labels  = local.common_labels

  depends_on = [google_project_service.this]
}

resource "google_pubsub_topic" "dead_letter" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption, as for the events topic.
  project = var.project_id
  name    = local.topology.dead_letter_topic
  labels  = local.common_labels

  depends_on = [google_project_service.this]
}

# Dead letters wait here for inspection and replay.
resource "google_pubsub_subscription" "dead_letter_inspect" {
  project                    = var.project_id
  name                       = local.topology.dead_letter_subscription
  topic                      = google_pubsub_topic.dead_letter.id
  ack_deadline_seconds       = local.topology.ack_deadline_seconds
  message_retention_duration = local.topology.message_retention
  retain_acked_messages      = false
  labels                     = local.common_labels

  expiration_policy {
    ttl = "" # never expires, even when nobody pulls for a month
  }
}

# One push subscription per subscriber function, with its filter. The
# endpoint's path makes functions-framework set the CloudEvent's source to
# the topic, as Eventarc would.
resource "google_pubsub_subscription" "push" {
  for_each = local.subscriptions

  project                    = var.project_id
  name                       = each.key
  topic                      = google_pubsub_topic.events.id
  filter                     = each.value.filter
  ack_deadline_seconds       = local.topology.ack_deadline_seconds
  message_retention_duration = local.topology.message_retention
  labels                     = local.common_labels

  push_config {
    push_endpoint = "${google_cloudfunctions2_function.this[each.value.entry_point].service_config[0].uri}/${google_pubsub_topic.events.id}"

    oidc_token {
      service_account_email = google_service_account.push.email
      audience              = google_cloudfunctions2_function.this[each.value.entry_point].service_config[0].uri
    }
  }

  retry_policy {
    minimum_backoff = local.topology.minimum_backoff
    maximum_backoff = local.topology.maximum_backoff
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter.id
    max_delivery_attempts = local.topology.max_delivery_attempts
  }

  expiration_policy {
    ttl = ""
  }

  depends_on = [google_cloud_run_v2_service_iam_member.invoker]
}

# Topic names by the keys of the functions' `publishes`.
locals {
  topics = {
    events      = google_pubsub_topic.events.name
    dead_letter = google_pubsub_topic.dead_letter.name
    outcomes    = google_pubsub_topic.outcomes.name
  }
}

# The Pub/Sub service agent forwards undeliverable messages to the dead-letter
# topic: it must subscribe to the source and publish to the target.
resource "google_project_service_identity" "pubsub" {
  provider = google-beta

  project = var.project_id
  service = "pubsub.googleapis.com"

  depends_on = [google_project_service.this]
}

locals {
  pubsub_agent = "serviceAccount:${google_project_service_identity.pubsub.email}"
}

resource "google_pubsub_topic_iam_member" "agent_dead_letter" {
  project = var.project_id
  topic   = google_pubsub_topic.dead_letter.name
  role    = "roles/pubsub.publisher"
  member  = local.pubsub_agent
}

resource "google_pubsub_subscription_iam_member" "agent_source" {
  for_each = google_pubsub_subscription.push

  project      = var.project_id
  subscription = each.value.name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}

# Lets the service agent mint the push identity's OIDC tokens (needed in
# projects whose Pub/Sub predates automatic grants; harmless otherwise).
resource "google_service_account_iam_member" "agent_push_token" {
  service_account_id = google_service_account.push.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_agent
}

# Outcome events (README "Outcome events"): the sender subscribes to this topic.
resource "google_pubsub_topic" "outcomes" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption, as for the events topic.
  project = var.project_id
  name    = local.topology.outcomes_topic
  labels  = local.common_labels

  depends_on = [google_project_service.this]
}
