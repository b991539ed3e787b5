# One source archive serves every function; each picks its entry point. It
# holds exactly the files infra/source_files.json lists (main.py,
# requirements.txt, functions/**/*.py), never "the tree less some excludes":
# virtualenvs, caches, key files and anything else in the working tree stay out.
#
# The files go in as `source` blocks: the archive provider writes those in
# name order with no timestamp and no file mode, so the same code gives the
# same archive, and the same object name, on every machine.
locals {
  source_patterns = jsondecode(file("${path.module}/../../source_files.json")).patterns
  source_files    = sort(distinct(flatten([for p in local.source_patterns : tolist(fileset(local.source_dir, p))])))
}

data "archive_file" "source" {
  type        = "zip"
  output_path = "${path.root}/.terraform/rbm-relay-source.zip"

  dynamic "source" {
    for_each = local.source_files
    content {
      filename = source.value
      content  = file("${local.source_dir}/${source.value}")
    }
  }
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

  # Versioning keeps a deleted archive recoverable for a week.
  versioning {
    enabled = true
  }

  # Each archive has a name of its own (its hash), so rules on "newer
  # versions" never fire: archives expire by age instead, the same rules as the
  # gcloud route (infra/source_bucket_lifecycle.json). An archive the
  # functions still use is uploaded again by the next apply (the object is
  # gone from the refreshed state), and a running function never reads it.
  dynamic "lifecycle_rule" {
    for_each = jsondecode(file("${path.module}/../../source_bucket_lifecycle.json")).rule
    content {
      action {
        type = lifecycle_rule.value.action.type
      }
      condition {
        age                        = lookup(lifecycle_rule.value.condition, "age", null)
        matches_prefix             = lookup(lifecycle_rule.value.condition, "matchesPrefix", null)
        days_since_noncurrent_time = lookup(lifecycle_rule.value.condition, "daysSinceNoncurrentTime", null)
      }
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
