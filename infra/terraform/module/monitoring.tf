# Log-based metrics count the functions' structured log lines by their
# jsonPayload.event (infra/README.md lists them), alert policies watch the ones
# that mean trouble, and a dashboard shows the delivery funnel.

locals {
  log_events = {
    signature_rejected  = "Webhook requests rejected for a bad or missing X-Goog-Signature, or a handshake with an unknown client token."
    event_published     = "RBM events the webhook published to Pub/Sub."
    message_sent        = "Messages the RBM API accepted from send_message or a re-send."
    batch_message_sent  = "Batch messages the RBM API accepted (send_batch's creates, paced by the RBM queue)."
    receipt_delivered   = "DELIVERED receipts applied to a message."
    receipt_read        = "READ receipts applied to a message."
    message_revoked     = "Messages revoked after their deadline (process_due_work)."
    sms_sent            = "SMS fallbacks sent."
    fallback_unknown    = "SMS sends interrupted with an unknown outcome: never retried, check by hand."
    event_dead_lettered = "Events a subscriber could not process and dead-lettered, with the reason."
    timer_not_set       = "Timers a function could not enqueue on Cloud Tasks: the message stays due and the next scheduled pass enqueues it, up to a minute late."
  }
  # Events a metric counts besides the one it is named after: a handshake with an
  # unknown client token fails a credential as a bad signature does, so token
  # guessing raises the same alert.
  # message_sent counts a batch message's create too.
  log_events_also = { signature_rejected = ["handshake_rejected"], message_sent = ["batch_message_sent"] }

  # The functions' Cloud Run services in a Logging filter (the log-based
  # metrics) and in a Monitoring filter (the charts), which has no ("a" OR "b")
  # value lists: there a full-match regex names them.
  log_service_filter = "resource.type=\"cloud_run_revision\" AND resource.labels.service_name=(${join(" OR ", [for f in local.functions : "\"${f.name}\""])})"
  service_filter     = "resource.type=\"cloud_run_revision\" AND resource.labels.service_name=monitoring.regex.full_match(\"${join("|", [for f in local.functions : f.name])}\")"
}

resource "google_logging_metric" "event" {
  for_each = local.log_events

  project     = var.project_id
  name        = "rbm_relay/${each.key}"
  description = each.value
  filter      = "${local.log_service_filter} AND jsonPayload.event=(${join(" OR ", formatlist("\"%s\"", concat([each.key], lookup(local.log_events_also, each.key, []))))})"

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "INT64"
    unit         = "1"
    display_name = "rbm-relay ${replace(each.key, "_", " ")}"
  }

  depends_on = [google_project_service.this]
}

# An alert policy on a log-based metric is refused until the metric is
# queryable, which the Monitoring API says can take up to 10 minutes after the
# metric is created ("Cannot find metric(s) that match type ... it could take
# up to 10 minutes to become available"). The policies wait that long after
# the first apply creates the metrics, and again whenever a metric is added;
# the functions build meanwhile, so a first apply takes about 12 minutes.
resource "time_sleep" "log_metrics_queryable" {
  create_duration = "10m"
  triggers = {
    metrics = join(",", sort([for m in google_logging_metric.event : m.name]))
  }
}

locals {
  log_metric = { for k, m in google_logging_metric.event : k => "metric.type=\"logging.googleapis.com/user/${m.name}\" AND resource.type=\"cloud_run_revision\"" }

  alerts = {
    signature_rejected = {
      title     = "rbm-relay: webhook signatures rejected"
      severity  = "WARNING"
      filter    = local.log_metric.signature_rejected
      aligner   = "ALIGN_SUM"
      threshold = var.signature_rejections_threshold
      doc       = "Many webhook requests failed X-Goog-Signature verification, or handshakes named an unknown client token (someone guessing tokens). A rotated client token not yet in the secret rbm-client-token is the usual cause; RBM keeps retrying, so events are delayed, not lost. Query: jsonPayload.event=(\"signature_rejected\" OR \"handshake_rejected\")."
    }
    fallback_unknown = {
      title     = "rbm-relay: SMS fallback outcome unknown"
      severity  = "ERROR"
      filter    = local.log_metric.fallback_unknown
      aligner   = "ALIGN_SUM"
      threshold = 0
      doc       = "An SMS send was interrupted and its outcome cannot be known; it is never retried automatically. Check the provider's log for the message id and settle it by hand. Query: jsonPayload.event=\"fallback_unknown\"."
    }
    event_dead_lettered = {
      title     = "rbm-relay: events dead-lettered by a subscriber"
      severity  = "ERROR"
      filter    = local.log_metric.event_dead_lettered
      aligner   = "ALIGN_SUM"
      threshold = 0
      doc       = "A subscriber found an event it can never process and dead-lettered it with a reason. Query: jsonPayload.event=\"event_dead_lettered\"; the message waits in the subscription ${local.topology.dead_letter_subscription} for replay."
    }
    timer_not_set = {
      title     = "rbm-relay: timers not set"
      severity  = "WARNING"
      filter    = local.log_metric.timer_not_set
      aligner   = "ALIGN_SUM"
      threshold = 0
      doc       = "A function could not create the Cloud Tasks task of a message's timer (jsonPayload.event=\"timer_not_set\", with the message id, duty and reason). The message stays due in Firestore and the next scheduled pass enqueues it, up to one period late, so revokes and SMS come late, not lost. A steady count means every timer fails: look at the reason (a function without roles/cloudtasks.enqueuer on its queue or roles/iam.serviceAccountUser on rbm-tasks, a deleted queue; a paused queue still takes tasks, it only holds them)."
    }
    dead_letter_backlog = {
      title     = "rbm-relay: dead-letter backlog"
      severity  = "ERROR"
      filter    = "metric.type=\"pubsub.googleapis.com/subscription/num_undelivered_messages\" AND resource.type=\"pubsub_subscription\" AND resource.labels.subscription_id=\"${google_pubsub_subscription.dead_letter_inspect.name}\""
      aligner   = "ALIGN_MAX"
      threshold = 0
      doc       = "Messages wait in ${local.topology.dead_letter_subscription}: dead-lettered by a subscriber, or by Pub/Sub after ${local.topology.max_delivery_attempts} failed pushes (a subscriber crashing or erroring on every attempt). Inspect, fix, replay."
    }
    webhook_errors = {
      title     = "rbm-relay: webhook answering 5xx"
      severity  = "ERROR"
      filter    = "metric.type=\"run.googleapis.com/request_count\" AND resource.type=\"cloud_run_revision\" AND resource.labels.service_name=\"${local.functions.receive_webhook.name}\" AND metric.labels.response_code_class=\"5xx\""
      aligner   = "ALIGN_SUM"
      threshold = 5
      doc       = "The webhook answers 503 when Pub/Sub does not confirm a publish (jsonPayload.event=\"publish_failed\"). RBM retries, but its queue is shared by every agent of the partner: a failing webhook delays all of them."
    }
  }
}

