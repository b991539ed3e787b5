resource "google_firestore_database" "this" {
  count = var.create_firestore_database ? 1 : 0

  project                           = var.project_id
  name                              = var.firestore_database
  location_id                       = coalesce(var.firestore_location, var.region)
  type                              = "FIRESTORE_NATIVE"
  concurrency_mode                  = "PESSIMISTIC"
  app_engine_integration_mode       = "DISABLED"
  point_in_time_recovery_enablement = "POINT_IN_TIME_RECOVERY_ENABLED"
  delete_protection_state           = "DELETE_PROTECTION_ENABLED"
  # Removing the module never deletes the data.
  deletion_policy = "ABANDON"

  depends_on = [google_project_service.this]
}

# The composite indexes of the sweeps' queries, from infra/firestore_indexes.json.
# The JSON names collections by their default names; a renamed collection
# (messages_collection / conversations_collection) is followed here.
locals {
  collection_names = {
    rbm_messages      = var.messages_collection
    rbm_conversations = var.conversations_collection
  }
}

resource "google_firestore_index" "this" {
  for_each = { for i in local.firestore_index : "${i.collection}/${join(",", i.fields)}" => i }

  project     = var.project_id
  database    = var.firestore_database
  collection  = lookup(local.collection_names, each.value.collection, each.value.collection)
  query_scope = "COLLECTION"

  dynamic "fields" {
    for_each = each.value.fields
    content {
      field_path = fields.value
      order      = "ASCENDING"
    }
  }

  depends_on = [google_firestore_database.this]
}

# Old documents expire through TTL on `expire_at` (the code sets it on every
# write): messages, conversations, the `messages` collection group under
# conversations, and the outcome events' outbox. The field is exempt from single-field indexing: nothing
# queries it, and an index on an ever-growing timestamp only costs writes.
resource "google_firestore_field" "ttl" {
  for_each = toset([var.messages_collection, var.conversations_collection, "messages", "rbm_outcomes"])

  project    = var.project_id
  database   = var.firestore_database
  collection = each.value
  field      = "expire_at"

  ttl_config {}
  index_config {}

  depends_on = [google_firestore_database.this]
}
