#!/usr/bin/env bash
# Deploys rbm-relay with gcloud alone: the resources infra/terraform/module
# declares, created when missing and updated when present, so running it
# again is safe.
#
#   infra/gcloud/deploy.sh [--dry-run] [--project ID] [--region REGION]
#
# --dry-run   prints every gcloud command the script would run on stdout, in
#             order, one per line, shell-quoted, and runs none. Commands that
#             change something are plain lines; the look-ups a real run makes
#             are "# check: gcloud ..." (does it exist?) and "# query: gcloud ..."
#             (what is there?) lines. It shows a deployment into an empty
#             project: checks answer "missing", queries answer nothing (secret
#             values answer "present"), function URLs take their run.app form
#             https://NAME-PROJECT_NUMBER.REGION.run.app. Same input and source
#             tree, same output.
#
# Needs the gcloud alpha and beta components (alert policies exist only under
# `gcloud alpha monitoring policies`, the Pub/Sub and Cloud Tasks service
# agents only under `gcloud beta services identity`); the script checks for
# both before it changes anything.
#
# Configuration comes from the environment; the flags above win. The
# functions' own settings keep their names (see infra/README.md):
#   PROJECT (required)          project id
#   REGION                      default europe-west1
#   PROJECT_NUMBER              looked up when unset
#   RBM_AGENT_ID (required)     default agent of send_message
#   RBM_API_ENDPOINT            default https://rcsbusinessmessaging.googleapis.com
#   RBM_KEY_FROM_SECRET         true: RBM calls use the key in secret rbm-service-account-key
#                               (default false: the functions' own identity)
#   SMS_PROVIDER                twilio | webhook | empty (no SMS fallback)
#   TWILIO_ACCOUNT_SID, TWILIO_FROM_NUMBER, TWILIO_MESSAGING_SERVICE_SID, TWILIO_API_BASE
#   SMS_WEBHOOK_URL, SMS_WEBHOOK_IDEMPOTENT (true: the gateway honours Idempotency-Key)
#   SMS_MAX_SEGMENTS            the gateway's limit on segments per SMS (send_message); empty: none
#   FIRESTORE_DATABASE          default (default); CREATE_FIRESTORE_DATABASE default true
#   FIRESTORE_LOCATION          default REGION
#   RBM_MESSAGES_COLLECTION, RBM_CONVERSATIONS_COLLECTION, LOG_LEVEL
#   PUBLISH_TIMEOUT_SECONDS, RBM_RETRY_SECONDS, PENDING_RESEND_SECONDS, RETENTION_DAYS,
#   SWEEP_PARALLELISM, SWEEP_BUDGET_SECONDS, LEASE_SECONDS, RETRY_BACKOFF_SECONDS,
#   REVOKE_MAX_ATTEMPTS, FALLBACK_MAX_ATTEMPTS, REVOKE_GRACE_SECONDS,
#   OUTBOX_GRACE_SECONDS, TASKS_TIMEOUT_SECONDS
#                                                   tuning; the code's defaults otherwise
#   OPT_OUT_KEYWORDS, OPT_IN_KEYWORDS                comma-separated typed keywords (README, Opt-out)
#   WEBHOOK_MIN_INSTANCES, WEBHOOK_MAX_INSTANCES   default infra/functions.json's (0, 20)
#   WORKER_MAX_INSTANCES        default infra/functions.json's (10): process_due_work instances; × 80 (its concurrency) they
#                               hold what both queues dispatch at once (infra/README.md, "Sizing the worker")
#   RBM_MAX_CALLS_PER_SECOND    the most RBM calls per second of the due work, your agent's quota: the rbm
#                               queue's dispatch rate (default infra/topology.json's, 50; above 0, at most 500)
#   SMS_MAX_SENDS_PER_SECOND    the most SMS provider calls per second of the fallbacks: the sms queue's
#                               dispatch rate (default infra/topology.json's, 20; above 0, at most 500)
#   SEND_MESSAGE_INVOKERS       comma-separated IAM members allowed to call send_message
#   SEND_MESSAGE_INGRESS        all (default) | internal-only | internal-and-gclb
#   OUTCOMES_PUSH_ENDPOINT      the sender's https endpoint the outcome events are pushed to
#                               (default empty: no push subscription); OUTCOMES_PUSH_AUDIENCE
#                               the OIDC token's audience (default the endpoint)
#   NOTIFICATION_CHANNELS (required, may be empty)  comma-separated notification channel
#                               ids for the alerts; set it empty to deploy alerts that notify nobody
#   SIGNATURE_REJECTIONS_THRESHOLD  default 10 per 5 minutes
#   PYTHON_RUNTIME              default python312
#
# Secrets are never passed to this script: add their values with
#   printf '%s' "$VALUE" | gcloud secrets versions add SECRET_ID --data-file=-
# The script creates the secrets and stops before deploying a function whose
# secret has no value yet; run it again once the values are in.

# shellcheck disable=SC2034 # the functions' settings are read by name, as ${!name}
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT" # files are named relative to the repository, in the commands and in the dry run
DRY_RUN=0
exec 3>&1   # the dry run's listing, also from inside $(...)

while (($#)); do
  case $1 in
    --dry-run) DRY_RUN=1 ;;
    --project) PROJECT=$2; shift ;;
    --project=*) PROJECT=${1#*=} ;;
    --region) REGION=$2; shift ;;
    --region=*) REGION=${1#*=} ;;
    -h | --help) sed -n '2,/^$/{/^$/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

die() { echo "deploy.sh: $*" >&2; exit 1; }

: "${PROJECT:?set PROJECT (or --project)}"
: "${RBM_AGENT_ID:?set RBM_AGENT_ID}"
: "${NOTIFICATION_CHANNELS?set NOTIFICATION_CHANNELS: comma-separated notification channel ids, or empty for alerts that notify nobody}"
REGION=${REGION:-europe-west1}
RBM_API_ENDPOINT=${RBM_API_ENDPOINT:-https://rcsbusinessmessaging.googleapis.com}
RBM_KEY_FROM_SECRET=${RBM_KEY_FROM_SECRET:-false}
SMS_PROVIDER=${SMS_PROVIDER:-}
SMS_WEBHOOK_IDEMPOTENT=${SMS_WEBHOOK_IDEMPOTENT:-}
SMS_MAX_SEGMENTS=${SMS_MAX_SEGMENTS:-}
FIRESTORE_DATABASE=${FIRESTORE_DATABASE:-(default)}
FIRESTORE_LOCATION=${FIRESTORE_LOCATION:-$REGION}
CREATE_FIRESTORE_DATABASE=${CREATE_FIRESTORE_DATABASE:-true}
RBM_MESSAGES_COLLECTION=${RBM_MESSAGES_COLLECTION:-rbm_messages}
RBM_CONVERSATIONS_COLLECTION=${RBM_CONVERSATIONS_COLLECTION:-rbm_conversations}
LOG_LEVEL=${LOG_LEVEL:-INFO}
PUBLISH_TIMEOUT_SECONDS=${PUBLISH_TIMEOUT_SECONDS:-5}
RBM_RETRY_SECONDS=${RBM_RETRY_SECONDS:-10}
PENDING_RESEND_SECONDS=${PENDING_RESEND_SECONDS:-60}
RETENTION_DAYS=${RETENTION_DAYS:-90}
SWEEP_PARALLELISM=${SWEEP_PARALLELISM:-16}
SWEEP_BUDGET_SECONDS=${SWEEP_BUDGET_SECONDS:-90}
LEASE_SECONDS=${LEASE_SECONDS:-120}
RETRY_BACKOFF_SECONDS=${RETRY_BACKOFF_SECONDS:-30}
REVOKE_MAX_ATTEMPTS=${REVOKE_MAX_ATTEMPTS:-8}
FALLBACK_MAX_ATTEMPTS=${FALLBACK_MAX_ATTEMPTS:-5}
REVOKE_GRACE_SECONDS=${REVOKE_GRACE_SECONDS:-5}
OUTBOX_GRACE_SECONDS=${OUTBOX_GRACE_SECONDS:-30}
TASKS_TIMEOUT_SECONDS=${TASKS_TIMEOUT_SECONDS:-5}
OPT_OUT_KEYWORDS=${OPT_OUT_KEYWORDS:-STOP,STOPALL,UNSUBSCRIBE,CANCEL,END,QUIT,REVOKE,OPTOUT}
OPT_IN_KEYWORDS=${OPT_IN_KEYWORDS:-START,UNSTOP,YES}
WEBHOOK_MIN_INSTANCES=${WEBHOOK_MIN_INSTANCES:-}
WEBHOOK_MAX_INSTANCES=${WEBHOOK_MAX_INSTANCES:-}
WORKER_MAX_INSTANCES=${WORKER_MAX_INSTANCES:-}
SEND_MESSAGE_INVOKERS=${SEND_MESSAGE_INVOKERS:-}
SEND_MESSAGE_INGRESS=${SEND_MESSAGE_INGRESS:-all}
OUTCOMES_PUSH_ENDPOINT=${OUTCOMES_PUSH_ENDPOINT:-}
OUTCOMES_PUSH_AUDIENCE=${OUTCOMES_PUSH_AUDIENCE:-$OUTCOMES_PUSH_ENDPOINT}
[[ -z $OUTCOMES_PUSH_ENDPOINT || $OUTCOMES_PUSH_ENDPOINT == https://* ]] ||
  die "OUTCOMES_PUSH_ENDPOINT must be an https:// URL (Pub/Sub pushes with an OIDC token only over HTTPS)"
SIGNATURE_REJECTIONS_THRESHOLD=${SIGNATURE_REJECTIONS_THRESHOLD:-10}
PYTHON_RUNTIME=${PYTHON_RUNTIME:-python312}

# The settings of a provider not in use are dropped, as in Terraform.
case $SMS_PROVIDER in
  twilio) SMS_WEBHOOK_URL='' SMS_WEBHOOK_IDEMPOTENT='' TWILIO_API_BASE=${TWILIO_API_BASE:-https://api.twilio.com} ;;
  webhook) TWILIO_ACCOUNT_SID='' TWILIO_FROM_NUMBER='' TWILIO_MESSAGING_SERVICE_SID='' TWILIO_API_BASE='' ;;
  "") SMS_WEBHOOK_URL='' SMS_WEBHOOK_IDEMPOTENT='' TWILIO_ACCOUNT_SID='' TWILIO_FROM_NUMBER='' TWILIO_MESSAGING_SERVICE_SID='' TWILIO_API_BASE='' ;;
  *) die "SMS_PROVIDER must be twilio, webhook or empty" ;;