resource "google_monitoring_alert_policy" "this" {
  for_each = local.alerts

  project               = var.project_id
  display_name          = each.value.title
  combiner              = "OR"
  severity              = each.value.severity
  notification_channels = var.notification_channels
  user_labels           = local.common_labels

  conditions {
    display_name = each.value.title

    condition_threshold {
      filter          = each.value.filter
      comparison      = "COMPARISON_GT"
      threshold_value = each.value.threshold
      duration        = "0s"

      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = each.value.aligner
        cross_series_reducer = "REDUCE_SUM"
      }

      trigger {
        count = 1
      }
    }
  }

  alert_strategy {
    auto_close = "1800s"
  }

  documentation {
    content   = each.value.doc
    mime_type = "text/markdown"
  }

  depends_on = [time_sleep.log_metrics_queryable]
}

# Dashboard: the delivery funnel first, then the signs of trouble. Counters
# are summed per 5 minutes; gauges (ages, backlogs) show their maximum.
locals {
  dashboard_charts = [
    {
      title  = "Delivery funnel (per 5 min)"
      gauge  = false
      series = { for k in ["message_sent", "receipt_delivered", "receipt_read", "message_revoked", "sms_sent"] : k => local.log_metric[k] }
    },
    {
      title  = "Batch throughput: creates of batch messages (per 5 min)"
      gauge  = false
      series = { batch_message_sent = local.log_metric.batch_message_sent }
    },
    {
      title  = "Webhook: events published, signatures rejected"
      gauge  = false
      series = { for k in ["event_published", "signature_rejected"] : k => local.log_metric[k] }
    },
    {
      title  = "Needs a person: fallbacks UNKNOWN, events dead-lettered"
      gauge  = false
      series = { for k in ["fallback_unknown", "event_dead_lettered"] : k => local.log_metric[k] }
    },
    {
      title = "Function 5xx responses"
      gauge = false
      series = {
        "5xx" = "metric.type=\"run.googleapis.com/request_count\" AND ${local.service_filter} AND metric.labels.response_code_class=\"5xx\""
      }
    },
    {
      title = "Push subscriptions: oldest unacked event age (s)"
      gauge = true
      series = {
        for name, s in google_pubsub_subscription.push : name => "metric.type=\"pubsub.googleapis.com/subscription/oldest_unacked_message_age\" AND resource.type=\"pubsub_subscription\" AND resource.labels.subscription_id=\"${s.name}\""
      }
    },
    {
      # Timers waiting, due or not: a queue that only grows is a worker that fails its tasks.
      title = "Cloud Tasks queues: tasks waiting"
      gauge = true
      series = {
        for key, q in google_cloud_tasks_queue.this : q.name => "metric.type=\"cloudtasks.googleapis.com/queue/depth\" AND resource.type=\"cloud_tasks_queue\" AND resource.labels.queue_id=\"${q.name}\""
      }
    },
    {
      title = "Dead-letter backlog"
      gauge = true
      series = {
        backlog = local.alerts.dead_letter_backlog.filter
      }
    },
  ]
}

resource "google_monitoring_dashboard" "funnel" {
  project = var.project_id
  dashboard_json = jsonencode({
    displayName = "rbm-relay: delivery"
    mosaicLayout = {
      columns = 48
      tiles = [
        for i, chart in local.dashboard_charts : {
          xPos   = (i % 2) * 24
          yPos   = floor(i / 2) * 16
          width  = 24
          height = 16
          widget = {
            title = chart.title
            xyChart = {
              dataSets = [
                for label, filter in chart.series : {
                  plotType       = "LINE"
                  legendTemplate = label
                  targetAxis     = "Y1"
                  timeSeriesQuery = {
                    timeSeriesFilter = {
                      filter = filter
                      aggregation = {
                        alignmentPeriod    = "300s"
                        perSeriesAligner   = chart.gauge ? "ALIGN_MAX" : "ALIGN_SUM"
                        crossSeriesReducer = chart.gauge ? "REDUCE_MAX" : "REDUCE_SUM"
                      }
                    }
                  }
                }
              ]
            }
          }
        }
      ]
    }
  })

  depends_on = [time_sleep.log_metrics_queryable]
}
