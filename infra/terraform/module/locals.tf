locals {
  # The Pub/Sub topology, the Cloud Tasks queues and the composite indexes are
  # defined once, in JSON files beside the code; the gcloud script reads the same files.
  topology        = jsondecode(file("${path.module}/../../topology.json"))
  firestore_index = jsondecode(file("${path.module}/../../firestore_indexes.json"))
  # How each function runs (memory, CPU, concurrency, timeout, instances): one
  # definition, also read by the gcloud script, the local stack and the benchmarks.
  runtime = jsondecode(file("${path.module}/../../functions.json")).functions

  source_dir = coalesce(var.source_dir, abspath("${path.module}/../../.."))

  # Every function, keyed by its entry point in main.py.
  #   settings: groups of environment settings it reads (setting_groups below);
  #   secrets:  settings it reads from Secret Manager (secrets below);
  #   invoker:  who may call it: public (RBM), pubsub (push subscriptions),
  #             scheduler (Cloud Scheduler), tasks (Cloud Tasks), clients
  #             (send_message_invokers);
  #   publishes: topics it publishes to; firestore: uses the database (how:
  #             firestore_read_only below);
  #   min_instances, max_instances: a variable that overrides functions.json's
  #             number, or null.
  #
  # Sizing, whose numbers are in functions.json. Python with the Google clients
  # sits near 150-200 MiB, so 512Mi leaves room for concurrent requests.
  # Concurrency above 1 needs a whole CPU.
  #   receive_webhook: 80 concurrent requests on 1 CPU. It only verifies an
  #     HMAC and waits on a Pub/Sub publish (PUBLISH_TIMEOUT_SECONDS = 5), so it
  #     is I/O bound; high concurrency keeps instances, and cold starts, few.
  #     30 s timeout: far above 5 s, far below RBM's own retry spacing.
  #   receive_sms_status: public like the webhook (Twilio and the gateway call
  #     it without Google credentials; every callback is HMAC-verified); one
  #     Firestore read-and-commit per callback, so the webhook's sizing fits.
  #   subscribers: 8 concurrent events on 1 CPU (Firestore transactions,
  #     I/O bound but contended on hot documents); the timeout equals the
  #     subscription's ack deadline, so Pub/Sub never redelivers an event
  #     that is still being processed.
  #   send_message: 20 concurrent calls; 60 s covers RBM_RETRY_SECONDS (10)
  #     plus the Firestore writes around the call.
  #   send_batch: up to 10,000 messages (a body of up to 32 MiB, Cloud Run's
  #     request limit) parsed and held at once, so 1Gi and 4 concurrent batches;
  #     120 s covers the opt-out reads, a users.batchGet per 10,000 numbers and
  #     the bulk writes (50 commits of 200, 8 in flight) of the largest batch.
  #   revoke_expired, send_fallbacks (scheduled): one request per instance,
  #     one short pass per period: the safety net, which enqueues the task of
  #     any message overdue whose timer is missing (tasks.tf). A hung run is
  #     given up by the job's attempt deadline (one period, scheduler.tf) while
  #     it keeps its instance until the timeout, so a second instance serves
  #     the next run. 120 s timeout > SWEEP_BUDGET_SECONDS (90, a pass that acts
  #     itself, without a queue) + the last in-flight calls.
  #   process_due_work (the worker, the HTTP target of every task): one task
  #     is one message's one call into RBM or the SMS provider, so the queues'
  #     dispatch rates bound those calls (tasks.tf) and the worker only needs
  #     room for what the queues dispatch at once: 10 instances x 80
  #     concurrent tasks >= both queues' max_concurrent_dispatches (topology.json).
  #     An I/O-bound request (one Firestore claim, one call, one commit) per
  #     thread. 60 s timeout: a task's wait for its due second (at most 5 s) and
  #     a revoke's grace window, plus one RBM call at its longest (RBM_RETRY_SECONDS
  #     + 35 s); one that runs out answers 504 and the queue tries it again.
  functions = {
    receive_webhook = {
      name          = "rbm-receive-webhook"
      description   = "RBM webhook: verifies, publishes to Pub/Sub, answers fast."
      invoker       = "public"
      ingress       = "ALLOW_ALL"
      min_instances = var.webhook_min_instances
      max_instances = var.webhook_max_instances
      settings      = ["common", "publish"]
      secrets       = ["RBM_CLIENT_TOKEN"]
      publishes     = ["events"]
      firestore     = false
      schedule      = null
    }
    receive_sms_status = {
      name          = "rbm-receive-sms-status"
      description   = "SMS status callbacks: verifies them, records the SMS leg's fate on its message."
      invoker       = "public"
      ingress       = "ALLOW_ALL"
      min_instances = null
      max_instances = null
      settings      = ["common", "store", "outcomes", "sms", "sms_status"]
      secrets       = ["TWILIO_AUTH_TOKEN", "SMS_WEBHOOK_SECRET"]
      publishes     = ["outcomes"]
      firestore     = true
      schedule      = null
    }
    track_delivery = {
      name          = "rbm-track-delivery"
      description   = "Applies delivery receipts and server events to message state."
      invoker       = "pubsub"
      ingress       = "ALLOW_INTERNAL_ONLY"
      min_instances = null
      max_instances = null
      settings      = ["common", "dead_letter", "store", "outcomes", "tasks", "rbm_queue", "sms_queue"]
      secrets       = []
      publishes     = ["dead_letter", "outcomes"]
      firestore     = true
      schedule      = null
    }
    record_inbound = {
      name          = "rbm-record-inbound"
      description   = "Records user messages, typing and (un)subscribe events."
      invoker       = "pubsub"
      ingress       = "ALLOW_INTERNAL_ONLY"
      min_instances = null
      max_instances = null
      settings      = ["common", "dead_letter", "store", "outcomes", "agent", "opt_out"]
      secrets       = ["CONVERSATION_ID_KEY"]
      publishes     = ["dead_letter"] # it writes conversations, never a message: no outcome events
      firestore     = true
      schedule      = null
    }
    send_message = {
      name          = "rbm-send-message"
      description   = "Records an outbound message, then sends it through the RBM API."
      invoker       = "clients"
      ingress       = var.send_message_ingress
      min_instances = null
      max_instances = null
      settings      = ["common", "store", "outcomes", "agent", "rbm", "sms_text", "tasks", "rbm_queue", "sms_queue"]
      secrets       = ["RBM_SERVICE_ACCOUNT_KEY_FILE", "CONVERSATION_ID_KEY"]
      publishes     = ["outcomes"]
      firestore     = true
      schedule      = null
    }
    send_batch = {
      name          = "rbm-send-batch"
      description   = "Stores a batch of outbound messages; the RBM queue paces their creates."
      invoker       = "clients"
      ingress       = var.send_message_ingress
      min_instances = null
      max_instances = null
      settings      = ["common", "store", "outcomes", "agent", "rbm", "sms_text", "tasks", "rbm_queue", "sms_queue"]
      secrets       = ["RBM_SERVICE_ACCOUNT_KEY_FILE", "CONVERSATION_ID_KEY"]
      publishes     = ["outcomes"]
      firestore     = true
      schedule      = null
    }
    revoke_expired = {
      name          = "rbm-revoke-expired"
      description   = "Scheduled safety net: enqueues the revoke of any overdue message whose task is missing."
      invoker       = "scheduler"
      ingress       = "ALLOW_INTERNAL_ONLY"
      min_instances = null
      max_instances = null
      settings      = local.revoke_settings
      secrets       = []
      publishes     = ["outcomes"]
      firestore     = true
      schedule      = local.schedule
    }
    send_fallbacks = {
      name          = "rbm-send-fallbacks"
      description   = "Scheduled safety net: enqueues the SMS of any overdue message whose task is missing."
      invoker       = "scheduler"
      ingress       = "ALLOW_INTERNAL_ONLY"
      min_instances = null
      max_instances = null
      settings      = local.fallback_settings
      secrets       = []
      publishes     = []
      firestore     = true
      schedule      = local.schedule
    }
    process_due_work = {
      name          = "rbm-process-due-work"
      description   = "Worker, the target of the Cloud Tasks timers: revokes, re-sends or sends the SMS of a message."
      invoker       = "tasks"
      ingress       = "ALLOW_INTERNAL_ONLY"
      min_instances = null
      max_instances = var.worker_max_instances
      settings      = local.worker_settings
      secrets       = local.worker_secrets
      publishes     = ["outcomes"]
      firestore     = true
      schedule      = null
    }
  }

  # Each function's size from functions.json, with the instances the table above
  # overrides (null: functions.json's); a timeout of "ack_deadline" is the ack
  # deadline of the push subscription feeding it.
  ack_deadlines = { for s in local.topology.subscriptions : s.entry_point => local.topology.ack_deadline_seconds }
  sizing = {
    for ep, r in local.runtime : ep => {
      memory          = r.memory
      cpu             = r.cpu
      concurrency     = r.concurrency
      timeout_seconds = try(tonumber(r.timeout_seconds), local.ack_deadlines[ep])
      min_instances   = coalesce(local.functions[ep].min_instances, r.min_instances)
      max_instances   = coalesce(local.functions[ep].max_instances, r.max_instances)
    }
  }
  # functions-framework serves with gunicorn: WORKERS processes of THREADS threads
  # (default os.cpu_count() x 4). Cloud Run sends an instance up to its concurrency at
  # once, so each gets as many threads, in one process ("Concurrency", Cloud Run
  # functions: set THREADS equal to the concurrency value for Python).
  runtime_env = { for ep, r in local.sizing : ep => { THREADS = tostring(r.concurrency), WORKERS = "1" } }

  # A scheduled run acts itself when its duty's queue is not set, so it reads
  # every setting of its own kind of work; process_due_work does both kinds.
  # Deployed, the queue is always set: a scheduled run only queries Firestore,
  # looks its tasks up and enqueues the missing ones, so it gets no secret;
  # send_fallbacks reads the database only (firestore_read_only), while
  # revoke_expired also republishes the outcome events left in the outbox and
  # marks them published (functions/outbox.py). The worker calls RBM and the
  # SMS provider and writes the messages.
  # Timers: "tasks" (the worker's URL, the tasks identity) plus "rbm_queue" /
  # "sms_queue" for each function whose commits set timers, the queue(s) of the
  # timers it sets; each such group is also the grant to enqueue there (tasks.tf).
  # A scheduled function gets its own duty's queue only.
  revoke_settings   = ["common", "store", "outcomes", "agent", "rbm", "sweep", "revoke", "tasks", "rbm_queue"]
  fallback_settings = ["common", "store", "outcomes", "sweep", "sms", "sms_status", "tasks", "sms_queue"]
  worker_settings   = ["common", "store", "outcomes", "agent", "rbm", "sweep", "revoke", "sms", "sms_status", "tasks", "rbm_queue", "sms_queue"]
  worker_secrets    = ["RBM_SERVICE_ACCOUNT_KEY_FILE", "TWILIO_AUTH_TOKEN", "SMS_WEBHOOK_SECRET", "CONVERSATION_ID_KEY"]

  # Functions that only read the database (roles/datastore.viewer); the other
  # users of it read and write (roles/datastore.user).
  firestore_read_only = ["send_fallbacks"]

  # Cloud Scheduler's period, the one definition: the cron schedule of the
  # scheduled functions and their jobs' attempt deadline follow from it. Every
  # minute, Scheduler's finest: the safety net is late by at most one period.
  schedule_period_seconds = 60
  schedule                = "*/${local.schedule_period_seconds / 60} * * * *"

  # Environment settings by concern; a function gets the groups it lists.
  setting_groups = {
    common      = ["GOOGLE_CLOUD_PROJECT", "LOG_LEVEL"]
    publish     = ["RBM_EVENTS_TOPIC", "PUBLISH_TIMEOUT_SECONDS"]
    dead_letter = ["RBM_DEAD_LETTER_TOPIC", "PUBLISH_TIMEOUT_SECONDS"]
    store       = ["FIRESTORE_DATABASE", "RBM_MESSAGES_COLLECTION", "RBM_CONVERSATIONS_COLLECTION", "RETENTION_DAYS"]
    outcomes    = ["RBM_OUTCOMES_TOPIC", "OUTBOX_GRACE_SECONDS", "PUBLISH_TIMEOUT_SECONDS"]
    agent       = ["RBM_AGENT_ID"]
    rbm         = ["RBM_API_ENDPOINT", "RBM_RETRY_SECONDS", "PENDING_RESEND_SECONDS"]
    sweep       = ["SWEEP_PARALLELISM", "SWEEP_BUDGET_SECONDS", "LEASE_SECONDS", "RETRY_BACKOFF_SECONDS", "REVOKE_GRACE_SECONDS"]
    tasks       = ["WORKER_URL", "TASKS_SERVICE_ACCOUNT", "TASKS_TIMEOUT_SECONDS"]
    rbm_queue   = ["RBM_TASKS_QUEUE"]
    sms_queue   = ["SMS_TASKS_QUEUE"]
    revoke      = ["REVOKE_MAX_ATTEMPTS"]
    opt_out     = ["OPT_OUT_KEYWORDS", "OPT_IN_KEYWORDS"]
    sms = [
      "SMS_PROVIDER", "FALLBACK_MAX_ATTEMPTS", "SMS_WEBHOOK_URL", "TWILIO_ACCOUNT_SID", "TWILIO_FROM_NUMBER",
      "TWILIO_MESSAGING_SERVICE_SID", "TWILIO_API_BASE", "SMS_WEBHOOK_IDEMPOTENT",
    ]
    sms_text   = ["SMS_MAX_SEGMENTS"]
    sms_status = ["SMS_STATUS_CALLBACK_URL"]
  }

  # The code's defaults, repeated so that a deployment states what it runs with.
  tuning_defaults = {
    PUBLISH_TIMEOUT_SECONDS = "5"
    RBM_RETRY_SECONDS       = "10"
    PENDING_RESEND_SECONDS  = "60"
    RETENTION_DAYS          = "90"
    SWEEP_PARALLELISM       = "16"
    SWEEP_BUDGET_SECONDS    = "90"
    LEASE_SECONDS           = "120"
    RETRY_BACKOFF_SECONDS   = "30"
    REVOKE_MAX_ATTEMPTS     = "8"
    FALLBACK_MAX_ATTEMPTS   = "5"
    TASKS_TIMEOUT_SECONDS   = "5"
    REVOKE_GRACE_SECONDS    = "5"
    OUTBOX_GRACE_SECONDS    = "30"
    OPT_OUT_KEYWORDS        = "STOP,STOPALL,UNSUBSCRIBE,CANCEL,END,QUIT,REVOKE,OPTOUT"
    OPT_IN_KEYWORDS         = "START,UNSTOP,YES"
  }
  tuning = merge(local.tuning_defaults, var.tuning)

  env_values = merge(local.tuning, local.deployment_settings)
  deployment_settings = {
    GOOGLE_CLOUD_PROJECT         = var.project_id
    LOG_LEVEL                    = var.log_level
    RBM_EVENTS_TOPIC             = google_pubsub_topic.events.name
    RBM_DEAD_LETTER_TOPIC        = google_pubsub_topic.dead_letter.name
    RBM_OUTCOMES_TOPIC           = google_pubsub_topic.outcomes.name
    RBM_TASKS_QUEUE              = google_cloud_tasks_queue.this["rbm"].id
    SMS_TASKS_QUEUE              = google_cloud_tasks_queue.this["sms"].id
    TASKS_SERVICE_ACCOUNT        = google_service_account.tasks.email
    FIRESTORE_DATABASE           = var.firestore_database
    RBM_MESSAGES_COLLECTION      = var.messages_collection
    RBM_CONVERSATIONS_COLLECTION = var.conversations_collection
    RBM_AGENT_ID                 = var.rbm_agent_id
    RBM_API_ENDPOINT             = var.rbm_api_endpoint
    SMS_PROVIDER                 = var.sms_provider
    SMS_WEBHOOK_URL              = var.sms_provider == "webhook" ? var.sms_webhook_url : ""
    SMS_WEBHOOK_IDEMPOTENT       = var.sms_provider == "webhook" && var.sms_webhook_idempotent ? "true" : ""
    SMS_MAX_SEGMENTS             = var.sms_max_segments == null ? "" : tostring(var.sms_max_segments)
    TWILIO_ACCOUNT_SID           = var.sms_provider == "twilio" ? var.twilio.account_sid : ""
    TWILIO_FROM_NUMBER           = var.sms_provider == "twilio" ? var.twilio.from_number : ""
    TWILIO_MESSAGING_SERVICE_SID = var.sms_provider == "twilio" ? var.twilio.messaging_service_sid : ""
    TWILIO_API_BASE              = var.sms_provider == "twilio" ? var.twilio.api_base : ""

    # receive_sms_status's URL: the senders pass it as StatusCallback, and it checks
    # Twilio's signatures against it.
    SMS_STATUS_CALLBACK_URL = var.sms_provider == "" ? "" : local.run_url.receive_sms_status
    # process_due_work's URL: every task's target and its OIDC token's audience. The
    # functions that set timers need it, the worker itself too (its commits set the
    # next timers), so it must be known before any function exists: the service's
    # own uri (service_config[0].uri) would make the functions depend on themselves.
    WORKER_URL = local.run_url.process_due_work
  }

  # Each function's Cloud Run URL in its deterministic form, which "lets you predict
  # the service URL before the service is created" (Cloud Run, HTTPS requests,
  # "Deterministic URL"): https://NAME-PROJECT_NUMBER.REGION.run.app.
  run_url = { for ep, f in local.functions : ep => "https://${f.name}-${data.google_project.this.number}.${var.region}.run.app" }

  # Each function's environment; an empty value is left out (the code then
  # uses its default, exactly as for an unset variable).
  function_env = {
    for ep, f in local.functions : ep => merge({
      for name in distinct(flatten([for g in f.settings : local.setting_groups[g]])) :
      name => local.env_values[name] if local.env_values[name] != ""
    }, local.runtime_env[ep])
  }

  # Settings that come from Secret Manager: environment name -> secret id.
  # A secret is created (and mounted) only when the configuration uses it.
  # CONVERSATION_ID_KEY keys conversation ids (HMAC), read by the functions that
  # compute them; never rotated in place (README, "Conversation ids").
  secrets = {
    RBM_CLIENT_TOKEN             = { secret_id = "rbm-client-token", enabled = true }
    CONVERSATION_ID_KEY          = { secret_id = "rbm-conversation-id-key", enabled = true }
    RBM_SERVICE_ACCOUNT_KEY_FILE = { secret_id = "rbm-service-account-key", enabled = var.rbm_key_from_secret }
    TWILIO_AUTH_TOKEN            = { secret_id = "rbm-twilio-auth-token", enabled = var.sms_provider == "twilio" }
    SMS_WEBHOOK_SECRET           = { secret_id = "rbm-sms-webhook-secret", enabled = var.sms_provider == "webhook" }
  }
  enabled_secrets = { for name, s in local.secrets : name => s.secret_id if s.enabled }

  # Secrets mounted as a file rather than read into a variable: setting -> the
  # file's path, which is the setting's value. A mounted secret is read from
  # Secret Manager when the file is read, so it follows "latest" (a key rotated
  # or disabled there reaches every new client), where a variable keeps the
  # version its instance started with (Secret Manager's best practices).
  secret_files = {
    RBM_SERVICE_ACCOUNT_KEY_FILE = "/etc/secrets/rbm/key.json"
  }
  # Each function's mounted secrets, by setting: what it adds to its environment.
  secret_file_env = {
    for ep, f in local.functions : ep => {
      for name in f.secrets : name => local.secret_files[name]
      if contains(keys(local.enabled_secrets), name) && contains(keys(local.secret_files), name)
    }
  }

  # (function, secret) pairs for the accessor bindings.
  secret_access = merge([
    for ep, f in local.functions : {
      for name in f.secrets : "${ep}/${name}" => { function = ep, secret = name } if contains(keys(local.enabled_secrets), name)
    }
  ]...)

  subscriptions = { for s in local.topology.subscriptions : s.name => s }

  common_labels = merge(var.labels, { app = "rbm-relay" })
}
