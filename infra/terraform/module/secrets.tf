# Secret containers only: no value ever passes through Terraform (or its
# state). Add each value out of band before the functions are deployed, e.g.
#   printf '%s' "$TOKEN" | gcloud secrets versions add rbm-client-token --data-file=-
# The functions read version "latest": a new version reaches new instances;
# redeploy (or wait for instances to recycle) to roll it out everywhere.

resource "google_secret_manager_secret" "this" {
  for_each = local.enabled_secrets

  project   = var.project_id
  secret_id = each.value
  labels    = local.common_labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.this]
}

# Each function reads exactly its own secrets.
resource "google_secret_manager_secret_iam_member" "access" {
  for_each = local.secret_access

  project   = var.project_id
  secret_id = google_secret_manager_secret.this[each.value.secret].secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.function[each.value.function].member
}
