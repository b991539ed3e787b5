# Due work on Cloud Tasks: one task per timer of a message (a revoke at its
# deadline, a re-send, an SMS at its time), an HTTP POST to process_due_work at
# that second, with an OIDC token of the tasks identity. Two queues, as
# infra/topology.json's "queues" defines them: "rbm" (every task that calls
# RBM) and "sms" (every task that calls the SMS provider). A queue's dispatch
# rate is the rate of calls into its provider, since a task makes one call:
# the queue is the rate limit, and the code does not read it.

locals {
  # The dispatch rates a deployment may override (the agent's RBM quota, the SMS
  # provider's rate); null keeps topology.json's.
  queue_rates = {
    rbm = var.rbm_max_calls_per_second
    sms = var.sms_max_sends_per_second
  }
  queues = {
    for key, q in local.topology.queues : key => merge(q, {
      max_dispatches_per_second = coalesce(local.queue_rates[key], q.max_dispatches_per_second)
    })
  }
}

resource "google_cloud_tasks_queue" "this" {
  for_each = local.queues

  project  = var.project_id
  location = var.region
  name     = each.value.name

  # max_concurrent_dispatches bounds the tasks in flight; the worker's
  # instances x concurrency (functions.json) hold both queues' at once, so the
  # queue and not Cloud Run's 429s sets the pace.
  rate_limits {
    max_dispatches_per_second = each.value.max_dispatches_per_second
    max_concurrent_dispatches = each.value.max_concurrent_dispatches
  }

  # A task the worker answers 429 / 503 (RBM or the SMS provider throttling,
  # Retry-After honoured) or 5xx is tried again with backoff; once its
  # attempts are spent it is dropped, and the message, still due in Firestore,
  # is enqueued again by the next scheduled pass (the safety net).
  retry_config {
    max_attempts  = each.value.max_attempts
    min_backoff   = each.value.min_backoff
    max_backoff   = each.value.max_backoff
    max_doublings = each.value.max_doublings
  }

  lifecycle {
    precondition {
      condition     = each.value.max_dispatches_per_second > 0 && each.value.max_dispatches_per_second <= 500
      error_message = "A queue's max_dispatches_per_second is above 0 and at most 500 (Cloud Tasks, RateLimits)."
    }
    precondition {
      condition     = tonumber(local.tuning.REVOKE_GRACE_SECONDS) + tonumber(local.tuning.RBM_RETRY_SECONDS) + 40 <= local.sizing.process_due_work.timeout_seconds
      error_message = "process_due_work's timeout must cover one task: its wait for the due second (up to 5 s) and a revoke's grace window (REVOKE_GRACE_SECONDS), plus one RBM call at its longest (RBM_RETRY_SECONDS + 35 s)."
    }
  }

  depends_on = [google_project_service.this]
}

# The identity in every task's OIDC token: the only invoker of process_due_work
# (iam.tf, invoker "tasks"), and nothing else.
resource "google_service_account" "tasks" {
  project      = var.project_id
  account_id   = "rbm-tasks"
  display_name = "rbm-relay Cloud Tasks identity"
  description  = "Identity in the OIDC token of the due-work tasks; may invoke process_due_work only."

  depends_on = [google_project_service.this]
}

# Who may enqueue: each function whose commits set timers, on exactly the queues
# of the timers it sets (its "rbm_queue" / "sms_queue" settings). Creating a task
# that carries an OIDC token of the tasks identity needs iam.serviceAccounts.actAs
# on it (OidcToken.service_account_email, Cloud Tasks reference).
locals {
  queue_groups = { rbm = "rbm_queue", sms = "sms_queue" }
  enqueuers = merge([
    for ep, f in local.functions : {
      for q, group in local.queue_groups : "${ep}/${q}" => { function = ep, queue = q } if contains(f.settings, group)
    }
  ]...)
  # The scheduled functions' safety net asks whether a message's task still
  # exists (GetTask: cloudtasks.tasks.get, which roles/cloudtasks.enqueuer
  # lacks and roles/cloudtasks.viewer has), on its own queue only.
  task_viewers  = { for key, e in local.enqueuers : key => e if local.functions[e.function].schedule != null }
  timer_setters = toset([for e in values(local.enqueuers) : e.function])
}

resource "google_cloud_tasks_queue_iam_member" "enqueuer" {
  for_each = local.enqueuers

  project  = var.project_id
  location = var.region
  name     = google_cloud_tasks_queue.this[each.value.queue].name
  role     = "roles/cloudtasks.enqueuer"
  member   = google_service_account.function[each.value.function].member
}

resource "google_cloud_tasks_queue_iam_member" "viewer" {
  for_each = local.task_viewers

  project  = var.project_id
  location = var.region
  name     = google_cloud_tasks_queue.this[each.value.queue].name
  role     = "roles/cloudtasks.viewer"
  member   = google_service_account.function[each.value.function].member
}

resource "google_service_account_iam_member" "tasks_user" {
  for_each = local.timer_setters

  service_account_id = google_service_account.tasks.name
  role               = "roles/iam.serviceAccountUser"
  member             = google_service_account.function[each.key].member
}

# Cloud Tasks' service agent mints the tasks identity's OIDC tokens (granted
# project-wide by its service agent role where the API was enabled after
# March 2019; this binding covers older projects and is harmless otherwise).
resource "google_project_service_identity" "cloudtasks" {
  provider = google-beta

  project = var.project_id
  service = "cloudtasks.googleapis.com"

  depends_on = [google_project_service.this]
}

resource "google_service_account_iam_member" "tasks_agent_token" {
  service_account_id = google_service_account.tasks.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = "serviceAccount:${google_project_service_identity.cloudtasks.email}"
}
