# The functions' images, in a repository of their own: the build account may
# push here and nowhere else in the project. Without it Cloud Functions uses
# `gcf-artifacts`, which a build could only write to with a project-wide role.
resource "google_artifact_registry_repository" "functions" {
  #checkov:skip=CKV_GCP_84:Google-managed encryption at rest, as for the topics; the images are built from the source archive and hold no data.
  project       = var.project_id
  location      = var.region
  repository_id = "rbm-relay-functions"
  format        = "DOCKER"
  description   = "rbm-relay function images, written by the rbm-build account only."
  labels        = local.common_labels

  depends_on = [google_project_service.this]
}

resource "google_artifact_registry_repository_iam_member" "build" {
  project    = var.project_id
  location   = var.region
  repository = google_artifact_registry_repository.functions.name
  role       = "roles/artifactregistry.writer"
  member     = google_service_account.build.member
}
