resource "google_cloudfunctions2_function" "this" {
  for_each = local.functions
  #checkov:skip=CKV_GCP_124:Ingress is per function (locals.tf): receive_webhook must take RBM's calls from the internet (HMAC-verified) and send_message defaults to ALLOW_ALL for IAM-authenticated callers outside the project (send_message_ingress); all others are ALLOW_INTERNAL_ONLY.

  project     = var.project_id
  location    = var.region
  name        = each.value.name
  description = each.value.description
  labels      = local.common_labels

  build_config {
    runtime         = var.python_runtime
    entry_point     = each.key
    service_account = google_service_account.build.id
    # The build's own repository, the only one it may push to.
    docker_repository = google_artifact_registry_repository.functions.id

    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  # No event_trigger: every function is served over HTTP. The subscribers get
  # Pub/Sub pushes (pubsub.tf), which functions-framework turns into CloudEvents.
  service_config {
    service_account_email            = google_service_account.function[each.key].email
    available_memory                 = local.sizing[each.key].memory
    available_cpu                    = local.sizing[each.key].cpu
    max_instance_request_concurrency = local.sizing[each.key].concurrency
    timeout_seconds                  = local.sizing[each.key].timeout_seconds
    min_instance_count               = local.sizing[each.key].min_instances
    max_instance_count               = local.sizing[each.key].max_instances
    ingress_settings                 = each.value.ingress
    all_traffic_on_latest_revision   = true

    environment_variables = merge(local.function_env[each.key], local.secret_file_env[each.key])

    dynamic "secret_environment_variables" {
      for_each = [
        for name in each.value.secrets : name
        if contains(keys(local.enabled_secrets), name) && !contains(keys(local.secret_files), name)
      ]
      content {
        key        = secret_environment_variables.value
        project_id = var.project_id
        secret     = google_secret_manager_secret.this[secret_environment_variables.value].secret_id
        version    = "latest"
      }
    }

    # Secrets as files (locals.tf, secret_files); the setting holds the path.
    dynamic "secret_volumes" {
      for_each = local.secret_file_env[each.key]
      content {
        mount_path = dirname(secret_volumes.value)
        project_id = var.project_id
        secret     = google_secret_manager_secret.this[secret_volumes.key].secret_id
        versions {
          version = "latest"
          path    = basename(secret_volumes.value)
        }
      }
    }
  }

  depends_on = [
    google_project_iam_member.build,
    google_artifact_registry_repository_iam_member.build,
    google_storage_bucket_iam_member.build_source,
    google_project_iam_member.build_staged_source,
    google_secret_manager_secret_iam_member.access,
  ]
}
