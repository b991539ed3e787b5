# One identity per function, each granted exactly what its function does, and
# three invoker identities: the one Pub/Sub pushes with, the one Scheduler calls
# with, and the one Cloud Tasks calls the worker with (tasks.tf).

resource "google_service_account" "function" {
  for_each = local.functions

  project      = var.project_id
  account_id   = each.value.name
  display_name = "rbm-relay ${each.key}"
  description  = each.value.description

  depends_on = [google_project_service.this]
}

resource "google_service_account" "push" {
  project      = var.project_id
  account_id   = "rbm-pubsub-push"
  display_name = "rbm-relay Pub/Sub push identity"
  description  = "Identity in the OIDC token of the push subscriptions; may invoke the subscriber functions only."

  depends_on = [google_project_service.this]
}

resource "google_service_account" "scheduler" {
  project      = var.project_id
  account_id   = "rbm-scheduler"
  display_name = "rbm-relay Cloud Scheduler identity"
  description  = "Identity in the OIDC token of the sweep jobs; may invoke the sweep functions only."

  depends_on = [google_project_service.this]
}

# Builds run as their own identity rather than a project default account.
resource "google_service_account" "build" {
  project      = var.project_id
  account_id   = "rbm-build"
  display_name = "rbm-relay function builds"

  depends_on = [google_project_service.this]
}

# Build logs, project-wide; images go to the build's own repository (artifacts.tf).
resource "google_project_iam_member" "build" {
  for_each = toset(["roles/logging.logWriter"])

  project = var.project_id
  role    = each.value
  member  = google_service_account.build.member
}

resource "google_storage_bucket_iam_member" "build_source" {
  bucket = google_storage_bucket.source.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.build.member
}

# A build reads the copy of the source that Cloud Functions stages in its own
# bucket, gcf-v2-sources-PROJECT_NUMBER-REGION, created on the first deploy
# (so it cannot be granted on the bucket itself): project-wide, held by a
# condition to that bucket and its objects.
data "google_project" "this" {
  project_id = var.project_id
}

locals {
  staged_source = "projects/_/buckets/gcf-v2-sources-${data.google_project.this.number}-${var.region}"
}

resource "google_project_iam_member" "build_staged_source" {
  project = var.project_id
  role    = "roles/storage.objectViewer"
  member  = google_service_account.build.member

  condition {
    title      = "rbm-relay staged source"
    expression = "resource.name == \"${local.staged_source}\" || resource.name.startsWith(\"${local.staged_source}/\")"
  }
}

# Firestore: read-only for the scheduled runs, which only query it
# (firestore_read_only), readWrite for the others; held by an IAM condition to
# the one database (Firestore evaluates conditions on the database's resource name).
resource "google_project_iam_member" "firestore" {
  for_each = { for ep, f in local.functions : ep => f if f.firestore }

  project = var.project_id
  role    = contains(local.firestore_read_only, each.key) ? "roles/datastore.viewer" : "roles/datastore.user"
  member  = google_service_account.function[each.key].member

  condition {
    title      = "rbm-relay database"
    expression = "resource.name == \"projects/${var.project_id}/databases/${var.firestore_database}\""
  }
}

# Publisher on exactly the topics a function publishes to.
resource "google_pubsub_topic_iam_member" "function_publisher" {
  for_each = merge([
    for ep, f in local.functions : { for t in f.publishes : "${ep}/${t}" => { function = ep, topic = t } }
  ]...)

  project = var.project_id
  topic   = local.topics[each.value.topic]
  role    = "roles/pubsub.publisher"
  member  = google_service_account.function[each.value.function].member
}

# Invokers: each identity on exactly its target services.
locals {
  invokers = merge(
    { for ep, f in local.functions : "${ep}/push" => { function = ep, member = google_service_account.push.member } if f.invoker == "pubsub" },
    { for ep, f in local.functions : "${ep}/scheduler" => { function = ep, member = google_service_account.scheduler.member } if f.invoker == "scheduler" },
    { for ep, f in local.functions : "${ep}/tasks" => { function = ep, member = google_service_account.tasks.member } if f.invoker == "tasks" },
    merge([
      for ep, f in local.functions : { for m in var.send_message_invokers : "${ep}/${m}" => { function = ep, member = m } } if f.invoker == "clients"
    ]...),
  )
}

resource "google_cloud_run_v2_service_iam_member" "invoker" {
  for_each = local.invokers

  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.this[each.value.function].name
  role     = "roles/run.invoker"
  member   = each.value.member
}

# The webhook is public: RBM calls it without Google credentials. Every
# request is authenticated by its X-Goog-Signature HMAC instead.
resource "google_cloud_run_v2_service_iam_member" "public" {
  for_each = { for ep, f in local.functions : ep => f if f.invoker == "public" }

  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.this[each.key].name
  role     = "roles/run.invoker"
  member   = "allUsers"
}
