# The scheduled functions run every local.schedule_period_seconds (one minute),
# called with an OIDC token of the scheduler identity: one short pass each, the
# safety net of the Cloud Tasks timers (a task whose creation failed after its
# commit, a purged queue), so a message is late by at most one period. Cloud
# Scheduler never overlaps two executions of a job: "execution n + 1 of a job
# will not begin until execution n has finished", a start is delayed instead
# (reference, Job.schedule).
resource "google_cloud_scheduler_job" "sweep" {
  for_each = { for ep, f in local.functions : ep => f if f.schedule != null }

  project     = var.project_id
  region      = var.region
  name        = each.value.name
  description = each.value.description
  schedule    = each.value.schedule
  time_zone   = "Etc/UTC"
  # One period: a pass answers well before the next tick, so only a hung one meets the
  # deadline, and then Scheduler stops waiting for it (DEADLINE_EXCEEDED) and the
  # next execution starts on time; the hung run itself ends by the function's
  # timeout, on its own instance (max 2). HTTP targets take 15 s to 30 minutes
  # (reference, Job.attempt_deadline).
  attempt_deadline = "${local.schedule_period_seconds}s"

  # A failed run is retried once within its period (a retry also ends before the
  # next tick); the next run is the real retry. A run past its attempt deadline
  # is not retried (max_retry_duration). Claims are leased transactions, so a
  # hung run still working beside the next one does nothing twice.
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
      condition     = tonumber(local.tuning.SWEEP_BUDGET_SECONDS) + 15 <= local.sizing[each.key].timeout_seconds
      error_message = "SWEEP_BUDGET_SECONDS must leave at least 15 s of the scheduled function's timeout for the last in-flight calls."
    }
    precondition {
      condition     = local.schedule_period_seconds >= 15 && local.schedule_period_seconds <= 1800
      error_message = "The attempt deadline is one period, which Cloud Scheduler takes between 15 s and 30 minutes for an HTTP target."
    }
  }

  depends_on = [google_cloud_run_v2_service_iam_member.invoker]
}
