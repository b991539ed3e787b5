terraform {
  required_version = ">= 1.5.0"

  required_providers {
    # Pinned to one minor release: a provider upgrade is a reviewed change.
    google = {
      source  = "hashicorp/google"
      version = "~> 6.30.0"
    }
    # Only for google_project_service_identity (the Pub/Sub service agent).
    google-beta = {
      source  = "hashicorp/google-beta"
      version = "~> 6.30.0"
    }
    archive = {
      source  = "hashicorp/archive"
      version = "~> 2.7.0"
    }
    # time_sleep: alert policies wait until their log-based metrics are queryable.
    time = {
      source  = "hashicorp/time"
      version = "~> 0.13.0"
    }
  }
}
