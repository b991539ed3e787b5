# One source archive of the repository serves every function; each picks its
# entry point. Only main.py, requirements.txt and functions/ ship: tests, the
# local stack, benchmarks and infra stay out.
locals {
  source_excludes = [
    ".git", ".git/**", ".github/**", ".ci/**", ".venv/**", ".run/**", ".terraform/**",
    ".pytest_cache/**", ".hypothesis/**", "**/__pycache__/**", "**/*.pyc",
    "tests/**", "bench/**", "local/**", "infra/**", "docs/**",
    "**/*.md", ".gitignore", "Makefile", "pytest.ini", "requirements-dev.txt",
  ]
}

data "archive_file" "source" {
  type        = "zip"
  source_dir  = local.source_dir
  excludes    = local.source_excludes
  output_path = "${path.root}/.terraform/rbm-relay-source.zip"
}

resource "google_storage_bucket" "source" {
  #checkov:skip=CKV_GCP_62:Holds only build archives of public-to-the-team source; Cloud Audit Logs cover access, a log bucket would add cost and no insight.
  project                     = var.project_id
  name                        = "${var.project_id}-rbm-relay-source"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false
  labels                      = local.common_labels

  versioning {
    enabled = true
  }

  # Old archives are only needed to roll back; keep the last few.
  lifecycle_rule {
    condition {
      num_newer_versions = 5
      with_state         = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.this]
}

# Named by content, so a code change is a new object and redeploys the functions.
resource "google_storage_bucket_object" "source" {
  bucket = google_storage_bucket.source.name
  name   = "source/rbm-relay-${data.archive_file.source.output_md5}.zip"
  source = data.archive_file.source.output_path
}
