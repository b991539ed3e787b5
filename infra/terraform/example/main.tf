module "rbm_relay" {
  source = "../module"

  project_id   = var.project_id
  region       = var.region
  rbm_agent_id = var.rbm_agent_id

  rbm_api_endpoint    = var.rbm_api_endpoint
  rbm_key_from_secret = var.rbm_key_from_secret

  sms_provider    = var.sms_provider
  twilio          = var.twilio
  sms_webhook_url = var.sms_webhook_url

  sms_webhook_idempotent = var.sms_webhook_idempotent
  sms_max_segments       = var.sms_max_segments

  create_firestore_database = var.create_firestore_database
  firestore_location        = var.firestore_location

  webhook_min_instances    = var.webhook_min_instances
  worker_max_instances     = var.worker_max_instances
  rbm_max_calls_per_second = var.rbm_max_calls_per_second
  sms_max_sends_per_second = var.sms_max_sends_per_second
  send_message_invokers    = var.send_message_invokers
  notification_channels    = var.notification_channels
  tuning                   = var.tuning
  labels                   = var.labels
}