esac

# Cloud Scheduler's period in seconds, the one definition (as in locals.tf): the
# cron schedule of the scheduled functions (the safety net, one short pass each)
# and their jobs' attempt deadline. Not a setting of the code any more.
SCHEDULE_PERIOD=60
SCHEDULE="*/$((SCHEDULE_PERIOD / 60)) * * * *"
# A job's attempt deadline is one period; Cloud Scheduler takes 15 s to 30 minutes for an HTTP target.
((SCHEDULE_PERIOD >= 15 && SCHEDULE_PERIOD <= 1800)) || die "the scheduler period must be 15 s to 30 minutes"
[[ -z $WORKER_MAX_INSTANCES ]] || ((WORKER_MAX_INSTANCES >= 1)) || die "WORKER_MAX_INSTANCES must be at least 1"

# --- printing and running -----------------------------------------------------

# Shell-quotes words only where needed, so the dry run reads like a script.
quote() {
  local out=() w
  for w in "$@"; do
    if [[ $w =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then out+=("$w"); else out+=("'${w//\'/\'\\\'\'}'"); fi
  done
  printf '%s\n' "${out[*]}"
}

# Runs a command that changes something (prints it only, in a dry run).
run() {
  if ((DRY_RUN)); then quote "$@" >&3; else printf '+ %s' "$(quote "$@")" >&2; echo >&2; "$@"; fi
}

# run, again every 60 s while it fails, for up to 10 minutes: for what Google
# only accepts some minutes after a dependency was created.
run_patiently() {
  local attempt
  for attempt in {1..10}; do
    if run "$@"; then return 0; fi
    if ((attempt < 10)); then echo "deploy.sh: failed; trying again in 60 s ($attempt/10)" >&2; sleep 60; fi
  done
  return 1
}

# True when a look-up command succeeds; a dry run assumes nothing exists.
exists() {
  if ((DRY_RUN)); then echo "# check: $(quote "$@")" >&3; return 1; fi
  "$@" >/dev/null 2>&1
}

# Output of a look-up command; in a dry run, the given stand-in ($1).
query() {
  local stand_in=$1; shift
  if ((DRY_RUN)); then echo "# query: $(quote "$@")" >&3; printf '%s\n' "$stand_in"; else "$@"; fi
}

# Stops before any change when the installed gcloud lacks a command group.
require() {
  if ((DRY_RUN)); then echo "# check: $(quote "$@" --help)" >&3; return; fi
  "$@" --help >/dev/null 2>&1 ||
    die "this script needs \`$*\`: install the gcloud component (gcloud components install ${2:-alpha}; apt/yum installs of google-cloud-cli include it)"
}

# JSON files, source archives and monitoring definitions are handled in Python.
py() { python3 -c "$PYHELPER" "$@"; }
PYHELPER=$(cat <<'PY'
import hashlib, io, json, pathlib, shlex, sys, zipfile

cmd, args = sys.argv[1], sys.argv[2:]

def sh(name, value):
    if isinstance(value, list):
        print(f"{name}=({' '.join(shlex.quote(str(v)) for v in value)})")
    else:
        print(f"{name}={shlex.quote(str(value))}")

def source_files(root, listing):
    """The deployed files: those the patterns of infra/source_files.json match, as Terraform's fileset()."""
    base = pathlib.Path(root)
    patterns = json.load(open(listing))["patterns"]
    return sorted({p.relative_to(base).as_posix() for pattern in patterns for p in base.glob(pattern) if p.is_file()})

if cmd == "config":  # topology.json, firestore_indexes.json and functions.json as shell variables
    topology, indexes, runtime = (json.load(open(p)) for p in args)
    for key in ("events_topic", "dead_letter_topic", "dead_letter_subscription", "max_delivery_attempts",
                "ack_deadline_seconds", "minimum_backoff", "maximum_backoff", "message_retention", "outcomes_topic"):
        sh(key.upper(), topology[key])
    for key in ("name", "entry_point", "filter"):
        sh(f"SUB_{key.upper()}S", [s[key] for s in topology["subscriptions"]])
    sh("QUEUE_KEYS", list(topology["queues"]))
    for key, queue in topology["queues"].items():
        for field, value in queue.items():
            sh(f"QUEUE_{key.upper()}_{field.upper()}", value)
    for key, value in topology["outcomes_push"].items():
        sh(f"OUTCOMES_PUSH_{key.upper()}", value)
    sh("INDEX_COLLECTIONS", [i["collection"] for i in indexes])
    sh("INDEX_FIELDS", [",".join(i["fields"]) for i in indexes])
    # Each function's "memory cpu concurrency timeout min max"; an "ack_deadline" timeout is
    # that of the push subscription feeding it.
    ack = {s["entry_point"]: topology["ack_deadline_seconds"] for s in topology["subscriptions"]}
    sizes = {ep: " ".join(str(v) for v in (
        r["memory"], r["cpu"], r["concurrency"],
        ack[ep] if r["timeout_seconds"] == "ack_deadline" else r["timeout_seconds"],
        r["min_instances"], r["max_instances"])) for ep, r in runtime["functions"].items()}
    print("declare -A SIZING=(" + " ".join(f"[{ep}]={shlex.quote(v)}" for ep, v in sizes.items()) + ")")
elif cmd in ("source-hash", "source-zip"):  # root, infra/source_files.json: the deployed source
    root, listing = args
    files = source_files(root, listing)
    if cmd == "source-hash":  # of names and contents, so the same code has the same name everywhere
        digest = hashlib.sha256()
        for f in files:
            digest.update(f.encode() + b"\0" + (pathlib.Path(root) / f).read_bytes() + b"\0")
        print(digest.hexdigest()[:16])
    else:  # name order, a fixed timestamp and mode: no machine's checkout or umask shows through
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for f in files:
                info = zipfile.ZipInfo(f, date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = 0o100644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, (pathlib.Path(root) / f).read_bytes())
        sys.stdout.buffer.write(buffer.getvalue())
elif cmd == "rules-source":  # infra/firestore.rules -> a Firebase Rules Source (REST JSON)
    print(json.dumps({"files": [{"name": "firestore.rules", "content": open(args[0]).read()}]}, sort_keys=True))
elif cmd == "same-rules":  # rules source JSON; the release's ruleset (JSON on stdin): answers "yes" or "no"
    text = sys.stdin.read().strip()
    print("yes" if text and json.loads(text).get("source") == json.loads(args[0]) else "no")
elif cmd == "members":  # role: members of a role in an IAM policy (JSON on stdin)
    text = sys.stdin.read().strip()
    for binding in json.loads(text).get("bindings", []) if text else []:
        if binding["role"] == args[0] and "condition" not in binding:
            print("\n".join(sorted(binding["members"])))
elif cmd == "index-keys":  # existing composite indexes, as collection:field,field
    text = sys.stdin.read().strip()
    for index in json.loads(text) if text else []:
        collection = index["name"].split("/collectionGroups/")[1].split("/")[0]
        fields = [f["fieldPath"] for f in index.get("fields", []) if f["fieldPath"] != "__name__"]
        print(f"{collection}:{','.join(fields)}")
elif cmd == "alert-policy":  # title severity filter aligner threshold documentation channels
    title, severity, filt, aligner, threshold, doc, channels = args
    print(json.dumps({
        "displayName": title, "combiner": "OR", "severity": severity,
        "notificationChannels": [c for c in channels.split(",") if c],
        "userLabels": {"app": "rbm-relay"},
        "conditions": [{"displayName": title, "conditionThreshold": {
            "filter": filt, "comparison": "COMPARISON_GT", "thresholdValue": float(threshold), "duration": "0s",
            "aggregations": [{"alignmentPeriod": "300s", "perSeriesAligner": aligner, "crossSeriesReducer": "REDUCE_SUM"}],
            "trigger": {"count": 1}}}],
        "alertStrategy": {"autoClose": "1800s"},
        "documentation": {"content": doc, "mimeType": "text/markdown"},
    }, sort_keys=True))
elif cmd == "dashboard":  # service filter, dead-letter backlog filter, queue names (comma-separated), push subscription names
    services, backlog, queues, subscriptions = args[0], args[1], args[2].split(","), args[3:]
    log = lambda e: f'metric.type="logging.googleapis.com/user/rbm_relay/{e}" AND resource.type="cloud_run_revision"'
    age = ('metric.type="pubsub.googleapis.com/subscription/oldest_unacked_message_age" '
           'AND resource.type="pubsub_subscription" AND resource.labels.subscription_id="{}"')
    charts = [  # the same charts as monitoring.tf
        ("Delivery funnel (per 5 min)", False,
         {e: log(e) for e in ("message_sent", "receipt_delivered", "receipt_read", "message_revoked", "sms_sent")}),
        ("Batch throughput: creates of batch messages (per 5 min)", False,
         {"batch_message_sent": log("batch_message_sent")}),
        ("Webhook: events published, signatures rejected", False,
         {e: log(e) for e in ("event_published", "signature_rejected")}),
        ("Needs a person: fallbacks UNKNOWN, events dead-lettered", False,
         {e: log(e) for e in ("fallback_unknown", "event_dead_lettered")}),
        ("Function 5xx responses", False, {"5xx": f'metric.type="run.googleapis.com/request_count" AND {services} '
                                                  'AND metric.labels.response_code_class="5xx"'}),
        ("Push subscriptions: oldest unacked event age (s)", True, {s: age.format(s) for s in subscriptions}),
        ("Dead-letter backlog", True, {"backlog": backlog}),
        ("Cloud Tasks queues: tasks waiting", True, {q: 'metric.type="cloudtasks.googleapis.com/queue/depth" '
                                                      f'AND resource.type="cloud_tasks_queue" AND resource.labels.queue_id="{q}"'
                                                      for q in queues}),
    ]
    tiles = [{
        "xPos": (i % 2) * 24, "yPos": (i // 2) * 16, "width": 24, "height": 16,
        "widget": {"title": title, "xyChart": {"dataSets": [{
            "plotType": "LINE", "legendTemplate": label, "targetAxis": "Y1",
            "timeSeriesQuery": {"timeSeriesFilter": {"filter": f, "aggregation": {
                "alignmentPeriod": "300s",
                "perSeriesAligner": "ALIGN_MAX" if gauge else "ALIGN_SUM",
                "crossSeriesReducer": "REDUCE_MAX" if gauge else "REDUCE_SUM"}}},
        } for label, f in series.items()]}},
    } for i, (title, gauge, series) in enumerate(charts)]
    print(json.dumps({"displayName": "rbm-relay: delivery", "mosaicLayout": {"columns": 48, "tiles": tiles}}, sort_keys=True))
else:
    sys.exit(f"unknown helper command {cmd}")
PY
)

eval "$(py config "$ROOT/infra/topology.json" "$ROOT/infra/firestore_indexes.json" "$ROOT/infra/functions.json")"
# The queues' dispatch rates: the one setting each of a deployment's own (topology.json's otherwise).
RBM_MAX_CALLS_PER_SECOND=${RBM_MAX_CALLS_PER_SECOND:-$QUEUE_RBM_MAX_DISPATCHES_PER_SECOND}
SMS_MAX_SENDS_PER_SECOND=${SMS_MAX_SENDS_PER_SECOND:-$QUEUE_SMS_MAX_DISPATCHES_PER_SECOND}
for rate in RBM_MAX_CALLS_PER_SECOND SMS_MAX_SENDS_PER_SECOND; do
  [[ ${!rate} =~ ^[0-9]+(\.[0-9]+)?$ ]] && awk -v r="${!rate}" 'BEGIN { exit !(r > 0 && r <= 500) }' ||
    die "$rate must be a number above 0 and at most 500 (Cloud Tasks' highest dispatch rate per queue)"
done
QUEUE_RBM_MAX_DISPATCHES_PER_SECOND=$RBM_MAX_CALLS_PER_SECOND QUEUE_SMS_MAX_DISPATCHES_PER_SECOND=$SMS_MAX_SENDS_PER_SECOND
read -r _ _ _ worker_timeout _ <<<"${SIZING[process_due_work]}"
((5 + REVOKE_GRACE_SECONDS + RBM_RETRY_SECONDS + 35 <= worker_timeout)) ||
  die "process_due_work's ${worker_timeout} s timeout must cover one task: its wait for the due second (up to 5 s) and a revoke's grace window (REVOKE_GRACE_SECONDS), plus one RBM call at its longest (RBM_RETRY_SECONDS + 35 s)"
for ep in revoke_expired send_fallbacks; do
  read -r _ _ _ timeout _ <<<"${SIZING[$ep]}"
  ((SWEEP_BUDGET_SECONDS + 15 <= timeout)) || die "SWEEP_BUDGET_SECONDS must leave 15 s of $ep's ${timeout} s timeout"
done

# --- what gets deployed ---------------------------------------------------------

# Every function, keyed by its entry point in main.py: the same table as
# infra/terraform/module/locals.tf. How each runs (memory, CPU, concurrency,
# timeout, instances) is in infra/functions.json, read into SIZING above; the
# instance variables below override its numbers.
# A scheduled run acts itself when its duty's queue is not set, so it reads
# every setting of its own kind of work; process_due_work does both kinds.
# Deployed, the queue is always set: a scheduled run only queries Firestore,
# looks its tasks up and enqueues the missing ones, so it gets no secret;
# send_fallbacks reads the database only (FIRESTORE_READ_ONLY), while
# revoke_expired also republishes the outcome events left in the outbox and
# marks them published (functions/outbox.py). The worker holds the secrets of
# both kinds of work.
# Timers: "tasks" (the worker's URL, the tasks identity) plus "rbm_queue" /
# "sms_queue" for each function whose commits set timers, the queue(s) of the
# timers it sets; each such group is also the grant to enqueue there. A
# scheduled function gets its own duty's queue only.
TIMERS=tasks,rbm_queue,sms_queue
REVOKE_SETTINGS=common,store,outcomes,agent,rbm,sweep,revoke,tasks,rbm_queue
REVOKE_SECRETS=RBM_SERVICE_ACCOUNT_KEY_FILE
FALLBACK_SETTINGS=common,store,outcomes,sweep,sms,sms_status,tasks,sms_queue
FALLBACK_SECRETS=TWILIO_AUTH_TOKEN,SMS_WEBHOOK_SECRET
WORKER_SECRETS=$REVOKE_SECRETS,$FALLBACK_SECRETS,CONVERSATION_ID_KEY
FIRESTORE_READ_ONLY=(send_fallbacks)
# The worker comes first: the others' timers target it, and its invoker binding
# (the tasks identity) is in place before any of them can enqueue.
#  entry point      name                 invoker   ingress               settings                                         secrets                 publishes
FUNCTIONS=(
  "process_due_work rbm-process-due-work tasks     internal-only         common,store,outcomes,agent,rbm,sweep,revoke,sms,sms_status,$TIMERS $WORKER_SECRETS outcomes"
  "receive_webhook  rbm-receive-webhook  public    all                   common,publish                                   RBM_CLIENT_TOKEN        events"
  "receive_sms_status rbm-receive-sms-status public all                 common,store,outcomes,sms,sms_status             TWILIO_AUTH_TOKEN,SMS_WEBHOOK_SECRET outcomes"
  "track_delivery   rbm-track-delivery   pubsub    internal-only         common,dead_letter,store,outcomes,$TIMERS        -                       dead_letter,outcomes"
  "record_inbound   rbm-record-inbound   pubsub    internal-only         common,dead_letter,store,outcomes,agent,opt_out  CONVERSATION_ID_KEY     dead_letter"
  "send_message     rbm-send-message     clients   $SEND_MESSAGE_INGRESS common,store,outcomes,agent,rbm,sms_text,$TIMERS $REVOKE_SECRETS,CONVERSATION_ID_KEY outcomes"
  "send_batch       rbm-send-batch       clients   $SEND_MESSAGE_INGRESS common,store,outcomes,agent,rbm,sms_text,$TIMERS $REVOKE_SECRETS,CONVERSATION_ID_KEY outcomes"
  "revoke_expired   rbm-revoke-expired   scheduler internal-only         $REVOKE_SETTINGS                                 -                       outcomes"
  "send_fallbacks   rbm-send-fallbacks   scheduler internal-only         $FALLBACK_SETTINGS                               -                       -"
)
# The instance overrides, as Terraform's variables: empty keeps functions.json's number.
declare -A MIN_OVERRIDE=([receive_webhook]=$WEBHOOK_MIN_INSTANCES)
declare -A MAX_OVERRIDE=([receive_webhook]=$WEBHOOK_MAX_INSTANCES [process_due_work]=$WORKER_MAX_INSTANCES)

# The functions' Cloud Run services, in a Logging filter (log-based metrics)
# and in a Monitoring filter (charts), which has no ("a" OR "b") value lists.
FUNCTION_NAMES=()
for row in "${FUNCTIONS[@]}"; do read -r _ name _ <<<"$row"; FUNCTION_NAMES+=("$name"); done
NAMES_OR=$(printf '" OR "%s' "${FUNCTION_NAMES[@]}")
NAMES_RE=$(printf '|%s' "${FUNCTION_NAMES[@]}")
LOG_SERVICE_FILTER="resource.type=\"cloud_run_revision\" AND resource.labels.service_name=(\"${NAMES_OR#\" OR \"}\")"
SERVICE_FILTER="resource.type=\"cloud_run_revision\" AND resource.labels.service_name=monitoring.regex.full_match(\"${NAMES_RE#|}\")"

declare -A SETTING_GROUPS=(
  [common]="GOOGLE_CLOUD_PROJECT LOG_LEVEL"
  [publish]="RBM_EVENTS_TOPIC PUBLISH_TIMEOUT_SECONDS"
  [dead_letter]="RBM_DEAD_LETTER_TOPIC PUBLISH_TIMEOUT_SECONDS"
  [store]="FIRESTORE_DATABASE RBM_MESSAGES_COLLECTION RBM_CONVERSATIONS_COLLECTION RETENTION_DAYS"
  [outcomes]="RBM_OUTCOMES_TOPIC OUTBOX_GRACE_SECONDS PUBLISH_TIMEOUT_SECONDS"
  [agent]="RBM_AGENT_ID"
  [rbm]="RBM_API_ENDPOINT RBM_RETRY_SECONDS PENDING_RESEND_SECONDS"
  [sweep]="SWEEP_PARALLELISM SWEEP_BUDGET_SECONDS LEASE_SECONDS RETRY_BACKOFF_SECONDS REVOKE_GRACE_SECONDS"
  [tasks]="WORKER_URL TASKS_SERVICE_ACCOUNT TASKS_TIMEOUT_SECONDS"
  [rbm_queue]="RBM_TASKS_QUEUE"
  [sms_queue]="SMS_TASKS_QUEUE"
  [revoke]="REVOKE_MAX_ATTEMPTS"
  [opt_out]="OPT_OUT_KEYWORDS OPT_IN_KEYWORDS"
  [sms]="SMS_PROVIDER FALLBACK_MAX_ATTEMPTS SMS_WEBHOOK_URL TWILIO_ACCOUNT_SID TWILIO_FROM_NUMBER TWILIO_MESSAGING_SERVICE_SID TWILIO_API_BASE SMS_WEBHOOK_IDEMPOTENT"
  [sms_text]="SMS_MAX_SEGMENTS"
  [sms_status]="SMS_STATUS_CALLBACK_URL"
)
GOOGLE_CLOUD_PROJECT=$PROJECT
RBM_EVENTS_TOPIC=$EVENTS_TOPIC
RBM_DEAD_LETTER_TOPIC=$DEAD_LETTER_TOPIC
RBM_OUTCOMES_TOPIC=$OUTCOMES_TOPIC
# Topic names by the keys of the table's publishes column.
declare -A TOPIC_NAMES=([events]=$EVENTS_TOPIC [dead_letter]=$DEAD_LETTER_TOPIC [outcomes]=$OUTCOMES_TOPIC)
# Queue names (topology.json) by key, and the full names the code reads.
declare -A QUEUE_NAMES=([rbm]=$QUEUE_RBM_NAME [sms]=$QUEUE_SMS_NAME)
RBM_TASKS_QUEUE=projects/$PROJECT/locations/$REGION/queues/$QUEUE_RBM_NAME
SMS_TASKS_QUEUE=projects/$PROJECT/locations/$REGION/queues/$QUEUE_SMS_NAME

# Settings read from Secret Manager: environment name -> secret id, for the
# ones this configuration uses.
declare -A SECRETS=([RBM_CLIENT_TOKEN]=rbm-client-token [CONVERSATION_ID_KEY]=rbm-conversation-id-key)
if [[ $RBM_KEY_FROM_SECRET == true ]]; then SECRETS[RBM_SERVICE_ACCOUNT_KEY_FILE]=rbm-service-account-key; fi
# Secrets mounted as a file rather than read into a variable (as locals.tf's
# secret_files): setting -> the file's path, which is the setting's value. A
# mounted secret follows "latest" when read; a variable keeps its instance's version.
declare -A SECRET_FILES=([RBM_SERVICE_ACCOUNT_KEY_FILE]=/etc/secrets/rbm/key.json)
if [[ $SMS_PROVIDER == twilio ]]; then SECRETS[TWILIO_AUTH_TOKEN]=rbm-twilio-auth-token; fi
if [[ $SMS_PROVIDER == webhook ]]; then SECRETS[SMS_WEBHOOK_SECRET]=rbm-sms-webhook-secret; fi

# The deployed files, as Terraform ships them (infra/terraform/module/source.tf).
SOURCE_FILES=infra/source_files.json

APIS=(
  artifactregistry.googleapis.com cloudbuild.googleapis.com cloudfunctions.googleapis.com
  cloudscheduler.googleapis.com cloudtasks.googleapis.com firestore.googleapis.com iam.googleapis.com iamcredentials.googleapis.com
  logging.googleapis.com monitoring.googleapis.com pubsub.googleapis.com run.googleapis.com
  secretmanager.googleapis.com storage.googleapis.com
  firebaserules.googleapis.com # Firestore Security Rules
)

LABELS=app=rbm-relay
P=(--project="$PROJECT")
sa_email() { echo "$1@$PROJECT.iam.gserviceaccount.com"; }
# A function's Cloud Run URL in its deterministic form, known before the function
# exists (Cloud Run, HTTPS requests, "Deterministic URL"); after PROJECT_NUMBER.
run_url() { echo "https://$1-$PROJECT_NUMBER.$REGION.run.app"; }

# --- project ---------------------------------------------------------------------

if ((DRY_RUN)); then echo "# dry run: project $PROJECT, region $REGION" >&2; fi
require gcloud alpha monitoring policies
require gcloud beta services identity
run gcloud services enable "${APIS[@]}" "${P[@]}"
PROJECT_NUMBER=${PROJECT_NUMBER:-$(query PROJECT_NUMBER gcloud projects describe "$PROJECT" --format='value(projectNumber)')}
# receive_sms_status's URL (Cloud Run's deterministic one), known before any function is
# deployed: the senders pass it as Twilio's StatusCallback, and it checks Twilio's signatures against it.
SMS_STATUS_CALLBACK_URL=''
if [[ -n $SMS_PROVIDER ]]; then SMS_STATUS_CALLBACK_URL=$(run_url rbm-receive-sms-status); fi
# process_due_work's URL: every task's target and its OIDC token's audience. The
# functions that set timers need it, the worker itself too (its commits set the
# next timers), so it must be known before the worker is deployed: the
# deterministic URL is, where `gcloud functions describe` answers only afterwards.
WORKER_URL=$(run_url rbm-process-due-work)

# Log-based metrics first: an alert policy on one is accepted only once the
# metric is queryable, which Monitoring says can take up to 10 minutes after
# its creation. Created here, they have the whole deployment to get there.
# jsonPayload.event -> description; the table in infra/README.md.
METRICS=(
  "signature_rejected|Webhook requests rejected for a bad or missing X-Goog-Signature, or a handshake with an unknown client token."
  "event_published|RBM events the webhook published to Pub/Sub."
  "message_sent|Messages the RBM API accepted from send_message or a re-send."
  "batch_message_sent|Batch messages the RBM API accepted (send_batch's creates, paced by the RBM queue)."
  "receipt_delivered|DELIVERED receipts applied to a message."
  "receipt_read|READ receipts applied to a message."
  "message_revoked|Messages revoked after their deadline (process_due_work)."
  "sms_sent|SMS fallbacks sent."
  "fallback_unknown|SMS sends interrupted with an unknown outcome: never retried, check by hand."
  "event_dead_lettered|Events a subscriber could not process and dead-lettered, with the reason."
  "timer_not_set|Timers a function could not enqueue on Cloud Tasks: the message stays due and the next scheduled pass enqueues it, up to a minute late."
)
# Events a metric counts besides the one it is named after (monitoring.tf's log_events_also).
declare -A METRIC_ALSO=([signature_rejected]='"handshake_rejected"' [message_sent]='"batch_message_sent"')
for row in "${METRICS[@]}"; do
  event=${row%%|*} description=${row#*|}
  events="\"$event\"${METRIC_ALSO[$event]:+ OR ${METRIC_ALSO[$event]}}"
  metric=(--description="$description" --log-filter="$LOG_SERVICE_FILTER AND jsonPayload.event=($events)" "${P[@]}")
  if exists gcloud logging metrics describe "rbm_relay/$event" "${P[@]}"; then
    run gcloud logging metrics update "rbm_relay/$event" "${metric[@]}"
  else
    run gcloud logging metrics create "rbm_relay/$event" "${metric[@]}"
  fi
done

# --- identities --------------------------------------------------------------------

ensure_sa() {  # account-id description
  exists gcloud iam service-accounts describe "$(sa_email "$1")" "${P[@]}" ||
    run gcloud iam service-accounts create "$1" --display-name="rbm-relay $1" --description="$2" "${P[@]}"
}
for row in "${FUNCTIONS[@]}"; do
  read -r ep name _ <<<"$row"
  ensure_sa "$name" "Runs $ep."
done
ensure_sa rbm-pubsub-push "Identity in the OIDC token of the push subscriptions."
ensure_sa rbm-scheduler "Identity in the OIDC token of the scheduler jobs."
ensure_sa rbm-tasks "Identity in the OIDC token of the due-work tasks; may invoke process_due_work only."
ensure_sa rbm-build "Builds the functions."

PUSH_SA=$(sa_email rbm-pubsub-push)
SCHEDULER_SA=$(sa_email rbm-scheduler)
TASKS_SA=$(sa_email rbm-tasks)
TASKS_SERVICE_ACCOUNT=$TASKS_SA
BUILD_SA=$(sa_email rbm-build)
run gcloud beta services identity create --service=pubsub.googleapis.com "${P[@]}"
PUBSUB_AGENT="serviceAccount:service-$PROJECT_NUMBER@gcp-sa-pubsub.iam.gserviceaccount.com"
run gcloud beta services identity create --service=cloudtasks.googleapis.com "${P[@]}"
TASKS_AGENT="serviceAccount:service-$PROJECT_NUMBER@gcp-sa-cloudtasks.iam.gserviceaccount.com"

run gcloud projects add-iam-policy-binding "$PROJECT" --member="serviceAccount:$BUILD_SA" --role=roles/logging.logWriter \
  --condition=None --quiet
# Builds read the source from the copy Cloud Functions stages in its own bucket.
STAGED="projects/_/buckets/gcf-v2-sources-$PROJECT_NUMBER-$REGION"
run gcloud projects add-iam-policy-binding "$PROJECT" --member="serviceAccount:$BUILD_SA" --role=roles/storage.objectViewer \
  --condition="expression=resource.name == \"$STAGED\" || resource.name.startsWith(\"$STAGED/\"),title=rbm-relay staged source" --quiet
run gcloud iam service-accounts add-iam-policy-binding "$PUSH_SA" --member="$PUBSUB_AGENT" \
  --role=roles/iam.serviceAccountTokenCreator "${P[@]}" --quiet
# Cloud Tasks' service agent mints the tasks identity's OIDC tokens (its service agent
# role grants that project-wide where the API was enabled after March 2019; this
# binding covers older projects and is harmless otherwise).
run gcloud iam service-accounts add-iam-policy-binding "$TASKS_SA" --member="$TASKS_AGENT" \
  --role=roles/iam.serviceAccountTokenCreator "${P[@]}" --quiet

# --- Pub/Sub: topics and the dead-letter inspection subscription ------------------------

for topic in "$EVENTS_TOPIC" "$DEAD_LETTER_TOPIC" "$OUTCOMES_TOPIC"; do
  exists gcloud pubsub topics describe "$topic" "${P[@]}" ||
    run gcloud pubsub topics create "$topic" --labels="$LABELS" "${P[@]}"
done

# The dead-letter topic: the service agent forwards to it, a pull subscription keeps what arrives.
INSPECT=(--ack-deadline="$ACK_DEADLINE_SECONDS" --message-retention-duration="$MESSAGE_RETENTION" --expiration-period=never)
run gcloud pubsub topics add-iam-policy-binding "$DEAD_LETTER_TOPIC" --member="$PUBSUB_AGENT" --role=roles/pubsub.publisher "${P[@]}"
if exists gcloud pubsub subscriptions describe "$DEAD_LETTER_SUBSCRIPTION" "${P[@]}"; then
  run gcloud pubsub subscriptions update "$DEAD_LETTER_SUBSCRIPTION" "${INSPECT[@]}" --update-labels="$LABELS" "${P[@]}"
else
  run gcloud pubsub subscriptions create "$DEAD_LETTER_SUBSCRIPTION" --topic="$DEAD_LETTER_TOPIC" "${INSPECT[@]}" --labels="$LABELS" "${P[@]}"
fi

# --- Cloud Tasks: the due work's queues, from infra/topology.json ------------------------
# One task per timer of a message, an HTTP POST to process_due_work at its second.
# A queue's dispatch rate is the rate of calls into its provider (a task makes one
# call): the queue is the rate limit. A task the worker answers 429 / 503 / 5xx is
# tried again with backoff; once its attempts are spent it is dropped, and the
# message, still due in Firestore, is enqueued again by the next scheduled pass.

queue_field() { local name="QUEUE_${1^^}_$2"; echo "${!name}"; }  # key FIELD: topology.json's, rates overridden above
for key in "${QUEUE_KEYS[@]}"; do
  queue=(--location="$REGION" --max-dispatches-per-second="$(queue_field "$key" MAX_DISPATCHES_PER_SECOND)"
    --max-concurrent-dispatches="$(queue_field "$key" MAX_CONCURRENT_DISPATCHES)" --max-attempts="$(queue_field "$key" MAX_ATTEMPTS)"
    --min-backoff="$(queue_field "$key" MIN_BACKOFF)" --max-backoff="$(queue_field "$key" MAX_BACKOFF)"
    --max-doublings="$(queue_field "$key" MAX_DOUBLINGS)" "${P[@]}")
  if exists gcloud tasks queues describe "${QUEUE_NAMES[$key]}" --location="$REGION" "${P[@]}"; then
    run gcloud tasks queues update "${QUEUE_NAMES[$key]}" "${queue[@]}"
  else
    run gcloud tasks queues create "${QUEUE_NAMES[$key]}" "${queue[@]}"
  fi
done

# --- secrets: containers only; the values are added out of band ------------------------

MISSING_VALUES=()
for name in $(printf '%s\n' "${!SECRETS[@]}" | sort); do
  secret=${SECRETS[$name]}
  exists gcloud secrets describe "$secret" "${P[@]}" ||
    run gcloud secrets create "$secret" --replication-policy=automatic --labels="$LABELS" "${P[@]}"
  if [[ -z $(query present gcloud secrets versions list "$secret" --filter=state:ENABLED --limit=1 --format='value(name)' "${P[@]}") ]]; then
    MISSING_VALUES+=("$secret")
  fi
done
if ((${#MISSING_VALUES[@]})); then
  echo "These secrets have no value yet; add one to each, then run this script again:" >&2
  for secret in "${MISSING_VALUES[@]}"; do
    echo "  printf '%s' \"\$VALUE\" | gcloud secrets versions add $secret --data-file=- --project=$PROJECT" >&2
  done
  exit 1
fi

# --- Firestore ------------------------------------------------------------------------

F=(--database="$FIRESTORE_DATABASE" "${P[@]}")
if [[ $CREATE_FIRESTORE_DATABASE == true ]]; then
  exists gcloud firestore databases describe --database="$FIRESTORE_DATABASE" "${P[@]}" ||
    run gcloud firestore databases create --database="$FIRESTORE_DATABASE" --location="$FIRESTORE_LOCATION" \
      --type=firestore-native --delete-protection --enable-pitr "${P[@]}"
fi

collection_name() {  # infra/firestore_indexes.json names collections by their default names
  case $1 in
    rbm_messages) echo "$RBM_MESSAGES_COLLECTION" ;;
    rbm_conversations) echo "$RBM_CONVERSATIONS_COLLECTION" ;;
    *) echo "$1" ;;
  esac
}
EXISTING_INDEXES=$(query "" gcloud firestore indexes composite list "${F[@]}" --format=json | py index-keys)
for i in "${!INDEX_COLLECTIONS[@]}"; do
  collection=$(collection_name "${INDEX_COLLECTIONS[$i]}")
  if grep -qxF "$collection:${INDEX_FIELDS[$i]}" <<<"$EXISTING_INDEXES"; then continue; fi
  field_configs=()
  IFS=, read -ra fields <<<"${INDEX_FIELDS[$i]}"
  for field in "${fields[@]}"; do field_configs+=(--field-config="field-path=$field,order=ascending"); done
  run gcloud firestore indexes composite create --collection-group="$collection" --query-scope=collection \
    "${field_configs[@]}" "${F[@]}" --async
done

# TTL on expire_at, exempt from single-field indexes (nothing queries it).
# Both change the same field: Firestore runs one operation on a field at a
# time, so each waits for its own to finish (no --async).
for group in "$RBM_MESSAGES_COLLECTION" "$RBM_CONVERSATIONS_COLLECTION" messages rbm_outcomes; do
  run gcloud firestore indexes fields update expire_at --collection-group="$group" --disable-indexes "${F[@]}" --quiet
  run gcloud firestore fields ttls update expire_at --collection-group="$group" --enable-ttl "${F[@]}" --quiet
done

# Security Rules: every web and mobile client denied (infra/firestore.rules, as
# in Terraform's firestore_rules.tf); the functions use IAM, which rules do not
# govern. The gcloud SDK this script is held to has no rules command (the
# `gcloud alpha firebase security-rules` group is newer) and the Firebase CLI
# is another tool to install, so the documented Firebase Rules REST API is
# called with curl and gcloud's own token: projects.rulesets.create, then
# projects.releases.patch, or .create the first time. The token goes in on
# stdin, never on a command line. An unchanged rules file creates nothing.
RULES_API=https://firebaserules.googleapis.com/v1/projects/$PROJECT
RELEASE=cloud.firestore
if [[ $FIRESTORE_DATABASE != "(default)" ]]; then RELEASE=cloud.firestore/$FIRESTORE_DATABASE; fi
RULES_SOURCE=$(py rules-source infra/firestore.rules)
# A dry run lists the token's look-up once, here, and pipes nothing into curl, which does not run.
if ((DRY_RUN)); then query "" gcloud auth print-access-token >/dev/null; fi
rules_headers() {
  if ((DRY_RUN)); then return; fi
  printf 'Authorization: Bearer %s\nx-goog-user-project: %s\nContent-Type: application/json\n' \
    "$(gcloud auth print-access-token)" "$PROJECT"
}
CURL=(curl --silent --show-error --fail-with-body --max-time 60 -H @-)
CURRENT_RULESET=$(rules_headers | query "" "${CURL[@]}" "$RULES_API/releases/$RELEASE" | python3 -c \
  'import json, sys; text = sys.stdin.read().strip(); print(json.loads(text)["rulesetName"] if text else "")')
SAME=no
if [[ -n $CURRENT_RULESET ]]; then
  SAME=$(rules_headers | query "" "${CURL[@]}" "https://firebaserules.googleapis.com/v1/$CURRENT_RULESET" | py same-rules "$RULES_SOURCE")
fi
if [[ $SAME != yes ]]; then
  RULESET=$(rules_headers | run "${CURL[@]}" -X POST --data-binary "{\"source\": $RULES_SOURCE}" "$RULES_API/rulesets" |
    python3 -c 'import json, sys; text = sys.stdin.read().strip(); print(json.loads(text)["name"] if text else "")')
  RULESET=${RULESET:-projects/$PROJECT/rulesets/NEW_RULESET}
  release="{\"name\": \"projects/$PROJECT/releases/$RELEASE\", \"rulesetName\": \"$RULESET\"}"
  if [[ -n $CURRENT_RULESET ]]; then
    rules_headers | run "${CURL[@]}" -X PATCH --data-binary "{\"release\": $release}" "$RULES_API/releases/$RELEASE" >/dev/null
  else
    rules_headers | run "${CURL[@]}" -X POST --data-binary "$release" "$RULES_API/releases" >/dev/null
  fi
fi

# --- source ------------------------------------------------------------------------------

BUCKET=gs://$PROJECT-rbm-relay-source
exists gcloud storage buckets describe "$BUCKET" "${P[@]}" ||
  run gcloud storage buckets create "$BUCKET" --location="$REGION" --uniform-bucket-level-access \
    --public-access-prevention "${P[@]}"
# Old archives expire by age (each has a name of its own), the same rules as Terraform's.
run gcloud storage buckets update "$BUCKET" --versioning --lifecycle-file=infra/source_bucket_lifecycle.json "${P[@]}"
run gcloud storage buckets add-iam-policy-binding "$BUCKET" --member="serviceAccount:$BUILD_SA" --role=roles/storage.objectViewer "${P[@]}"

# Named by content: an unchanged tree is not uploaded again.
SOURCE=$BUCKET/source/rbm-relay-$(py source-hash . "$SOURCE_FILES").zip
if ! exists gcloud storage objects describe "$SOURCE" "${P[@]}"; then
  if ((DRY_RUN)); then
    echo "# stdin: the files $SOURCE_FILES lists, zipped" >&2
    quote gcloud storage cp - "$SOURCE" "${P[@]}" >&3
  else
    py source-zip . "$SOURCE_FILES" | run gcloud storage cp - "$SOURCE" "${P[@]}"
  fi
fi

# --- images: the build's own repository, the only one it may push to -----------------------

IMAGES_REPOSITORY=rbm-relay-functions
IMAGES=projects/$PROJECT/locations/$REGION/repositories/$IMAGES_REPOSITORY
exists gcloud artifacts repositories describe "$IMAGES_REPOSITORY" --location="$REGION" "${P[@]}" ||
  run gcloud artifacts repositories create "$IMAGES_REPOSITORY" --repository-format=docker --location="$REGION" \
    --description="rbm-relay function images, written by the rbm-build account only." --labels="$LABELS" "${P[@]}"
run gcloud artifacts repositories add-iam-policy-binding "$IMAGES_REPOSITORY" --location="$REGION" \
  --member="serviceAccount:$BUILD_SA" --role=roles/artifactregistry.writer "${P[@]}"

# --- functions ------------------------------------------------------------------------------

# Who may read each secret now: a function that no longer reads one loses
# access on the next deploy, as Terraform removes a binding it no longer declares.
declare -A SECRET_READERS
for setting in "${!SECRETS[@]}"; do
  SECRET_READERS[$setting]=$(query "" gcloud secrets get-iam-policy "${SECRETS[$setting]}" --format=json "${P[@]}" |
    py members roles/secretmanager.secretAccessor)
done

declare -A URLS
for row in "${FUNCTIONS[@]}"; do
  read -r ep name invoker ingress settings secrets publishes <<<"$row"
  read -r memory cpu concurrency timeout min max <<<"${SIZING[$ep]}"
  min=${MIN_OVERRIDE[$ep]:-$min} max=${MAX_OVERRIDE[$ep]:-$max}
  sa=$(sa_email "$name")

  IFS=, read -ra groups <<<"$settings"
  env_vars=()
  for var in $(for g in "${groups[@]}"; do tr ' ' '\n' <<<"${SETTING_GROUPS[$g]}"; done | sort -u); do
    value=${!var:-}
    if [[ -z $value ]]; then continue; fi # unset: the code's default applies
    # Joined with ";" (gcloud topic escaping: "^;^" names the delimiter), so lists keep their commas.
    if [[ $value == *\;* ]]; then die "$var contains a semicolon, which --set-env-vars cannot carry here"; fi
    env_vars+=("$var=$value")
  done
  # functions-framework's gunicorn: one process with a thread per request Cloud Run may
  # send at once (Cloud Run functions, "Concurrency": THREADS equal to the concurrency).
  env_vars+=("THREADS=$concurrency" "WORKERS=1")
  # Its secrets, among those this configuration uses; each readable by it alone.
  secret_refs=()
  IFS=, read -ra wanted <<<"$secrets"
  for setting in "${wanted[@]}"; do
    if [[ -z ${SECRETS[$setting]:-} ]]; then continue; fi
    if [[ -n ${SECRET_FILES[$setting]:-} ]]; then
      secret_refs+=("${SECRET_FILES[$setting]}=${SECRETS[$setting]}:latest")
      env_vars+=("$setting=${SECRET_FILES[$setting]}")
    else
      secret_refs+=("$setting=${SECRETS[$setting]}:latest")
    fi
    run gcloud secrets add-iam-policy-binding "${SECRETS[$setting]}" --member="serviceAccount:$sa" \
      --role=roles/secretmanager.secretAccessor "${P[@]}"
  done
  for setting in "${!SECRETS[@]}"; do
    if [[ ,$secrets, != *,$setting,* ]] && grep -qxF -- "serviceAccount:$sa" <<<"${SECRET_READERS[$setting]}"; then
      run gcloud secrets remove-iam-policy-binding "${SECRETS[$setting]}" --member="serviceAccount:$sa" \
        --role=roles/secretmanager.secretAccessor "${P[@]}"
    fi
  done
  if ((${#secret_refs[@]})); then
    secret_flag=--set-secrets="$(IFS=,; echo "${secret_refs[*]}")"
  else
    secret_flag=--clear-secrets
  fi

  # Least privilege: Firestore for all but the webhook (read-only for the
  # scheduled runs, which only query it); publisher on exactly its topics.
  if [[ $ep != receive_webhook ]]; then
    firestore_role=roles/datastore.user
    if [[ " ${FIRESTORE_READ_ONLY[*]} " == *" $ep "* ]]; then firestore_role=roles/datastore.viewer; fi
    run gcloud projects add-iam-policy-binding "$PROJECT" --member="serviceAccount:$sa" --role="$firestore_role" \
      --condition="expression=resource.name == \"projects/$PROJECT/databases/$FIRESTORE_DATABASE\",title=rbm-relay database" --quiet
  fi
  IFS=, read -ra topics <<<"$publishes"
  for topic in "${topics[@]}"; do
    if [[ $topic == - ]]; then continue; fi
    run gcloud pubsub topics add-iam-policy-binding "${TOPIC_NAMES[$topic]}" --member="serviceAccount:$sa" --role=roles/pubsub.publisher "${P[@]}"
  done
  # Timers: enqueuer on exactly the queues of the timers it sets (its *_queue
  # settings), and the scheduled function's safety net may look its own queue's
  # tasks up (GetTask needs cloudtasks.tasks.get: roles/cloudtasks.viewer, which
  # the enqueuer role lacks). A task carrying an OIDC token of the tasks identity
  # needs iam.serviceAccounts.actAs on it from whoever creates it.
  for key in "${QUEUE_KEYS[@]}"; do
    if [[ ,$settings, != *,${key}_queue,* ]]; then continue; fi
    roles=(roles/cloudtasks.enqueuer)
    if [[ $invoker == scheduler ]]; then roles+=(roles/cloudtasks.viewer); fi
    for role in "${roles[@]}"; do
      run gcloud tasks queues add-iam-policy-binding "${QUEUE_NAMES[$key]}" --location="$REGION" \
        --member="serviceAccount:$sa" --role="$role" "${P[@]}"
    done
  done
  if [[ ,$settings, == *,tasks,* ]]; then
    run gcloud iam service-accounts add-iam-policy-binding "$TASKS_SA" --member="serviceAccount:$sa" \
      --role=roles/iam.serviceAccountUser "${P[@]}" --quiet
  fi

  public=--no-allow-unauthenticated
  if [[ $invoker == public ]]; then public=--allow-unauthenticated; fi # RBM, Twilio, the gateway call without Google credentials; HMAC-verified
  run gcloud functions deploy "$name" --gen2 --region="$REGION" --runtime="$PYTHON_RUNTIME" \
    --entry-point="$ep" --source="$SOURCE" --trigger-http "$public" \
    --service-account="$sa" --build-service-account="projects/$PROJECT/serviceAccounts/$BUILD_SA" \
    --docker-repository="$IMAGES" \
    --memory="$memory" --cpu="$cpu" --concurrency="$concurrency" --timeout="${timeout}s" \
    --min-instances="$min" --max-instances="$max" --ingress-settings="$ingress" \
    --set-env-vars="^;^$(IFS=';'; echo "${env_vars[*]}")" "$secret_flag" \
    --update-labels="$LABELS" "${P[@]}" --quiet

  URLS[$ep]=$(query "https://$name-$PROJECT_NUMBER.$REGION.run.app" \
    gcloud functions describe "$name" --v2 --region="$REGION" --format='value(serviceConfig.uri)' "${P[@]}")

  # Invokers: exactly the configured members, so a member taken off the list
  # loses access (the public webhook's allUsers comes with --allow-unauthenticated).
  invokers=()
  case $invoker in
    pubsub) invokers=("serviceAccount:$PUSH_SA") ;;
    scheduler) invokers=("serviceAccount:$SCHEDULER_SA") ;;
    tasks) invokers=("serviceAccount:$TASKS_SA") ;;
    clients) IFS=, read -ra invokers <<<"$SEND_MESSAGE_INVOKERS" ;;
  esac
  if [[ $invoker != public ]]; then
    current=$(query "" gcloud run services get-iam-policy "$name" --region="$REGION" --format=json "${P[@]}" | py members roles/run.invoker)
    for member in $current; do
      if ! printf '%s\n' "${invokers[@]}" | grep -qxF -- "$member"; then
        run gcloud run services remove-iam-policy-binding "$name" --region="$REGION" --member="$member" --role=roles/run.invoker "${P[@]}"
      fi
    done
    for member in "${invokers[@]}"; do
      if ! grep -qxF -- "$member" <<<"$current"; then
        run gcloud run services add-iam-policy-binding "$name" --region="$REGION" --member="$member" --role=roles/run.invoker "${P[@]}"
      fi
    done
  fi

  if [[ $invoker == scheduler ]]; then
    job=(--location="$REGION" --schedule="$SCHEDULE" --time-zone=Etc/UTC --uri="${URLS[$ep]}" --http-method=post
      --oidc-service-account-email="$SCHEDULER_SA" --oidc-token-audience="${URLS[$ep]}"
      --attempt-deadline="${SCHEDULE_PERIOD}s" --max-retry-attempts=1 --min-backoff=10s --max-backoff=10s
      --max-retry-duration=50s --description="Runs $ep every $SCHEDULE_PERIOD s." "${P[@]}")
    if exists gcloud scheduler jobs describe "$name" --location="$REGION" "${P[@]}"; then
      run gcloud scheduler jobs update http "$name" "${job[@]}"
    else
      run gcloud scheduler jobs create http "$name" "${job[@]}"
    fi
  fi
done

# --- push subscriptions, from infra/topology.json -------------------------------------------

for i in "${!SUB_NAMES[@]}"; do
  sub=${SUB_NAMES[$i]} url=${URLS[${SUB_ENTRY_POINTS[$i]}]}
  push=(--push-endpoint="$url/projects/$PROJECT/topics/$EVENTS_TOPIC" --push-auth-service-account="$PUSH_SA"
    --push-auth-token-audience="$url" --ack-deadline="$ACK_DEADLINE_SECONDS"
    --dead-letter-topic="$DEAD_LETTER_TOPIC" --max-delivery-attempts="$MAX_DELIVERY_ATTEMPTS"
    --min-retry-delay="$MINIMUM_BACKOFF" --max-retry-delay="$MAXIMUM_BACKOFF"
    --message-retention-duration="$MESSAGE_RETENTION" --expiration-period=never "${P[@]}")
  if exists gcloud pubsub subscriptions describe "$sub" "${P[@]}"; then
    current=$(query "" gcloud pubsub subscriptions describe "$sub" --format='value(filter)' "${P[@]}")
    if [[ $current != "${SUB_FILTERS[$i]}" ]]; then
      die "subscription $sub has filter [$current], topology.json says [${SUB_FILTERS[$i]}]; filters are immutable: delete the subscription and run again"
    fi
    run gcloud pubsub subscriptions update "$sub" "${push[@]}" --update-labels="$LABELS"
  else
    run gcloud pubsub subscriptions create "$sub" --topic="$EVENTS_TOPIC" --message-filter="${SUB_FILTERS[$i]}" \
      "${push[@]}" --labels="$LABELS"
  fi
  run gcloud pubsub subscriptions add-iam-policy-binding "$sub" --member="$PUBSUB_AGENT" --role=roles/pubsub.subscriber "${P[@]}"
done

# The optional push of the outcome events to the sender's endpoint (README, Outcome
# events): an OIDC token of its own identity, its retry policy and dead-letter topic.
if [[ -n $OUTCOMES_PUSH_ENDPOINT ]]; then
  ensure_sa rbm-outcomes-push "Identity in the OIDC token of the outcome events pushed to the sender's endpoint."
  OUTCOMES_PUSH_SA=$(sa_email rbm-outcomes-push)
  run gcloud iam service-accounts add-iam-policy-binding "$OUTCOMES_PUSH_SA" --member="$PUBSUB_AGENT" \
    --role=roles/iam.serviceAccountTokenCreator "${P[@]}" --quiet
  exists gcloud pubsub topics describe "$OUTCOMES_PUSH_DEAD_LETTER_TOPIC" "${P[@]}" ||
    run gcloud pubsub topics create "$OUTCOMES_PUSH_DEAD_LETTER_TOPIC" --labels="$LABELS" "${P[@]}"
  run gcloud pubsub topics add-iam-policy-binding "$OUTCOMES_PUSH_DEAD_LETTER_TOPIC" --member="$PUBSUB_AGENT" --role=roles/pubsub.publisher "${P[@]}"
  inspect=(--ack-deadline="$OUTCOMES_PUSH_ACK_DEADLINE_SECONDS" --message-retention-duration="$OUTCOMES_PUSH_MESSAGE_RETENTION" --expiration-period=never "${P[@]}")
  exists gcloud pubsub subscriptions describe "$OUTCOMES_PUSH_DEAD_LETTER_SUBSCRIPTION" "${P[@]}" ||
    run gcloud pubsub subscriptions create "$OUTCOMES_PUSH_DEAD_LETTER_SUBSCRIPTION" --topic="$OUTCOMES_PUSH_DEAD_LETTER_TOPIC" "${inspect[@]}" --labels="$LABELS"
  push=(--push-endpoint="$OUTCOMES_PUSH_ENDPOINT" --push-auth-service-account="$OUTCOMES_PUSH_SA"
    --push-auth-token-audience="$OUTCOMES_PUSH_AUDIENCE" --ack-deadline="$OUTCOMES_PUSH_ACK_DEADLINE_SECONDS"
    --dead-letter-topic="$OUTCOMES_PUSH_DEAD_LETTER_TOPIC" --max-delivery-attempts="$OUTCOMES_PUSH_MAX_DELIVERY_ATTEMPTS"
    --min-retry-delay="$OUTCOMES_PUSH_MINIMUM_BACKOFF" --max-retry-delay="$OUTCOMES_PUSH_MAXIMUM_BACKOFF"
    --message-retention-duration="$OUTCOMES_PUSH_MESSAGE_RETENTION" --expiration-period=never "${P[@]}")
  if exists gcloud pubsub subscriptions describe "$OUTCOMES_PUSH_SUBSCRIPTION" "${P[@]}"; then
    run gcloud pubsub subscriptions update "$OUTCOMES_PUSH_SUBSCRIPTION" "${push[@]}" --update-labels="$LABELS"
  else
    run gcloud pubsub subscriptions create "$OUTCOMES_PUSH_SUBSCRIPTION" --topic="$OUTCOMES_TOPIC" \
      --enable-message-ordering "${push[@]}" --labels="$LABELS"
  fi
  run gcloud pubsub subscriptions add-iam-policy-binding "$OUTCOMES_PUSH_SUBSCRIPTION" --member="$PUBSUB_AGENT" --role=roles/pubsub.subscriber "${P[@]}"
fi

# --- observability ----------------------------------------------------------------------------


log_metric() { echo "metric.type=\"logging.googleapis.com/user/rbm_relay/$1\" AND resource.type=\"cloud_run_revision\""; }
DEAD_LETTER_BACKLOG="metric.type=\"pubsub.googleapis.com/subscription/num_undelivered_messages\" AND resource.type=\"pubsub_subscription\" AND resource.labels.subscription_id=\"$DEAD_LETTER_SUBSCRIPTION\""
ensure_policy() {  # title severity filter aligner threshold documentation
  local policy existing
  policy=$(py alert-policy "$@" "$NOTIFICATION_CHANNELS")
  existing=$(query "" gcloud alpha monitoring policies list --filter="displayName=\"$1\"" --format='value(name)' "${P[@]}")
  if [[ -n $existing ]]; then
    run_patiently gcloud alpha monitoring policies update "$existing" --policy="$policy" "${P[@]}"
  else
    run_patiently gcloud alpha monitoring policies create --policy="$policy" "${P[@]}"
  fi
}
ensure_policy "rbm-relay: webhook signatures rejected" WARNING "$(log_metric signature_rejected)" ALIGN_SUM \
  "$SIGNATURE_REJECTIONS_THRESHOLD" "Many webhook requests failed X-Goog-Signature verification, or handshakes named an unknown client token (someone guessing tokens). A rotated client token not yet in the secret rbm-client-token is the usual cause; RBM keeps retrying, so events are delayed, not lost. Query: jsonPayload.event=(\"signature_rejected\" OR \"handshake_rejected\")."
ensure_policy "rbm-relay: SMS fallback outcome unknown" ERROR "$(log_metric fallback_unknown)" ALIGN_SUM 0 \
  "An SMS send was interrupted and its outcome cannot be known; it is never retried automatically. Check the provider's log for the message id and settle it by hand. Query: jsonPayload.event=\"fallback_unknown\"."
ensure_policy "rbm-relay: events dead-lettered by a subscriber" ERROR "$(log_metric event_dead_lettered)" ALIGN_SUM 0 \
  "A subscriber found an event it can never process and dead-lettered it with a reason. Query: jsonPayload.event=\"event_dead_lettered\"; the message waits in the subscription $DEAD_LETTER_SUBSCRIPTION for replay."
ensure_policy "rbm-relay: timers not set" WARNING "$(log_metric timer_not_set)" ALIGN_SUM 0 \
  "A function could not create the Cloud Tasks task of a message's timer (jsonPayload.event=\"timer_not_set\", with the message id, duty and reason). The message stays due in Firestore and the next scheduled pass enqueues it, up to one period late, so revokes and SMS come late, not lost. A steady count means every timer fails: look at the reason (a function without roles/cloudtasks.enqueuer on its queue or roles/iam.serviceAccountUser on rbm-tasks, a deleted queue; a paused queue still takes tasks, it only holds them)."
ensure_policy "rbm-relay: dead-letter backlog" ERROR "$DEAD_LETTER_BACKLOG" ALIGN_MAX 0 \
  "Messages wait in $DEAD_LETTER_SUBSCRIPTION: dead-lettered by a subscriber, or by Pub/Sub after $MAX_DELIVERY_ATTEMPTS failed pushes (a subscriber crashing or erroring on every attempt). Inspect, fix, replay."
ensure_policy "rbm-relay: webhook answering 5xx" ERROR \
  "metric.type=\"run.googleapis.com/request_count\" AND resource.type=\"cloud_run_revision\" AND resource.labels.service_name=\"rbm-receive-webhook\" AND metric.labels.response_code_class=\"5xx\"" \
  ALIGN_SUM 5 "The webhook answers 503 when Pub/Sub does not confirm a publish (jsonPayload.event=\"publish_failed\"). RBM retries, but its queue is shared by every agent of the partner: a failing webhook delays all of them."

DASHBOARD=$(py dashboard "$SERVICE_FILTER" "$DEAD_LETTER_BACKLOG" "$QUEUE_RBM_NAME,$QUEUE_SMS_NAME" "${SUB_NAMES[@]}")
existing=$(query "" gcloud monitoring dashboards list --filter='displayName="rbm-relay: delivery"' --format='value(name)' "${P[@]}")
if [[ -z $existing ]]; then
  run gcloud monitoring dashboards create --config="$DASHBOARD" "${P[@]}"
elif ((!DRY_RUN)); then
  echo "dashboard exists ($existing); delete it to have it recreated" >&2
fi

if ((DRY_RUN)); then
  echo "# webhook URL to register with RBM: ${URLS[receive_webhook]}" >&2
else
  echo "Register this webhook URL with RBM: ${URLS[receive_webhook]}"
fi
