locals {
  apis = [
    "artifactregistry.googleapis.com", # function images
    "cloudbuild.googleapis.com",       # function builds
    "cloudfunctions.googleapis.com",
    "cloudscheduler.googleapis.com",
    "cloudtasks.googleapis.com",    # the due work's timers and rate limits (tasks.tf)
    "firebaserules.googleapis.com", # Firestore Security Rules (firestore_rules.tf)
    "firestore.googleapis.com",
    "iam.googleapis.com",
    "iamcredentials.googleapis.com", # OIDC tokens of the push, scheduler and tasks identities
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com", # gen2 functions run on Cloud Run
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
  ]
}

resource "google_project_service" "this" {
  for_each = toset(local.apis)

  project = var.project_id
  service = each.value
  # Other workloads of the project may use the same APIs.
  disable_on_destroy = false
}
