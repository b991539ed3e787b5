# Firestore Security Rules: deny every web and mobile client (infra/firestore.rules,
# which the gcloud route deploys too). The functions use IAM, which rules do not
# govern. The release of the default database is `cloud.firestore`, of a named
# one `cloud.firestore/DATABASE`.
resource "google_firebaserules_ruleset" "firestore" {
  project = var.project_id

  source {
    files {
      name    = "firestore.rules"
      content = file("${path.module}/../../firestore.rules")
    }
  }

  depends_on = [google_project_service.this, google_firestore_database.this]
}

resource "google_firebaserules_release" "firestore" {
  project      = var.project_id
  name         = var.firestore_database == "(default)" ? "cloud.firestore" : "cloud.firestore/${var.firestore_database}"
  ruleset_name = "projects/${var.project_id}/rulesets/${google_firebaserules_ruleset.firestore.name}"

  # A changed rules file is a new ruleset; the release then points at it.
  lifecycle {
    replace_triggered_by = [google_firebaserules_ruleset.firestore]
  }
}
