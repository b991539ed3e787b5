output "webhook_url" {
  description = "Paste this into the RBM console as the webhook URL (it answers the handshake itself)."
  value       = module.rbm_relay.webhook_url
}

output "send_message_url" {
  value = module.rbm_relay.send_message_url
}

output "function_urls" {
  value = module.rbm_relay.function_urls
}

output "service_accounts" {
  value = module.rbm_relay.service_accounts
}

output "secrets" {
  description = "Secrets to give a value before the functions deploy."
  value       = module.rbm_relay.secrets
}

output "dead_letter_subscription" {
  value = module.rbm_relay.dead_letter_subscription
}
