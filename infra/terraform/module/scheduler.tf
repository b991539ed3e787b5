# The scheduled functions run every local.schedule_period_seconds (one minute),
# called with an OIDC token of the scheduler identity. Each run dispatches due
# work until the next one starts.
resource "google_cloud_scheduler_job" "sweep" {
  for_each = { for ep, f in local.functions : ep => f if f.schedule != null }

  project     = var.project_id
  region      = var.region
  name        = each.value.name
  description = each.value.description
  schedule    = each.value.schedule
  time_zone   = "Etc/UTC"
  # The function's timeout plus slack: Scheduler must not give up on a run
  # that is still working.
  attempt_deadline = "${each.value.timeout + 30}s"

  # A failed run is retried once within its period; the next run is the real
  # retry. Runs are safe to overlap: claims are leased transactions.
  retry_config {
    retry_count          = 1
    min_backoff_duration = "10s"
    max_backoff_duration = "10s"
    max_retry_duration   = "50s"
  }

  http_target {
    http_method = "POST"
    uri         = google_cloudfunctions2_function.this[each.key].service_config[0].uri

    oidc_token {
      service_account_email = google_service_account.scheduler.email
      audience              = google_cloudfunctions2_function.this[each.key].service_config[0].uri
    }
  }

  lifecycle {
    precondition {
      condition     = tonumber(local.tuning.SWEEP_BUDGET_SECONDS) + 15 <= each.value.timeout
      error_message = "SWEEP_BUDGET_SECONDS must leave at least 15 s of the scheduled function's timeout for the last in-flight calls."
    }
    precondition {
      condition     = local.schedule_period_seconds <= tonumber(local.tuning.SWEEP_BUDGET_SECONDS)
      error_message = "SWEEP_BUDGET_SECONDS bounds a whole run, its period included: below the scheduler period, due work would wait for the next run."
    }
  }

  depends_on = [google_cloud_run_v2_service_iam_member.invoker]
}
