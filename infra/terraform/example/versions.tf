terraform {
  required_version = ">= 1.5.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 6.30.0"
    }
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

  # Keep the state in a bucket shared by whoever deploys, e.g.:
  # backend "gcs" {
  #   bucket = "my-project-tfstate"
  #   prefix = "rbm-relay"
  # }
}

provider "google" {
  project = var.project_id
  region  = var.region
}

provider "google-beta" {
  project = var.project_id
  region  = var.region
}
