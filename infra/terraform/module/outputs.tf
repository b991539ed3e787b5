output "webhook_url" {
  description = "URL to register as the webhook of your RBM partner (or agent) in the Business Communications Developer Console."
  value       = google_cloudfunctions2_function.this["receive_webhook"].service_config[0].uri
}

output "send_message_url" {
  description = "URL of send_message; callers need roles/run.invoker (send_message_invokers) and an ID token for this audience."
  value       = google_cloudfunctions2_function.this["send_message"].service_config[0].uri
}

output "function_urls" {
  description = "Every function's URL, by entry point."
  value       = { for ep, f in google_cloudfunctions2_function.this : ep => f.service_config[0].uri }
}

output "service_accounts" {
  description = "Every function's identity, by entry point. send_message and process_due_work call the RBM API as theirs unless rbm_key_from_secret is set."
  value       = { for ep, sa in google_service_account.function : ep => sa.email }
}

output "secrets" {
  description = "Secret ids to give a value (a version) before the functions deploy, by environment setting."
  value       = { for name, s in google_secret_manager_secret.this : name => s.secret_id }
}

output "events_topic" {
  value = google_pubsub_topic.events.id
}

output "dead_letter_topic" {
  value = google_pubsub_topic.dead_letter.id
}

output "dead_letter_subscription" {
  description = "Where dead letters wait for inspection and replay."
  value       = google_pubsub_subscription.dead_letter_inspect.id
}

output "task_queues" {
  description = "The Cloud Tasks queues of the due work, by key (rbm: RBM_TASKS_QUEUE, sms: SMS_TASKS_QUEUE)."
  value       = { for key, q in google_cloud_tasks_queue.this : key => q.id }
}

output "tasks_service_account" {
  description = "Identity in every task's OIDC token (TASKS_SERVICE_ACCOUNT), the only invoker of process_due_work."
  value       = google_service_account.tasks.email
}

output "source_bucket" {
  value = google_storage_bucket.source.name
}

output "dashboard" {
  value = google_monitoring_dashboard.funnel.id
}
