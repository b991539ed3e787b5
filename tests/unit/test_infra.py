"""The deployment against the code: infra/terraform and infra/gcloud/deploy.sh
deploy every entry point of main.py once, with every setting and secret the
code behind it reads, and take the Pub/Sub topology, the Cloud Tasks queues and
the Firestore indexes from the JSON files the code's own tests and tools use.

No network and no Google provider: the Terraform is parsed with python-hcl2,
the gcloud script runs with --dry-run. `terraform fmt` and checkov run when
they are installed and are skipped otherwise.
"""

import ast
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from functools import cache, reduce
from pathlib import Path

import hcl2
import pytest
from hcl2 import SerializationOptions

from local.processes import FunctionProcess

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
TERRAFORM = INFRA / "terraform"
MODULE = TERRAFORM / "module"
DEPLOY_SH = INFRA / "gcloud" / "deploy.sh"
TOPOLOGY = json.loads((INFRA / "topology.json").read_text())
INDEXES = json.loads((INFRA / "firestore_indexes.json").read_text())
RUNTIME = json.loads((INFRA / "functions.json").read_text())["functions"]

PACKAGE = "functions"
CONFIG_MODULE = f"{PACKAGE}.config"
ENV_READERS = {"env", "env_int", "env_float"}
# Read by the code but never set by a deployment: the emulators' hosts and the
# Cloud Tasks fake's root (local and test runs only; empty is Google's API) and
# what Cloud Run sets itself.
NOT_DEPLOYED = {
    "PUBSUB_EMULATOR_HOST",
    "FIRESTORE_EMULATOR_HOST",
    "CLOUD_TASKS_ENDPOINT",
    "K_SERVICE",
    "K_REVISION",
    "K_CONFIGURATION",
    "PORT",
}
# Values that must only ever come from Secret Manager.
SENSITIVE = {
    "RBM_CLIENT_TOKEN",
    "RBM_SERVICE_ACCOUNT_KEY_FILE",
    "TWILIO_AUTH_TOKEN",
    "SMS_WEBHOOK_SECRET",
    "CONVERSATION_ID_KEY",
}
# The jsonPayload.event values the log-based metrics count (infra/README.md).
METRIC_EVENTS = {
    "signature_rejected",
    "event_published",
    "message_revoked",
    "sms_sent",
    "fallback_unknown",
    "event_dead_lettered",
}
SWEEPS = {"revoke_expired", "send_fallbacks"}
# Called from outside Google without its credentials, every request HMAC-verified.
PUBLIC = {"receive_webhook", "receive_sms_status"}
WORKER = "process_due_work"
QUEUES = TOPOLOGY["queues"]
# The settings of the Cloud Tasks timers: every function that sets timers gets
# TIMER_SETTINGS and the setting of each queue it enqueues on (QUEUE_SETTINGS).
QUEUE_SETTINGS = {"rbm": "RBM_TASKS_QUEUE", "sms": "SMS_TASKS_QUEUE"}
TIMER_SETTINGS = {"WORKER_URL", "TASKS_SERVICE_ACCOUNT", "TASKS_TIMEOUT_SECONDS"}
# What each entry point's deployed code path needs: Firestore (write, read or
# nothing), the topics it publishes to, the secrets it reads, the queues it
# enqueues on. Deployed, both queues are always set, so a scheduled run only
# queries Firestore, looks its tasks up and enqueues those missing (the safety
# net, tests/unit/test_scheduled_access.py): it holds no secret, though its code
# could act itself without a queue, and enqueues on its own duty's queue only;
# send_fallbacks only reads the database, revoke_expired also republishes the
# outbox's late outcome events and marks them published (functions/outbox.py).
# Every other function whose commits set timers (store.update_message /
# change_message) enqueues on both queues: a commit can make a revoke due
# (rbm) or an SMS due (sms). receive_sms_status only claims (store.claim_message,
# no timer) and record_inbound writes conversations: no queue.
ACCESS = {
    "receive_webhook": (None, {"events"}, {"RBM_CLIENT_TOKEN"}, set()),
    "receive_sms_status": ("write", {"outcomes"}, {"TWILIO_AUTH_TOKEN", "SMS_WEBHOOK_SECRET"}, set()),
    "track_delivery": ("write", {"dead_letter", "outcomes"}, set(), {"rbm", "sms"}),
    "record_inbound": ("write", {"dead_letter"}, {"CONVERSATION_ID_KEY"}, set()),
    "send_message": ("write", {"outcomes"}, {"RBM_SERVICE_ACCOUNT_KEY_FILE", "CONVERSATION_ID_KEY"}, {"rbm", "sms"}),
    "send_batch": ("write", {"outcomes"}, {"RBM_SERVICE_ACCOUNT_KEY_FILE", "CONVERSATION_ID_KEY"}, {"rbm", "sms"}),
    "revoke_expired": ("write", {"outcomes"}, set(), {"rbm"}),
    "send_fallbacks": ("read", set(), set(), {"sms"}),
    "process_due_work": (
        "write",
        {"outcomes"},
        {"RBM_SERVICE_ACCOUNT_KEY_FILE", "TWILIO_AUTH_TOKEN", "SMS_WEBHOOK_SECRET", "CONVERSATION_ID_KEY"},
        {"rbm", "sms"},
    ),
}
READ_ONLY = {ep for ep, (access, *_) in ACCESS.items() if access == "read"}
TIMER_SETTERS = {ep for ep, (*_, queues) in ACCESS.items() if queues}
FIRESTORE_ROLES = {"write": "roles/datastore.user", "read": "roles/datastore.viewer"}
# The commits that set timers (functions/store.py).
COMMITS = {"update_message", "change_message"}


# --- what the code needs ---------------------------------------------------------------


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@cache
def entry_points() -> dict[str, tuple[str, ast.FunctionDef]]:
    """main.py's functions decorated @functions_framework.http / .cloud_event."""
    found = {}
    for node in _parse(ROOT / "main.py").body:
        if isinstance(node, ast.FunctionDef):
            for d in node.decorator_list:
                if (
                    isinstance(d, ast.Attribute)
                    and isinstance(d.value, ast.Name)
                    and d.value.id == "functions_framework"
                    and d.attr in ("http", "cloud_event")
                ):
                    found[node.name] = (d.attr, node)
    return found


def imported_modules(tree: ast.AST, current: str) -> set[str]:
    """Modules of the package that `tree` imports anywhere, lazy imports included."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == PACKAGE}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = current.rsplit(".", node.level)[0] if "." in current else PACKAGE
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if module.split(".")[0] == PACKAGE:
                found.add(module)
                found |= {f"{module}.{a.name}" for a in node.names if _module_file(f"{module}.{a.name}")}
    for name in list(found):  # importing a.b runs a/__init__.py first
        parts = name.split(".")
        found |= {".".join(parts[:i]) for i in range(1, len(parts))}
    return {m for m in found if _module_file(m)}


def module_closure(start: set[str]) -> set[str]:
    seen, todo = set(), list(start)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(imported_modules(_parse(_module_file(module)), module) - seen)
    return seen


def _string_constants(tree: ast.Module) -> dict[str, str]:
    return {
        t.id: n.value.value
        for n in tree.body
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
        for t in n.targets
        if isinstance(t, ast.Name)
    }


def _is_os_environ(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "environ"
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    )


def direct_reads(tree: ast.AST, constants: dict[str, str]) -> set[str]:
    """Names read with env() / env_int() / env_float(), os.environ or os.getenv."""

    def literal(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        return constants.get(node.id) if isinstance(node, ast.Name) else None

    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args:
            f = node.func
            called = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            environ_get = isinstance(f, ast.Attribute) and (
                (f.attr == "get" and _is_os_environ(f.value))
                or (f.attr == "getenv" and isinstance(f.value, ast.Name) and f.value.id == "os")
            )
            if called in ENV_READERS or environ_get:
                names.add(literal(node.args[0]))
        elif isinstance(node, ast.Subscript) and _is_os_environ(node.value):
            names.add(literal(node.slice))
    return names - {None}


@cache
def config_settings() -> dict[str, set[str]]:
    """Each function of functions/config.py -> the settings it reads, through its helpers too."""
    tree = _parse(_module_file(CONFIG_MODULE))
    constants = _string_constants(tree)
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    direct = {name: direct_reads(f, constants) for name, f in functions.items()}
    calls = {
        name: {
            c.func.id
            for c in ast.walk(f)
            if isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and c.func.id in functions
        }
        for name, f in functions.items()
    }

    def resolve(name, seen=frozenset()):
        return direct[name].union(*(resolve(c, seen | {name}) for c in calls[name] - seen - {name}))

    return {name: resolve(name) for name in functions}


def config_functions_used(tree: ast.Module) -> set[str]:
    """Functions of the config module that `tree` calls or imports."""
    aliases, used = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == PACKAGE and not node.level:
            aliases |= {a.asname or a.name for a in node.names if a.name == "config"}
        elif isinstance(node, ast.ImportFrom) and node.module == CONFIG_MODULE:
            used |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            aliases |= {a.asname for a in node.names if a.name == CONFIG_MODULE and a.asname}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            used.add(node.attr)
    return used


@cache
def settings_read(entry_point: str) -> frozenset[str]:
    """Every setting the code behind an entry point can read.

    The modules its body imports, and theirs, transitively; in those, every
    literal env()/os.environ read, plus the settings of each functions/config.py
    function they use (config.py is resolved per function, since every module
    imports it for one or two settings).
    """
    _, node = entry_points()[entry_point]
    names = set()
    for module in module_closure(imported_modules(node, "main")):
        if module == CONFIG_MODULE:
            continue
        tree = _parse(_module_file(module))
        names |= direct_reads(tree, _string_constants(tree))
        for function in config_functions_used(tree):
            names |= config_settings().get(function, set())
    return frozenset(names - NOT_DEPLOYED)


def settings_needed(entry_point: str) -> frozenset[str]:
    """The settings a deployment must give an entry point: what its code reads,
    less the secrets its deployed code path never reaches and the queues it does
    not enqueue on (ACCESS); without a queue, none of the timers' settings
    (store.update_message imports the timers for every user of the store)."""
    _, _, secrets, queues = ACCESS[entry_point]
    unused = {QUEUE_SETTINGS[q] for q in QUEUES if q not in queues} | (set() if queues else TIMER_SETTINGS)
    return settings_read(entry_point) - (SENSITIVE - secrets) - unused


@cache
def commits_messages(entry_point: str) -> bool:
    """Whether the code behind an entry point sets timers: commits message changes through
    store.update_message / change_message, or calls functions.timers itself (send_batch)."""
    _, node = entry_points()[entry_point]
    for module in module_closure(imported_modules(node, "main")) - {f"{PACKAGE}.store"}:
        for call in ast.walk(_parse(_module_file(module))):
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)):
                continue
            if call.func.attr in COMMITS or (isinstance(call.func.value, ast.Name) and call.func.value.id == "timers"):
                return True
    return False


def logged_events_match(event: str) -> bool:
    """Whether the code can log `event`: a string constant of functions/, or an f-string event=... with its head."""
    constants, prefixes = set(), set()
    for path in (ROOT / PACKAGE).glob("*.py"):
        for node in ast.walk(_parse(path)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                constants.add(node.value)
            elif isinstance(node, ast.keyword) and node.arg == "event" and isinstance(node.value, ast.JoinedStr):
                head = node.value.values[0] if node.value.values else None
                if isinstance(head, ast.Constant) and head.value:
                    prefixes.add(head.value)
    return event in constants or any(event.startswith(p) for p in prefixes)


def test_main_exposes_the_design_entry_points():
    kinds = {name: kind for name, (kind, _) in entry_points().items()}
    assert kinds == {
        "receive_webhook": "http",
        "receive_sms_status": "http",
        "track_delivery": "cloud_event",
        "record_inbound": "cloud_event",
        "send_message": "http",
        "send_batch": "http",
        "revoke_expired": "http",
        "send_fallbacks": "http",
        "process_due_work": "http",
    }


def test_settings_analysis_sees_through_config_and_imports():
    # A guard on the analysis itself: settings known to be read behind each entry point.
    assert {"RBM_CLIENT_TOKEN", "RBM_EVENTS_TOPIC"} <= settings_read("receive_webhook")
    assert "RBM_DEAD_LETTER_TOPIC" in settings_read("track_delivery")
    assert {"TWILIO_AUTH_TOKEN", "SMS_PROVIDER"} <= settings_read("send_fallbacks")
    assert "TWILIO_AUTH_TOKEN" not in settings_read("receive_webhook")
    assert "SWEEP_BUDGET_SECONDS" not in settings_read("receive_webhook")
    # The due work: the worker reads the acting's settings through functions/process_due_work.py,
    # and every function that commits a message change reads the timers' settings (store -> timers).
    assert {
        "RBM_SERVICE_ACCOUNT_KEY_FILE",
        "TWILIO_AUTH_TOKEN",
        "REVOKE_GRACE_SECONDS",
        "SWEEP_PARALLELISM",
        "LEASE_SECONDS",
    } <= settings_read(WORKER)
    timers = TIMER_SETTINGS | set(QUEUE_SETTINGS.values())
    for ep in entry_points():
        assert timers <= settings_read(ep) or not commits_messages(ep), ep
    assert not timers & settings_read("receive_webhook")
    # The polling and the work topic are gone.
    removed = {"SCHEDULE_PERIOD_SECONDS", "WORK_ITEM_SIZE", "RBM_WORK_TOPIC"}
    assert not removed & set().union(*(settings_read(ep) for ep in entry_points()))


# --- Terraform ------------------------------------------------------------------------------

HCL = SerializationOptions(with_comments=False, explicit_blocks=False, strip_string_quotes=True)


@cache
def terraform(directory: Path = MODULE) -> dict:
    """Locals, resources (type -> name -> body) and variables of a Terraform directory."""
    config = {"locals": {}, "resource": {}, "variable": {}, "data": {}}
    for path in sorted(directory.glob("*.tf")):
        with path.open() as f:
            parsed = hcl2.load(f, serialization_options=HCL)
        for block in parsed.get("locals", []):
            assert not set(block) & set(config["locals"]), f"local defined twice in {path.name}"
            config["locals"].update(block)
        for kind in ("resource", "data"):
            for block in parsed.get(kind, []):
                for type_, named in block.items():
                    config[kind].setdefault(type_, {}).update(named)
        for block in parsed.get("variable", []):
            config["variable"].update(block)
    return config


def locals_() -> dict:
    return terraform()["locals"]


def resources(type_: str) -> dict[str, dict]:
    return terraform()["resource"].get(type_, {})


def functions_table() -> dict[str, dict]:
    return locals_()["functions"]


def _block(body: dict, name: str) -> dict:
    blocks = body[name]
    assert len(blocks) == 1, f"one {name} block expected"
    return blocks[0]


def _for_each_keys(body: dict) -> list[str]:
    """Keys of a resource's for_each when it is a local map, as in `for_each = local.functions`."""
    match = re.fullmatch(r"\$\{local\.(\w+)\}", body.get("for_each", ""))
    assert match, f"for_each {body.get('for_each')!r} is not a local map"
    return list(locals_()[match.group(1)])


def _module_path(expression: str) -> Path:
    """The file of a `jsondecode(file("${path.module}/..."))` local."""
    match = re.fullmatch(r'\$\{jsondecode\(file\("\$\{path\.module\}/([^"]+)"\)\)\}', expression)
    assert match, f"{expression!r} does not read a JSON file next to the module"
    return (MODULE / match.group(1)).resolve()


def terraform_entry_points() -> list[str]:
    found = []
    for type_ in ("google_cloudfunctions2_function", "google_cloudfunctions_function"):
        for body in resources(type_).values():
            entry = _block(body, "build_config")["entry_point"] if "build_config" in body else body.get("entry_point")
            if entry == "${each.key}":
                found += _for_each_keys(body)
            else:
                assert "${" not in entry, f"cannot resolve entry point {entry!r}"
                found.append(entry)
    return found


def _resolve(value):
    """A function table value, with a `local.X` reference replaced by that local."""
    if isinstance(value, str) and (m := re.fullmatch(r"\$\{local\.(\w+)\}", value)):
        return locals_()[m.group(1)]
    return value


def terraform_queues(entry_point: str) -> set[str]:
    """The queues a function's settings name (its "rbm_queue" / "sms_queue" groups)."""
    groups = _resolve(functions_table()[entry_point]["settings"])
    return {q for q in QUEUES if f"{q}_queue" in groups}


def terraform_settings(entry_point: str) -> tuple[set[str], set[str]]:
    """(environment names, secret environment names) Terraform gives a function."""
    function = functions_table()[entry_point]
    groups = locals_()["setting_groups"]
    env = {name for group in _resolve(function["settings"]) for name in groups[group]}
    return env, set(_resolve(function["secrets"]))


def sizing(entry_point: str) -> dict:
    """How infra/functions.json says a function runs, its "ack_deadline" timeout resolved."""
    size = dict(RUNTIME[entry_point])
    if size["timeout_seconds"] == "ack_deadline":
        pushed = {s["entry_point"]: TOPOLOGY["ack_deadline_seconds"] for s in TOPOLOGY["subscriptions"]}
        size["timeout_seconds"] = pushed[entry_point]
    return size


def test_no_terraform_in_the_example_deploys_functions_directly():
    example = terraform(TERRAFORM / "example")
    assert not example["resource"], "the example only calls the module"


def test_terraform_deploys_each_entry_point_exactly_once():
    counts = Counter(terraform_entry_points())
    assert set(counts) == set(entry_points()), "function resources and main.py's entry points differ"
    assert all(n == 1 for n in counts.values()), f"entry points deployed more than once: {counts}"


def test_terraform_function_resource_wires_the_table():
    (function,) = resources("google_cloudfunctions2_function").values()
    service = _block(function, "service_config")
    assert function["for_each"] == "${local.functions}"
    assert _block(function, "build_config")["entry_point"] == "${each.key}"
    assert service["environment_variables"] == "${merge(local.function_env[each.key], local.secret_file_env[each.key])}"
    assert service["service_account_email"] == "${google_service_account.function[each.key].email}"
    dynamic = {name: block for d in service["dynamic"] for name, block in d.items()}
    assert "each.value.secrets" in dynamic["secret_environment_variables"]["for_each"]
    assert "!contains(keys(local.secret_files), name)" in dynamic["secret_environment_variables"]["for_each"]
    assert dynamic["secret_volumes"]["for_each"] == "${local.secret_file_env[each.key]}"
    assert "f.settings" in locals_()["function_env"] and "local.setting_groups" in locals_()["function_env"]


@pytest.mark.parametrize("entry_point", sorted(entry_points()))
def test_terraform_sets_every_setting_the_code_reads(entry_point):
    env, secrets = terraform_settings(entry_point)
    missing = settings_needed(entry_point) - env - secrets
    assert not missing, f"{entry_point} reads settings Terraform does not set: {sorted(missing)}"
    assert "GOOGLE_CLOUD_PROJECT" in env


def test_terraform_settings_all_have_values():
    named = {n for names in locals_()["setting_groups"].values() for n in names}
    valued = set(locals_()["tuning_defaults"]) | set(locals_()["deployment_settings"])
    assert named <= valued, f"settings without a value: {sorted(named - valued)}"
    assert locals_()["env_values"] == "${merge(local.tuning, local.deployment_settings)}"


def test_terraform_secrets_come_only_from_secret_manager():
    declared = locals_()["secrets"]
    plain = {n for names in locals_()["setting_groups"].values() for n in names}
    assert set(declared) >= SENSITIVE, "a sensitive setting has no secret"
    assert not plain & set(declared), "a secret is also set as a plain environment variable"
    for entry_point in functions_table():
        secrets = terraform_settings(entry_point)[1]
        assert secrets <= set(declared)
        extra = secrets - settings_read(entry_point)
        assert not extra, f"{entry_point} may read secrets its code does not use: {sorted(extra)}"
    (secret,) = resources("google_secret_manager_secret").values()
    assert "google_secret_manager_secret_version" not in terraform()["resource"], (
        "secret values never pass through Terraform"
    )
    assert secret["for_each"] == "${local.enabled_secrets}"


def test_terraform_roles_follow_least_privilege():
    table = functions_table()
    kinds = {name: kind for name, (kind, _) in entry_points().items()}
    public = [ep for ep, f in table.items() if f["invoker"] == "public"]
    assert sorted(public) == ["receive_sms_status", "receive_webhook"]
    webhook = table["receive_webhook"]
    assert webhook["publishes"] == ["events"] and webhook["firestore"] is False
    assert sizing("receive_webhook")["concurrency"] > 1
    for ep, f in table.items():
        if ep == WORKER:
            assert f["invoker"] == "tasks" and f["publishes"] == ["outcomes"] and f["firestore"] is True
        elif kinds[ep] == "cloud_event":
            assert f["invoker"] == "pubsub" and f["publishes"][0] == "dead_letter" and f["firestore"] is True
            assert sizing(ep)["timeout_seconds"] == TOPOLOGY["ack_deadline_seconds"], (
                "a subscriber outliving its ack deadline is redelivered"
            )
        elif ep != "receive_webhook":
            assert f["firestore"] is True
        # Every change of a message publishes its outcome events: each function that writes
        # messages (record_inbound writes conversations only).
        writes = f["firestore"] and ep not in READ_ONLY | {"record_inbound"}
        assert ("outcomes" in f["publishes"]) == writes, f"{ep}: publisher on the outcomes topic or not"
    assert {ep for ep, f in table.items() if f["schedule"] is not None} == SWEEPS
    assert {ep for ep, f in table.items() if f["invoker"] == "scheduler"} == SWEEPS
    assert {ep for ep, f in table.items() if f["invoker"] == "tasks"} == {WORKER}
    budget = float(locals_()["tuning_defaults"]["SWEEP_BUDGET_SECONDS"])
    for ep in SWEEPS:
        # A hung run keeps its instance until the timeout: a second one serves the next run.
        assert sizing(ep)["max_instances"] == 2 and sizing(ep)["concurrency"] == 1
        assert sizing(ep)["timeout_seconds"] >= budget + 15
    assert sizing(WORKER)["max_instances"] >= 1
    # allUsers only in the one binding of the public functions, nowhere else.
    text = "\n".join(p.read_text() for p in MODULE.glob("*.tf"))
    assert text.count('"allUsers"') == 1 and "allAuthenticatedUsers" not in text
    public_binding = resources("google_cloud_run_v2_service_iam_member")["public"]
    assert public_binding["member"] == "allUsers" and 'f.invoker == "public"' in public_binding["for_each"]


def test_access_follows_the_code():
    # The table against the code: every secret it grants is read behind the entry
    # point, and every secret read is granted except where the deployed path never reaches it.
    assert set(ACCESS) == set(entry_points())
    for ep, (_, _, secrets, _) in ACCESS.items():
        assert secrets <= settings_read(ep), f"{ep}: ACCESS grants secrets its code does not read"
        if ep not in SWEEPS:
            assert secrets == settings_read(ep) & SENSITIVE, f"{ep}: ACCESS misses a secret its code reads"
    # Timers: exactly the functions whose code commits message changes may enqueue;
    # a scheduled function on its own duty's queue, every other one on both.
    assert {ep for ep in entry_points() if commits_messages(ep)} == TIMER_SETTERS
    assert {ep: ACCESS[ep][3] for ep in SWEEPS} == {"revoke_expired": {"rbm"}, "send_fallbacks": {"sms"}}
    assert all(ACCESS[ep][3] == set(QUEUES) for ep in TIMER_SETTERS - SWEEPS)


def test_the_commit_analysis_sees_who_sets_timers():
    # A guard on the analysis itself: a claim (receive_sms_status) is not a commit that sets a timer.
    assert commits_messages("track_delivery") and commits_messages(WORKER)
    assert not commits_messages("receive_sms_status") and not commits_messages("receive_webhook")
    assert not commits_messages("record_inbound"), "it writes conversations only"


def test_terraform_grants_exactly_what_each_function_needs():
    table = functions_table()
    firestore = resources("google_project_iam_member")["firestore"]
    assert firestore["role"] == (
        '${contains(local.firestore_read_only, each.key) ? "roles/datastore.viewer" : "roles/datastore.user"}'
    )
    read_only = set(locals_()["firestore_read_only"])
    for ep, (access, topics, secrets, queues) in ACCESS.items():
        f = table[ep]
        granted = None if not f["firestore"] else "read" if ep in read_only else "write"
        assert granted == access, f"{ep}: Firestore {granted}, its code needs {access}"
        assert set(f["publishes"]) == topics, f"{ep}: publishes to {f['publishes']}, needs {sorted(topics)}"
        assert terraform_settings(ep)[1] == secrets, f"{ep}: secrets {terraform_settings(ep)[1]}, needs {secrets}"
        assert terraform_queues(ep) == queues, f"{ep}: enqueues on {terraform_queues(ep)}, needs {queues}"
        assert terraform_settings(ep)[0] & TIMER_SETTINGS == (TIMER_SETTINGS if queues else set()), ep


def test_builds_push_to_their_own_repository_only():
    (function,) = resources("google_cloudfunctions2_function").values()
    repository = resources("google_artifact_registry_repository")["functions"]
    assert repository["format"] == "DOCKER" and repository["location"] == "${var.region}"
    assert _block(function, "build_config")["docker_repository"] == (
        "${google_artifact_registry_repository.functions.id}"
    )
    writer = resources("google_artifact_registry_repository_iam_member")["build"]
    assert writer["role"] == "roles/artifactregistry.writer"
    assert writer["member"] == "${google_service_account.build.member}"
    assert writer["repository"] == "${google_artifact_registry_repository.functions.name}"
    project_roles = resources("google_project_iam_member")["build"]["for_each"]
    assert "artifactregistry" not in project_roles, "the build may push to every repository of the project"
    for config in DRY_RUN_CONFIGS:
        images = "projects/demo-project/locations/europe-west1/repositories/rbm-relay-functions"
        assert {flag(c, "--docker-repository") for c in deploys(config).values()} == {images}
        bindings = commands(config, "gcloud", "artifacts", "repositories", "add-iam-policy-binding")
        assert [(c[4], flag(c, "--role")) for c in bindings] == [
            ("rbm-relay-functions", "roles/artifactregistry.writer")
        ]
        project = commands(config, "gcloud", "projects", "add-iam-policy-binding")
        assert not [c for c in project if "artifactregistry" in flag(c, "--role")]


def test_dry_run_grants_exactly_what_each_function_needs():
    names = {f["name"]: ep for ep, f in functions_table().items()}
    for config in DRY_RUN_CONFIGS:
        roles = {
            names[flag(c, "--member").removeprefix("serviceAccount:").split("@")[0]]: flag(c, "--role")
            for c in commands(config, "gcloud", "projects", "add-iam-policy-binding")
            if flag(c, "--role").startswith("roles/datastore.")
        }
        assert roles == {ep: FIRESTORE_ROLES[a] for ep, (a, *_) in ACCESS.items() if a}
        for ep, command in deploys(config).items():
            granted = set(secret_settings(command))
            assert granted <= ACCESS[ep][2], f"{ep}: secrets it does not need: {granted - ACCESS[ep][2]}"


DENY_ALL = re.compile(
    r"rules_version = '2';.*service cloud\.firestore \{\s*match /databases/\{database\}/documents \{\s*"
    r"match /\{document=\*\*\} \{\s*allow read, write: if false;\s*\}\s*\}\s*\}\s*$",
    re.S,
)


def test_both_routes_close_firestore_to_clients():
    rules = (INFRA / "firestore.rules").read_text()
    assert DENY_ALL.search(rules), "infra/firestore.rules is not the deny-all ruleset"
    assert "allow" not in rules.replace("allow read, write: if false;", "")
    # Terraform: the file as the ruleset, released to the configured database.
    ruleset = resources("google_firebaserules_ruleset")["firestore"]
    files = _block(_block(ruleset, "source"), "files")
    assert files["name"] == "firestore.rules" and files["content"] == '${file("${path.module}/../../firestore.rules")}'
    release = resources("google_firebaserules_release")["firestore"]
    assert release["name"] == (
        '${var.firestore_database == "(default)" ? "cloud.firestore" : "cloud.firestore/${var.firestore_database}"}'
    )
    assert (
        release["ruleset_name"] == "projects/${var.project_id}/rulesets/${google_firebaserules_ruleset.firestore.name}"
    )
    assert "firebaserules.googleapis.com" in locals_()["apis"]
    # gcloud: the same file as a new ruleset, then the release created (first run) pointing at it.
    for config in DRY_RUN_CONFIGS:
        calls = [c for c in dry_run(config) if is_rules_call(c)]
        (create, release_call) = calls
        assert create[create.index("-X") + 1] == "POST" and create[-1] == f"{RULES_API}projects/demo-project/rulesets"
        body = json.loads(create[create.index("--data-binary") + 1])
        assert body == {"source": {"files": [{"name": "firestore.rules", "content": rules}]}}
        assert release_call[-1] == f"{RULES_API}projects/demo-project/releases"
        released = json.loads(release_call[release_call.index("--data-binary") + 1])
        assert released["name"] == "projects/demo-project/releases/cloud.firestore"
        assert all("Bearer" not in word for c in calls for word in c), "the token goes on stdin"
        enable = commands(config, "gcloud", "services", "enable")[0]
        assert "firebaserules.googleapis.com" in enable


def test_the_rbm_key_is_a_mounted_file_that_follows_latest():
    # Secret Manager's advice: a variable keeps the version its instance started
    # with, a mounted file is read from Secret Manager, "latest" included.
    path = "/etc/secrets/rbm/key.json"
    assert locals_()["secret_files"] == {"RBM_SERVICE_ACCOUNT_KEY_FILE": path}
    (function,) = resources("google_cloudfunctions2_function").values()
    dynamic = {name: block for d in _block(function, "service_config")["dynamic"] for name, block in d.items()}
    volume = dynamic["secret_volumes"]["content"][0]
    assert volume["mount_path"] == "${dirname(secret_volumes.value)}"
    assert _block(volume, "versions") == {"version": "latest", "path": "${basename(secret_volumes.value)}"}
    commands_ = deploys("webhook")  # RBM_KEY_FROM_SECRET=true
    for ep in ("send_message", WORKER):
        assert f"{path}=rbm-service-account-key:latest" in flag(commands_[ep], "--set-secrets").split(",")
        assert env_vars(flag(commands_[ep], "--set-env-vars"))["RBM_SERVICE_ACCOUNT_KEY_FILE"] == path
    for ep in SWEEPS | {"receive_webhook"}:
        assert "RBM_SERVICE_ACCOUNT_KEY_FILE" not in env_vars(flag(commands_[ep], "--set-env-vars"))
    assert "RBM_SERVICE_ACCOUNT_KEY_FILE" not in env_vars(flag(deploys("twilio")["send_message"], "--set-env-vars"))


def assert_push_delivery(subscription: dict, topology: str, dead_letter: str) -> dict:
    """Asserts a push subscription takes its deadline, retention, dead-letter policy and
    backoff from `topology` (a local of topology.json) and pushes as the push identity;
    answers its push_config."""
    assert subscription["ack_deadline_seconds"] == f"${{{topology}.ack_deadline_seconds}}"
    assert subscription["message_retention_duration"] == f"${{{topology}.message_retention}}"
    assert _block(subscription, "dead_letter_policy") == {
        "dead_letter_topic": f"${{{dead_letter}.id}}",
        "max_delivery_attempts": f"${{{topology}.max_delivery_attempts}}",
    }
    assert _block(subscription, "retry_policy") == {
        "minimum_backoff": f"${{{topology}.minimum_backoff}}",
        "maximum_backoff": f"${{{topology}.maximum_backoff}}",
    }
    push_config = _block(subscription, "push_config")
    assert _block(push_config, "oidc_token")["service_account_email"] == "${google_service_account.push.email}"
    return push_config


def test_terraform_pubsub_comes_from_topology_json():
    assert _module_path(locals_()["topology"]) == INFRA / "topology.json"
    assert "local.topology.subscriptions" in locals_()["subscriptions"]
    topics = resources("google_pubsub_topic")
    assert topics["events"]["name"] == "${local.topology.events_topic}"
    assert topics["dead_letter"]["name"] == "${local.topology.dead_letter_topic}"
    subscriptions = resources("google_pubsub_subscription")
    inspect = subscriptions["dead_letter_inspect"]
    assert inspect["name"] == "${local.topology.dead_letter_subscription}"
    push = subscriptions["push"]
    assert push["for_each"] == "${local.subscriptions}"
    assert push["filter"] == "${each.value.filter}"
    assert push["topic"] == "${google_pubsub_topic.events.id}"
    push_config = assert_push_delivery(push, "local.topology", "google_pubsub_topic.dead_letter")
    assert "google_cloudfunctions2_function.this[each.value.entry_point]" in push_config["push_endpoint"]
    # The Pub/Sub service agent may forward dead letters, from every push subscription to the dead-letter topic.
    agent_topic = resources("google_pubsub_topic_iam_member")["agent_dead_letter"]
    assert agent_topic["topic"] == "${google_pubsub_topic.dead_letter.name}"
    agent_source = resources("google_pubsub_subscription_iam_member")["agent_source"]
    assert agent_source["for_each"] == "${google_pubsub_subscription.push}"
    assert set(topics) == {"events", "dead_letter", "outcomes", "outcomes_dead_letter"}, "no work topic any more"
    assert set(subscriptions) == {"dead_letter_inspect", "push", "outcomes_push", "outcomes_dead_letter_inspect"}


def test_terraform_queues_come_from_topology_json():
    queue = resources("google_cloud_tasks_queue")["this"]
    assert queue["for_each"] == "${local.queues}" and queue["name"] == "${each.value.name}"
    assert queue["location"] == "${var.region}"
    assert _block(queue, "rate_limits") == {
        "max_dispatches_per_second": "${each.value.max_dispatches_per_second}",
        "max_concurrent_dispatches": "${each.value.max_concurrent_dispatches}",
    }
    assert _block(queue, "retry_config") == {
        field: f"${{each.value.{field}}}" for field in ("max_attempts", "min_backoff", "max_backoff", "max_doublings")
    }
    assert "local.topology.queues" in locals_()["queues"]
    assert locals_()["queue_rates"] == {
        "rbm": "${var.rbm_max_calls_per_second}",
        "sms": "${var.sms_max_sends_per_second}",
    }
    settings = locals_()["deployment_settings"]
    for key, name in QUEUE_SETTINGS.items():
        assert settings[name] == f'${{google_cloud_tasks_queue.this["{key}"].id}}'
    assert settings["TASKS_SERVICE_ACCOUNT"] == "${google_service_account.tasks.email}"
    assert "cloudtasks.googleapis.com" in locals_()["apis"]


@pytest.mark.skipif(not shutil.which("terraform"), reason="terraform is not installed")
def test_terraform_queue_rates_default_to_topology_json_and_are_overridable(tmp_path):
    names = ("topology", "queue_rates", "queues")
    assert terraform_console(tmp_path, names, (), ("queues",))["queues"] == QUEUES
    overridden = terraform_console(tmp_path, names, (), ("queues",), rbm_max_calls_per_second=120)["queues"]
    assert overridden["rbm"]["max_dispatches_per_second"] == 120
    assert overridden["sms"] == QUEUES["sms"]
    for name in ("rbm_max_calls_per_second", "sms_max_sends_per_second"):
        (validation,) = terraform()["variable"][name]["validation"]
        assert validation["condition"] == f"${{coalesce(var.{name}, 1) > 0 && coalesce(var.{name}, 1) <= 500}}"
    for q in QUEUES.values():  # Cloud Tasks: RateLimits.max_dispatches_per_second, at most 500
        assert 0 < q["max_dispatches_per_second"] <= 500


@pytest.mark.skipif(not shutil.which("terraform"), reason="terraform is not installed")
def test_terraform_grants_each_timer_setter_its_queues(tmp_path):
    """Enqueuer on the queues a function's settings name, viewer (GetTask) for the scheduled
    safety nets on their own queue, actAs on the tasks identity for all who enqueue."""
    names = (
        *("revoke_settings", "fallback_settings", "worker_settings", "schedule_period_seconds", "schedule"),
        *("queue_groups", "enqueuers", "task_viewers", "timer_setters"),
    )
    grants = terraform_console(
        tmp_path, names, ("settings", "schedule"), ("enqueuers", "task_viewers", "timer_setters")
    )
    assert {(e["function"], e["queue"]) for e in grants["enqueuers"].values()} == {
        (ep, q) for ep, (*_, queues) in ACCESS.items() for q in queues
    }
    assert {(e["function"], e["queue"]) for e in grants["task_viewers"].values()} == {
        ("revoke_expired", "rbm"),
        ("send_fallbacks", "sms"),
    }
    assert set(grants["timer_setters"]) == TIMER_SETTERS
    expected = {
        "enqueuer": ("google_cloud_tasks_queue_iam_member", "roles/cloudtasks.enqueuer", "enqueuers"),
        "viewer": ("google_cloud_tasks_queue_iam_member", "roles/cloudtasks.viewer", "task_viewers"),
    }
    for name, (type_, role, grants_local) in expected.items():
        binding = resources(type_)[name]
        assert binding["for_each"] == f"${{local.{grants_local}}}" and binding["role"] == role
        assert binding["name"] == "${google_cloud_tasks_queue.this[each.value.queue].name}"
        assert binding["member"] == "${google_service_account.function[each.value.function].member}"
    user = resources("google_service_account_iam_member")["tasks_user"]
    assert user["for_each"] == "${local.timer_setters}" and user["role"] == "roles/iam.serviceAccountUser"
    assert user["service_account_id"] == "${google_service_account.tasks.name}"


def test_only_the_tasks_identity_invokes_the_worker():
    invokers = locals_()["invokers"]
    assert 'f.invoker == "tasks"' in invokers and "google_service_account.tasks.member" in invokers
    assert invokers.count("google_service_account.tasks.member") == 1
    assert (
        functions_table()[WORKER]["invoker"] == "tasks"
        and functions_table()[WORKER]["ingress"] == "ALLOW_INTERNAL_ONLY"
    )
    # Cloud Tasks' service agent may mint the identity's tokens; nobody else is granted on it but the timer setters.
    agent = resources("google_service_account_iam_member")["tasks_agent_token"]
    assert agent["service_account_id"] == "${google_service_account.tasks.name}"
    assert agent["role"] == "roles/iam.serviceAccountTokenCreator"
    assert agent["member"] == "serviceAccount:${google_project_service_identity.cloudtasks.email}"
    on_tasks = [
        b for b in resources("google_service_account_iam_member").values() if "tasks" in b["service_account_id"]
    ]
    assert len(on_tasks) == 2


def test_the_worker_url_is_known_before_any_function_exists():
    """Every task's target and OIDC audience. The worker sets timers itself, so its own URL
    cannot come from its resource (a function would depend on itself): both routes use
    Cloud Run's deterministic URL, https://NAME-PROJECT_NUMBER.REGION.run.app."""
    run_url = locals_()["run_url"]
    assert run_url == (
        "${{for ep, f in local.functions : ep => "
        '"https://${f.name}-${data.google_project.this.number}.${var.region}.run.app"}}'
    )
    settings = locals_()["deployment_settings"]
    assert settings["WORKER_URL"] == "${local.run_url.process_due_work}"
    assert "local.run_url.receive_sms_status" in settings["SMS_STATUS_CALLBACK_URL"]
    for config in DRY_RUN_CONFIGS:
        deployed = deploys(config)
        url = f"https://{functions_table()[WORKER]['name']}-PROJECT_NUMBER.europe-west1.run.app"
        for ep in TIMER_SETTERS:
            assert env_vars(flag(deployed[ep], "--set-env-vars"))["WORKER_URL"] == url, ep
        # gcloud deploys the worker, and lets the tasks identity invoke it, before any function that enqueues.
        listing = dry_run(config)
        worker_invoker = next(
            i
            for i, c in enumerate(listing)
            if c[1:5] == ["run", "services", "add-iam-policy-binding", functions_table()[WORKER]["name"]]
        )
        enqueuers = [
            i
            for i, c in enumerate(listing)
            if c[1:3] == ["functions", "deploy"] and flag(c, "--entry-point") in TIMER_SETTERS - {WORKER}
        ]
        assert worker_invoker < min(enqueuers)


def test_the_worker_timeout_covers_a_task():
    """A task waits for its due second (at most dispatch.MAX_EARLY_SECONDS), a revoke its
    grace window, then makes one call: RBM at its longest is RBM_RETRY_SECONDS plus one try
    (rbm.TIMEOUT, connect + read). A worker past its timeout answers 504: the queue retries."""
    from functions import dispatch, rbm, sms

    tuning = {k: float(v) for k, v in locals_()["tuning_defaults"].items() if re.fullmatch(r"[\d.]+", v)}
    task = dispatch.MAX_EARLY_SECONDS + tuning["REVOKE_GRACE_SECONDS"] + tuning["RBM_RETRY_SECONDS"] + sum(rbm.TIMEOUT)
    assert sum(sms.TIMEOUT) <= sum(rbm.TIMEOUT) <= 35, "the preconditions' 35 s for one RBM try no longer hold"
    assert dispatch.MAX_EARLY_SECONDS <= 5, "the preconditions' 5 s of waiting no longer hold"
    assert task <= sizing(WORKER)["timeout_seconds"]
    conditions = [
        p["condition"] for p in _block(resources("google_cloud_tasks_queue")["this"], "lifecycle")["precondition"]
    ]
    assert any(
        "local.tuning.REVOKE_GRACE_SECONDS" in c and "+ 40 <= local.sizing.process_due_work.timeout_seconds" in c
        for c in conditions
    )
    assert "5 + REVOKE_GRACE_SECONDS + RBM_RETRY_SECONDS + 35 <= worker_timeout" in DEPLOY_SH.read_text()


def test_the_worker_holds_what_both_queues_dispatch_at_once():
    """Each queue has at most max_concurrent_dispatches tasks in flight; the worker's instances
    x concurrency (one thread each) hold both at once, so the queues and not Cloud Run's 429s
    set the pace."""
    size = sizing(WORKER)
    assert size["max_instances"] * size["concurrency"] >= sum(q["max_concurrent_dispatches"] for q in QUEUES.values())


def test_tuning_defaults_are_the_codes_defaults(monkeypatch):
    """locals.tf repeats the code's defaults so that a deployment states what it runs with."""
    from functions import config

    readers = {next(iter(names)): function for function, names in config_settings().items() if len(names) == 1}
    for setting, default in locals_()["tuning_defaults"].items():
        monkeypatch.delenv(setting, raising=False)
        value = getattr(config, readers[setting])()
        expected = default.split(",") if isinstance(value, list) else type(value)(default)
        assert value == expected, f"{setting}: locals.tf says {default}, the code {value}"


def test_topology_subscribes_every_cloud_event_entry_point_once():
    cloud_events = {name for name, (kind, _) in entry_points().items() if kind == "cloud_event"}
    counts = Counter(s["entry_point"] for s in TOPOLOGY["subscriptions"])
    assert set(counts) == cloud_events and set(counts.values()) == {1}
    assert all(s["filter"] for s in TOPOLOGY["subscriptions"])
    assert "work" not in TOPOLOGY, "the due work is on Cloud Tasks (queues), not a topic"


def test_composite_indexes_match_the_code():
    from functions import model

    code = {(collection, tuple(fields)) for collection, fields in model.COMPOSITE_INDEXES}
    declared = {(i["collection"], tuple(i["fields"])) for i in INDEXES}
    assert code == declared, "infra/firestore_indexes.json and functions.model.COMPOSITE_INDEXES differ"


def test_terraform_indexes_and_ttl_come_from_the_json():
    assert _module_path(locals_()["firestore_index"]) == INFRA / "firestore_indexes.json"
    index = resources("google_firestore_index")["this"]
    assert "local.firestore_index" in index["for_each"]
    (fields,) = (d["fields"] for d in index["dynamic"])
    assert fields["for_each"] == "${each.value.fields}"
    assert fields["content"][0]["order"] == "ASCENDING"
    ttl = resources("google_firestore_field")["ttl"]
    assert ttl["field"] == "expire_at" and "ttl_config" in ttl
    for collection in ("var.messages_collection", "var.conversations_collection", '"messages"'):
        assert collection in ttl["for_each"]


def cron_period(schedule: str) -> int:
    """Seconds between two runs of a unix-cron schedule that fires every N minutes."""
    match = re.fullmatch(r"(?:\*|\*/(\d+)) \* \* \* \*", schedule)
    assert match, f"{schedule!r} is not every N minutes"
    return 60 * int(match.group(1) or 1)


def test_terraform_schedule_and_its_period_have_one_definition():
    period = int(locals_()["schedule_period_seconds"])
    assert locals_()["schedule"] == "*/${local.schedule_period_seconds / 60} * * * *"
    assert cron_period(f"*/{period // 60} * * * *") == period
    assert {ep for ep, f in functions_table().items() if f["schedule"] == "${local.schedule}"} == SWEEPS
    assert "SCHEDULE_PERIOD_SECONDS" not in locals_()["deployment_settings"], "no polling: the code needs no period"


def test_terraform_schedules_the_sweeps():
    job = resources("google_cloud_scheduler_job")["sweep"]
    assert "f.schedule != null" in job["for_each"]
    http = _block(job, "http_target")
    assert _block(http, "oidc_token")["service_account_email"] == "${google_service_account.scheduler.email}"
    assert "retry_config" in job


def test_a_hung_run_holds_its_job_back_one_period_at_most():
    """Cloud Scheduler starts a job's next execution only once the last has ended
    (reference, Job.schedule); the attempt deadline is when it stops waiting for a run
    that does not answer. One period: a run that answers ends before the next tick
    (functions/dispatch.py), a hung one is given up then. HTTP targets take 15 s to
    30 minutes (reference, Job.attempt_deadline)."""
    period = int(locals_()["schedule_period_seconds"])
    job = resources("google_cloud_scheduler_job")["sweep"]
    assert job["attempt_deadline"] == "${local.schedule_period_seconds}s"
    assert 15 <= period <= 1800
    retry = _block(job, "retry_config")
    assert int(retry["max_retry_duration"].rstrip("s")) < period, "a run past its attempt deadline is not retried"
    for c in commands("twilio", "gcloud", "scheduler", "jobs", "create", "http"):
        assert flag(c, "--attempt-deadline") == f"{period}s"
        assert int(flag(c, "--max-retry-duration").rstrip("s")) < period


def _hcl(value) -> str:
    """A parsed value written back as HCL: "${expression}" -> expression, None -> null,
    lists and objects element by element; `${path.module}` is the module's directory."""
    if isinstance(value, str) and value.startswith("${") and value.endswith("}"):
        return value[2:-1].replace("${path.module}", str(MODULE))
    if isinstance(value, list):
        return f"[{', '.join(map(_hcl, value))}]"
    if isinstance(value, dict):
        return f"{{{', '.join(f'{k} = {_hcl(v)}' for k, v in value.items())}}}"
    return "null" if value is None else json.dumps(value)


def terraform_console(
    directory: Path, names: tuple[str, ...], fields: tuple[str, ...], outputs: tuple[str, ...], **variables: float
) -> dict:
    """The module's locals `outputs`, run by terraform console in a scratch module that
    holds the locals `names` (what they read, `outputs` among them), the functions table
    with its `fields`, and the module's variables as numbers (null unless given)."""
    code = {name: locals_()[name] for name in names}
    table = ", ".join(
        f"{ep} = {{{', '.join(f'{field} = {_hcl(f[field])}' for field in fields)}}}"
        for ep, f in functions_table().items()
    )
    lines = [f'variable "{v}" {{\n  type    = number\n  default = null\n}}' for v in terraform()["variable"]]
    lines += ["locals {", f"  functions = {{{table}}}"]
    lines += [f"  {name} = {_hcl(value)}" for name, value in code.items()]
    (directory / "main.tf").write_text("\n".join([*lines, "}", ""]))
    args = [f"-var={name}={value}" for name, value in variables.items()]
    result = subprocess.run(
        ["terraform", "console", *args],
        input=f"jsonencode({{{', '.join(f'{o} = local.{o}' for o in outputs)}}})\n",
        capture_output=True,
        text=True,
        timeout=120,
        cwd=directory,
        env={**os.environ, "TF_CLI_CONFIG_FILE": os.devnull},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(json.loads(result.stdout.strip().splitlines()[-1]))


def terraform_sizing(directory: Path, **variables: int) -> dict:
    """The module's `sizing` and `runtime_env` locals, with the instance variables (null unless given)."""
    names = ("topology", "runtime", "ack_deadlines", "sizing", "runtime_env")
    return terraform_console(
        directory, names, ("min_instances", "max_instances"), ("sizing", "runtime_env"), **variables
    )


@pytest.mark.skipif(not shutil.which("terraform"), reason="terraform is not installed")
def test_terraform_sizes_every_function_from_functions_json(tmp_path):
    evaluated = terraform_sizing(tmp_path)
    for ep in entry_points():
        assert evaluated["sizing"][ep] == sizing(ep), ep
        assert evaluated["runtime_env"][ep] == {"THREADS": str(sizing(ep)["concurrency"]), "WORKERS": "1"}, ep
    overridden = terraform_sizing(tmp_path, worker_max_instances=9, webhook_min_instances=1)["sizing"]
    assert overridden[WORKER]["max_instances"] == 9 and overridden["receive_webhook"]["min_instances"] == 1


def test_every_deployed_function_has_a_thread_per_concurrent_request():
    """functions-framework serves with gunicorn: WORKERS processes of THREADS threads, by
    default os.cpu_count() x 4 threads. Cloud Run sends an instance up to its concurrency
    at once, so each deployed function gets THREADS = its concurrency, in one process
    (Cloud Run functions, "Concurrency"); test_terraform_sizes_every_function_from_functions_json
    runs Terraform's side."""
    assert _module_path(locals_()["runtime"].removesuffix(".functions}") + "}") == INFRA / "functions.json"
    assert set(RUNTIME) == set(entry_points())
    assert "local.runtime_env[ep]" in locals_()["function_env"]
    service = _block(resources("google_cloudfunctions2_function")["this"], "service_config")
    assert service["max_instance_request_concurrency"] == "${local.sizing[each.key].concurrency}"
    for config in DRY_RUN_CONFIGS:
        for ep, command in deploys(config).items():
            env = env_vars(flag(command, "--set-env-vars"))
            assert env["THREADS"] == flag(command, "--concurrency") == str(sizing(ep)["concurrency"]), ep
            assert env["WORKERS"] == "1", ep


def test_local_function_processes_run_with_the_deployed_threads():
    """The tests, the local stack and the benchmarks start functions as deployed."""
    for ep in entry_points():
        env = FunctionProcess(ep, log_path=Path(os.devnull)).env
        assert (env["THREADS"], env["WORKERS"]) == (str(sizing(ep)["concurrency"]), "1"), ep
    assert FunctionProcess(WORKER, {"THREADS": "40"}, log_path=Path(os.devnull)).env["THREADS"] == "40"


def test_metrics_count_events_the_code_logs():
    events = set(locals_()["log_events"])
    assert events >= METRIC_EVENTS
    readme = (INFRA / "README.md").read_text()
    for event in events:
        assert logged_events_match(event), f"no code logs jsonPayload.event={event!r}"
        assert f"`{event}`" in readme, f"infra/README.md does not document {event}"


def test_provider_versions_are_pinned():
    for directory in (MODULE, TERRAFORM / "example"):
        (versions,) = (
            b["required_providers"]
            for b in hcl2.load((directory / "versions.tf").open(), serialization_options=HCL)["terraform"]
        )
        providers = {k: v for block in versions for k, v in block.items()}
        for name in ("google", "google-beta"):
            assert re.fullmatch(r"~> \d+\.\d+\.\d+", providers[name]["version"]), (
                f"{name} is not pinned to one minor release"
            )


def _bash_array(name: str) -> list[str]:
    match = re.search(rf"^{name}=\((.*?)^\)", DEPLOY_SH.read_text(), re.S | re.M)
    return shlex.split(match.group(1), comments=True)


# --- the source archive ---------------------------------------------------------------------

SOURCE_LIST = INFRA / "source_files.json"


def _deploy_helper() -> str:
    """The Python helper deploy.sh runs (its PYHELPER heredoc)."""
    return re.search(r"^PYHELPER=\$\(cat <<'PY'\n(.*?)^PY$", DEPLOY_SH.read_text(), re.S | re.M).group(1)


def gcloud_archive(root: Path) -> bytes:
    """The zip deploy.sh uploads for the tree at `root`."""
    return subprocess.run(
        [sys.executable, "-c", _deploy_helper(), "source-zip", str(root), str(SOURCE_LIST)],
        capture_output=True,
        timeout=120,
        check=True,
    ).stdout


def terraform_files(root: Path) -> list[str]:
    """The files the module's archive holds for the tree at `root`: its own fileset() expression, run by terraform."""
    expression = locals_()["source_files"].removeprefix("${").removesuffix("}")
    patterns = json.dumps(json.loads(SOURCE_LIST.read_text())["patterns"])
    expression = expression.replace("local.source_patterns", patterns).replace(
        "local.source_dir", json.dumps(str(root))
    )
    result = subprocess.run(
        ["terraform", "console"],
        input=f"jsonencode({expression})\n",
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root.parent,
        check=True,
    )
    return json.loads(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.fixture()
def working_tree(tmp_path: Path) -> Path:
    """A checkout after `make test` and a local setup: the code, plus what must never ship."""
    root = tmp_path / "repo"
    for name in (
        "main.py",
        "requirements.txt",
        "functions/__init__.py",
        "functions/config.py",
        "functions/sub/deep.py",
    ):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"# {name}\n")
    for name in (
        ".venv/lib/python3.11/site-packages/functions/x.py",
        ".venv-checkov/bin/checkov",
        ".ruff_cache/a.json",
        ".pytest_cache/v/x",
        "functions/__pycache__/config.cpython-311.pyc",
        "rbm-key.json",
        "requirements-checkov.txt",
        "requirements-dev.txt",
        "requirements.in",  # the lock's source: the build installs requirements.txt alone
        "notes.txt",
        "tests/unit/test_x.py",
        "local/fake_rbm.py",
        "infra/topology.json",
        ".git/HEAD",
        ".terraform/rbm-relay-source.zip",
    ):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("must not ship\n")
    (root / "main.py").chmod(0o755)  # a checkout's modes vary; the archive's must not
    return root


DEPLOYED = ["functions/__init__.py", "functions/config.py", "functions/sub/deep.py", "main.py", "requirements.txt"]


def test_gcloud_archive_holds_exactly_the_listed_files(working_tree):
    archive = zipfile.ZipFile(io.BytesIO(gcloud_archive(working_tree)))
    assert archive.namelist() == DEPLOYED
    assert {i.external_attr >> 16 for i in archive.infolist()} == {0o100644}
    assert {i.date_time for i in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_gcloud_archive_is_the_same_on_every_machine(working_tree, tmp_path):
    first = gcloud_archive(working_tree)
    for path in working_tree.rglob("*"):
        os.utime(path, (0, 1_700_000_000))
    (working_tree / "main.py").chmod(0o600)
    assert gcloud_archive(working_tree) == first


@pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform is not installed")
def test_terraform_archive_holds_exactly_the_listed_files(working_tree):
    assert terraform_files(working_tree) == DEPLOYED


def test_terraform_archive_is_built_from_the_list():
    assert _module_path(locals_()["source_patterns"].replace(").patterns}", ")}")) == SOURCE_LIST
    archive = terraform()["data"]["archive_file"]["source"]
    assert "source_dir" not in archive and "excludes" not in archive
    (source,) = (d["source"] for d in archive["dynamic"])
    assert source["for_each"] == "${local.source_files}"
    assert source["content"][0] == {
        "filename": "${source.value}",
        "content": '${file("${local.source_dir}/${source.value}")}',
    }


def test_the_repository_ships_its_code():
    names = set(zipfile.ZipFile(io.BytesIO(gcloud_archive(ROOT))).namelist())
    assert {"main.py", "requirements.txt"} | {f"functions/{p.name}" for p in (ROOT / PACKAGE).glob("*.py")} == names


def test_old_archives_expire_in_both_routes():
    rules = json.loads((INFRA / "source_bucket_lifecycle.json").read_text())["rule"]
    assert any(r["condition"].get("age") and r["condition"].get("matchesPrefix") == ["source/"] for r in rules)
    bucket = resources("google_storage_bucket")["source"]
    (lifecycle,) = (d["lifecycle_rule"] for d in bucket["dynamic"])
    assert 'file("${path.module}/../../source_bucket_lifecycle.json")' in lifecycle["for_each"]
    (update,) = commands("twilio", "gcloud", "storage", "buckets", "update")
    assert flag(update, "--lifecycle-file") == "infra/source_bucket_lifecycle.json"


# --- gcloud --dry-run --------------------------------------------------------------------------

DRY_RUN_CONFIGS = {
    "twilio": {
        "SMS_PROVIDER": "twilio",
        "TWILIO_ACCOUNT_SID": "AC0000",
        "TWILIO_FROM_NUMBER": "+15005550006",
        "TWILIO_MESSAGING_SERVICE_SID": "MG0000",
        "TWILIO_API_BASE": "https://api.twilio.com",
    },
    "webhook": {
        "SMS_PROVIDER": "webhook",
        "SMS_WEBHOOK_URL": "https://sms.example.com/send",
        "SMS_WEBHOOK_IDEMPOTENT": "true",
        "SMS_MAX_SEGMENTS": "4",
        "RBM_KEY_FROM_SECRET": "true",
        "SEND_MESSAGE_INVOKERS": "serviceAccount:backend@demo-project.iam.gserviceaccount.com",
        "OUTCOMES_PUSH_ENDPOINT": "https://sender.example.com/rbm-outcomes",
    },
}


def dry_run_with(config: str = "twilio", **settings: str) -> subprocess.CompletedProcess:
    """deploy.sh --dry-run with `config`'s settings (DRY_RUN_CONFIGS) and `settings` on top."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "PROJECT": "demo-project",
        "REGION": "europe-west1",
        "RBM_AGENT_ID": "demo-agent",
        "NOTIFICATION_CHANNELS": "",
        **DRY_RUN_CONFIGS[config],
        **settings,
    }
    return subprocess.run(["bash", str(DEPLOY_SH), "--dry-run"], env=env, capture_output=True, text=True, timeout=120)


def dry_run_output(config: str) -> str:
    result = dry_run_with(config)
    assert result.returncode == 0, result.stderr
    return result.stdout


@cache
def dry_run_listing(config: str) -> str:
    return dry_run_output(config)


@cache
def dry_run(config: str) -> list[list[str]]:
    """The commands of a dry run that change something (look-ups are comment lines)."""
    lines = [line for line in dry_run_listing(config).splitlines() if line.strip() and not line.startswith("#")]
    return [shlex.split(line) for line in lines]


def flags(command: list[str]) -> dict[str, list[str]]:
    out = {}
    for word in command:
        if word.startswith("--"):
            key, _, value = word.partition("=")
            out.setdefault(key, []).append(value)
    return out


def flag(command: list[str], name: str) -> str:
    (value,) = flags(command)[name]
    return value


def commands(config: str, *prefix: str) -> list[list[str]]:
    return [c for c in dry_run(config) if c[: len(prefix)] == list(prefix)]


def deploys(config: str) -> dict[str, list[str]]:
    """Entry point -> its `gcloud functions deploy` command."""
    return {flag(c, "--entry-point"): c for c in commands(config, "gcloud", "functions", "deploy")}


def _terraform_value(value):
    """A function table value, with `local.topology.X` and `var.X` (its default) resolved."""
    if isinstance(value, str) and (m := re.fullmatch(r"\$\{local\.topology\.([\w.]+)\}", value)):
        return reduce(lambda node, key: node[key], m.group(1).split("."), TOPOLOGY)
    if isinstance(value, str) and (m := re.fullmatch(r"\$\{var\.(\w+)\}", value)):
        return terraform()["variable"][m.group(1)]["default"]
    return value


def test_dry_run_sizes_functions_as_terraform_does():
    ingress = {
        "ALLOW_ALL": "all",
        "ALLOW_INTERNAL_ONLY": "internal-only",
        "ALLOW_INTERNAL_AND_GCLB": "internal-and-gclb",
    }
    for ep, command in deploys("twilio").items():
        f = {k: _terraform_value(v) for k, v in functions_table()[ep].items()}
        size = sizing(ep)
        assert flag(command, "--memory") == size["memory"] and flag(command, "--cpu") == size["cpu"]
        assert flag(command, "--concurrency") == str(size["concurrency"])
        assert flag(command, "--timeout") == f"{size['timeout_seconds']}s"
        assert flag(command, "--min-instances") == str(size["min_instances"])
        assert flag(command, "--max-instances") == str(size["max_instances"])
        assert flag(command, "--ingress-settings") == ingress[f["ingress"]]
    service = _block(resources("google_cloudfunctions2_function")["this"], "service_config")
    for argument, key in [
        ("available_memory", "memory"),
        ("available_cpu", "cpu"),
        ("timeout_seconds", "timeout_seconds"),
        ("min_instance_count", "min_instances"),
        ("max_instance_count", "max_instances"),
    ]:
        assert service[argument] == f"${{local.sizing[each.key].{key}}}"


def test_dry_run_is_deterministic():
    assert dry_run_output("twilio") == dry_run_output("twilio")


RULES_API = "https://firebaserules.googleapis.com/v1/"


def is_rules_call(command: list[str]) -> bool:
    """A curl call of the Firebase Rules REST API, the one API deploy.sh calls without gcloud."""
    return command[0] == "curl" and command[-1].startswith(RULES_API)


def test_dry_run_prints_only_gcloud_commands():
    for config in DRY_RUN_CONFIGS:
        assert dry_run(config) and all(c[0] == "gcloud" or is_rules_call(c) for c in dry_run(config))


@pytest.mark.parametrize("config", sorted(DRY_RUN_CONFIGS))
def test_dry_run_deploys_each_entry_point_exactly_once(config):
    counts = Counter(flag(c, "--entry-point") for c in commands(config, "gcloud", "functions", "deploy"))
    assert set(counts) == set(entry_points()) and set(counts.values()) == {1}
    names = {ep: c[3] for ep, c in deploys(config).items()}
    assert names == {ep: f["name"] for ep, f in functions_table().items()}, (
        "gcloud and Terraform name functions differently"
    )
    for c in deploys(config).values():
        assert flag(c, "--trigger-http") == "" and flag(c, "--gen2") == ""


def env_vars(value: str) -> dict[str, str]:
    """--set-env-vars as gcloud reads it: comma-separated, or "^X^" first to name
    another delimiter (`gcloud topic escaping`)."""
    delimiter = ","
    if escaped := re.match(r"\^(.)\^", value):
        delimiter, value = escaped.group(1), value[escaped.end() :]
    return dict(pair.split("=", 1) for pair in value.split(delimiter) if pair)


def test_a_list_setting_keeps_its_commas_through_the_gcloud_route():
    command = deploys("twilio")["record_inbound"]
    assert env_vars(flag(command, "--set-env-vars"))["OPT_IN_KEYWORDS"] == "START,UNSTOP,YES"


def secret_settings(command: list[str]) -> dict[str, str]:
    """--set-secrets as setting -> secret ref: a SETTING=secret:version variable, or a
    PATH=secret:version mount whose path is the value of a secret file's setting."""
    env = env_vars(flag(command, "--set-env-vars"))
    refs = dict(ref.split("=", 1) for ref in flags(command).get("--set-secrets", [""])[0].split(",") if ref)
    paths = {value: name for name, value in env.items() if name in locals_()["secret_files"]}
    assert set(paths) <= set(refs), "a secret file's setting names a path nothing is mounted at"
    return {paths.get(key, key): ref for key, ref in refs.items()}


@pytest.mark.parametrize("entry_point", sorted(entry_points()))
def test_dry_run_sets_every_setting_the_code_reads(entry_point):
    provided = set()
    for config in DRY_RUN_CONFIGS:
        command = deploys(config)[entry_point]
        env = env_vars(flag(command, "--set-env-vars"))
        secret_refs = secret_settings(command)
        plain = {name for name in env if env[name] != locals_()["secret_files"].get(name)}
        assert not plain & SENSITIVE, f"{entry_point}: a secret passed as a plain variable"
        for setting, ref in secret_refs.items():
            assert ref == f"{locals_()['secrets'][setting]['secret_id']}:latest", (
                "gcloud and Terraform name a secret differently"
            )
        provided |= set(env) | set(secret_refs)
        assert env["GOOGLE_CLOUD_PROJECT"] == "demo-project"
    missing = settings_needed(entry_point) - provided
    assert not missing, f"{entry_point} reads settings the gcloud route does not set: {sorted(missing)}"


def test_dry_run_keeps_all_but_the_public_callbacks_private():
    for config in DRY_RUN_CONFIGS:
        for ep, command in deploys(config).items():
            expected = "--allow-unauthenticated" if ep in PUBLIC else "--no-allow-unauthenticated"
            assert expected in command
        assert not any("allUsers" in word for c in dry_run(config) for word in c)
        invokers = commands(config, "gcloud", "run", "services", "add-iam-policy-binding")
        assert {flag(c, "--role") for c in invokers} == {"roles/run.invoker"}
        assert not {functions_table()[ep]["name"] for ep in PUBLIC} & {c[4] for c in invokers}


def assert_push_flags(command: list[str], topology: dict, topic: str, function: str) -> None:
    """Asserts a `subscriptions create` command pushes `topic` to `function` as the push
    identity, with the deadline, retention, dead letters and backoff of `topology`."""
    assert flag(command, "--topic") == topic
    assert flag(command, "--dead-letter-topic") == topology["dead_letter_topic"]
    assert flag(command, "--max-delivery-attempts") == str(topology["max_delivery_attempts"])
    assert flag(command, "--ack-deadline") == str(topology["ack_deadline_seconds"])
    assert flag(command, "--min-retry-delay") == topology["minimum_backoff"]
    assert flag(command, "--max-retry-delay") == topology["maximum_backoff"]
    assert flag(command, "--message-retention-duration") == topology["message_retention"]
    endpoint = flag(command, "--push-endpoint")
    assert endpoint.startswith(f"https://{function}-")
    assert endpoint.endswith(f"/projects/demo-project/topics/{topic}")
    assert flag(command, "--push-auth-service-account").startswith("rbm-pubsub-push@")


def test_dry_run_subscriptions_follow_topology_json():
    creates = {c[4]: c for c in commands("twilio", "gcloud", "pubsub", "subscriptions", "create")}
    names = {ep: f["name"] for ep, f in functions_table().items()}
    for s in TOPOLOGY["subscriptions"]:
        command = creates[s["name"]]
        assert flag(command, "--message-filter") == s["filter"]
        assert_push_flags(command, TOPOLOGY, TOPOLOGY["events_topic"], names[s["entry_point"]])
    inspect = creates[TOPOLOGY["dead_letter_subscription"]]
    assert flag(inspect, "--topic") == TOPOLOGY["dead_letter_topic"]


def queue_flags(queue: dict) -> dict[str, str]:
    """The flags `gcloud tasks queues create/update` take for a queue of topology.json."""
    return {
        f"--{field.replace('_', '-')}": str(queue[field])
        for field in (
            "max_dispatches_per_second",
            "max_concurrent_dispatches",
            "max_attempts",
            "min_backoff",
            "max_backoff",
            "max_doublings",
        )
    }


def test_dry_run_queues_follow_topology_json():
    creates = {c[4]: c for c in commands("twilio", "gcloud", "tasks", "queues", "create")}
    assert set(creates) == {q["name"] for q in QUEUES.values()}
    for q in QUEUES.values():
        command = creates[q["name"]]
        assert flag(command, "--location") == "europe-west1"
        assert {f: flag(command, f) for f in queue_flags(q)} == queue_flags(q)
    # The code reads each queue's full name.
    for ep in TIMER_SETTERS:
        env = env_vars(flag(deploys("twilio")[ep], "--set-env-vars"))
        for key in ACCESS[ep][3]:
            assert (
                env[QUEUE_SETTINGS[key]] == f"projects/demo-project/locations/europe-west1/queues/{QUEUES[key]['name']}"
            )
        assert env["TASKS_SERVICE_ACCOUNT"] == "rbm-tasks@demo-project.iam.gserviceaccount.com"
    assert "cloudtasks.googleapis.com" in commands("twilio", "gcloud", "services", "enable")[0]
    # No work topic any more; the service agent forwards to the one dead-letter topic of the events.
    created = {c[4] for c in commands("twilio", "gcloud", "pubsub", "topics", "create")}
    assert created == {TOPOLOGY["events_topic"], TOPOLOGY["dead_letter_topic"], TOPOLOGY["outcomes_topic"]}
    agent = "serviceAccount:service-PROJECT_NUMBER@gcp-sa-pubsub.iam.gserviceaccount.com"
    bindings = commands("twilio", "gcloud", "pubsub", "topics", "add-iam-policy-binding")
    assert {c[4] for c in bindings if flag(c, "--member") == agent} == {TOPOLOGY["dead_letter_topic"]}


def test_dry_run_queue_rates_are_overridable_within_cloud_tasks_bounds():
    result = dry_run_with(RBM_MAX_CALLS_PER_SECOND="120", SMS_MAX_SENDS_PER_SECOND="7.5")
    assert result.returncode == 0, result.stderr
    rates = {
        c[4]: flag(c, "--max-dispatches-per-second")
        for c in map(shlex.split, result.stdout.splitlines())
        if c[:4] == ["gcloud", "tasks", "queues", "create"]
    }
    assert rates == {QUEUES["rbm"]["name"]: "120", QUEUES["sms"]["name"]: "7.5"}
    for name, value in [
        ("RBM_MAX_CALLS_PER_SECOND", "0"),
        ("SMS_MAX_SENDS_PER_SECOND", "501"),
        ("RBM_MAX_CALLS_PER_SECOND", "x"),
    ]:
        refused = dry_run_with(**{name: value})
        assert refused.returncode != 0 and name in refused.stderr and not refused.stdout, (name, value)


def test_dry_run_grants_the_queues_as_terraform_does():
    names = {f["name"]: ep for ep, f in functions_table().items()}
    queues = {q["name"]: key for key, q in QUEUES.items()}
    for config in DRY_RUN_CONFIGS:
        granted = {
            (names[flag(c, "--member").removeprefix("serviceAccount:").split("@")[0]], queues[c[4]], flag(c, "--role"))
            for c in commands(config, "gcloud", "tasks", "queues", "add-iam-policy-binding")
        }
        assert {(ep, q) for ep, q, role in granted if role == "roles/cloudtasks.enqueuer"} == {
            (ep, q) for ep, (*_, qs) in ACCESS.items() for q in qs
        }
        assert {(ep, q) for ep, q, role in granted if role == "roles/cloudtasks.viewer"} == {
            ("revoke_expired", "rbm"),
            ("send_fallbacks", "sms"),
        }
        assert {role for *_, role in granted} == {"roles/cloudtasks.enqueuer", "roles/cloudtasks.viewer"}
        on_tasks = {
            (flag(c, "--member"), flag(c, "--role"))
            for c in commands(config, "gcloud", "iam", "service-accounts", "add-iam-policy-binding")
            if c[4] == "rbm-tasks@demo-project.iam.gserviceaccount.com"
        }
        users = {
            names[m.removeprefix("serviceAccount:").split("@")[0]]
            for m, r in on_tasks
            if r.endswith("serviceAccountUser")
        }
        assert users == TIMER_SETTERS
        assert on_tasks - {(m, r) for m, r in on_tasks if r.endswith("serviceAccountUser")} == {
            (
                "serviceAccount:service-PROJECT_NUMBER@gcp-sa-cloudtasks.iam.gserviceaccount.com",
                "roles/iam.serviceAccountTokenCreator",
            )
        }
        # The tasks identity is the worker's one invoker, and invokes nothing else.
        invokers = commands(config, "gcloud", "run", "services", "add-iam-policy-binding")
        assert {
            c[4]
            for c in invokers
            if flag(c, "--member") == "serviceAccount:rbm-tasks@demo-project.iam.gserviceaccount.com"
        } == {functions_table()[WORKER]["name"]}
        assert {flag(c, "--member") for c in invokers if c[4] == functions_table()[WORKER]["name"]} == {
            "serviceAccount:rbm-tasks@demo-project.iam.gserviceaccount.com"
        }


def test_dry_run_grants_publishing_as_terraform_does():
    names = {f["name"]: ep for ep, f in functions_table().items()}
    topics = {
        "events": TOPOLOGY["events_topic"],
        "dead_letter": TOPOLOGY["dead_letter_topic"],
        "outcomes": TOPOLOGY["outcomes_topic"],
    }
    for config in DRY_RUN_CONFIGS:
        granted = {
            (names[flag(c, "--member").removeprefix("serviceAccount:").split("@")[0]], c[4])
            for c in commands(config, "gcloud", "pubsub", "topics", "add-iam-policy-binding")
            if flag(c, "--member").startswith("serviceAccount:rbm-")
        }
        assert granted == {(ep, topics[t]) for ep, f in functions_table().items() for t in f["publishes"]}


def test_dry_run_firestore_follows_the_json():
    created = set()
    for c in commands("twilio", "gcloud", "firestore", "indexes", "composite", "create"):
        fields = tuple(
            re.fullmatch(r"field-path=(\w+),order=ascending", f).group(1) for f in flags(c)["--field-config"]
        )
        created.add((flag(c, "--collection-group"), fields))
    assert created == {(i["collection"], tuple(i["fields"])) for i in INDEXES}
    ttl = {flag(c, "--collection-group") for c in commands("twilio", "gcloud", "firestore", "fields", "ttls", "update")}
    assert ttl == {"rbm_messages", "rbm_conversations", "messages", "rbm_outcomes"}


def test_dry_run_schedules_the_sweeps_and_counts_the_events():
    jobs = commands("twilio", "gcloud", "scheduler", "jobs", "create", "http")
    names = {f["name"]: ep for ep, f in functions_table().items()}
    assert {names[c[5]] for c in jobs} == SWEEPS
    for c in jobs:
        assert flag(c, "--oidc-service-account-email").startswith("rbm-scheduler@")
        period = cron_period(flag(c, "--schedule"))
        assert period == 60, "Cloud Scheduler's finest period"
    metrics = {c[4].removeprefix("rbm_relay/") for c in commands("twilio", "gcloud", "logging", "metrics", "create")}
    assert metrics == set(locals_()["log_events"])


# --- first apply, access and alerting choices ----------------------------------------------------


def test_alert_policies_wait_until_their_metrics_are_queryable():
    sleep = resources("time_sleep")["log_metrics_queryable"]
    assert sleep["create_duration"] == "10m", "Monitoring: a new log-based metric can take up to 10 minutes"
    assert "google_logging_metric.event" in sleep["triggers"]["metrics"]
    for body in (
        resources("google_monitoring_alert_policy")["this"],
        resources("google_monitoring_dashboard")["funnel"],
    ):
        assert "${time_sleep.log_metrics_queryable}" in body["depends_on"]
    # gcloud: the metrics come first, and creating a policy is retried while its metric is unknown.
    listing = dry_run("twilio")
    first_metric = next(i for i, c in enumerate(listing) if c[1:4] == ["logging", "metrics", "create"])
    first_function = next(i for i, c in enumerate(listing) if c[1:3] == ["functions", "deploy"])
    assert first_metric < first_function
    assert re.search(r"run_patiently gcloud alpha monitoring policies create", DEPLOY_SH.read_text())


def test_firestore_access_is_held_to_the_one_database():
    binding = resources("google_project_iam_member")["firestore"]
    condition = _block(binding, "condition")
    assert (
        condition["expression"] == 'resource.name == "projects/${var.project_id}/databases/${var.firestore_database}"'
    )
    for c in commands("twilio", "gcloud", "projects", "add-iam-policy-binding"):
        if flag(c, "--role") == "roles/datastore.user":
            assert flag(c, "--condition") == (
                'expression=resource.name == "projects/demo-project/databases/(default)",title=rbm-relay database'
            )


def test_builds_may_read_the_staged_source_only():
    condition = _block(resources("google_project_iam_member")["build_staged_source"], "condition")
    assert "local.staged_source" in condition["expression"]
    assert locals_()["staged_source"].startswith("projects/_/buckets/gcf-v2-sources-")


def test_pubsub_service_identity_waits_for_the_api():
    assert resources("google_project_service_identity")["pubsub"]["depends_on"] == ["${google_project_service.this}"]


def test_notification_channels_are_an_explicit_choice():
    for directory in (MODULE, TERRAFORM / "example"):
        assert "default" not in terraform(directory)["variable"]["notification_channels"]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PROJECT": "demo-project", "RBM_AGENT_ID": "demo-agent"}
    result = subprocess.run(["bash", str(DEPLOY_SH), "--dry-run"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "NOTIFICATION_CHANNELS" in result.stderr and not result.stdout


def test_monitoring_filters_use_monitoring_syntax():
    # ("a" OR "b") value lists are Logging syntax; Monitoring filters take a full-match regex.
    assert "service_name=(" in locals_()["log_service_filter"]
    assert "monitoring.regex.full_match" in locals_()["service_filter"]
    (dashboard,) = commands("twilio", "gcloud", "monitoring", "dashboards", "create")
    assert "service_name=(" not in flag(dashboard, "--config")
    for c in commands("twilio", "gcloud", "alpha", "monitoring", "policies", "create"):
        assert "service_name=(" not in flag(c, "--policy")


def test_firestore_field_operations_run_one_at_a_time():
    for c in commands("twilio", "gcloud", "firestore"):
        if "fields" in c:
            assert "--async" not in c, "two operations on one field at once: Firestore refuses the second"


# --- gcloud: every command and flag against the installed SDK -------------------------------------
# Every command deploy.sh would run, held to the installed gcloud SDK.
#
# The dry run lists every command in order, the look-ups ("# check:", "# query:")
# included. Each command path must be a command of the SDK and each flag one of
# that command's flags (or a global flag), with a listed value where the flag
# takes one of a few; the SDK's command tree (data/cli/gcloud_completions.py,
# what gcloud's own completion reads) answers that in a second for every
# command. The component checks deploy.sh makes before changing anything
# (`gcloud alpha ... --help`) are run for real, so a missing alpha or beta
# component fails here too. Skipped where gcloud is not installed.

LOOKUP_PREFIXES = ("# check: ", "# query: ")


def _sdk_tree_file() -> Path | None:
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        return None
    tree = Path(gcloud).resolve().parents[1] / "data" / "cli" / "gcloud_completions.py"
    return tree if tree.is_file() else None


needs_gcloud = pytest.mark.skipif(
    _sdk_tree_file() is None, reason="gcloud (with its data/cli/gcloud_completions.py command tree) is not installed"
)


@cache
def sdk_tree() -> dict:
    """The installed SDK's command tree: {"commands": {name: node}, "flags": {flag: "bool"|"value"|[choices]}}."""
    text = _sdk_tree_file().read_text()
    return json.loads(text[text.index("{") :])


def command_problems(words: list[str]) -> list[str]:
    """What in one gcloud command line the SDK does not have."""
    tree, node, i = sdk_tree(), sdk_tree(), 1
    while i < len(words) and not words[i].startswith("-") and words[i] in node["commands"]:
        node, i = node["commands"][words[i]], i + 1
    path = " ".join(words[:i])
    if words[i:] == ["--help"]:
        return []
    if node["commands"]:
        following = words[i] if i < len(words) else "(nothing)"
        return [f"`{path}` is a command group, and {following!r} is not one of its commands"]
    problems, rest = [], words[i:]
    for word in rest:
        if not word.startswith("--"):
            continue
        name, has_value, value = word.partition("=")
        spec = node["flags"].get(name, tree["flags"].get(name))
        if spec is None and name.startswith("--no-") and node["flags"].get("--" + name[5:]) == "bool":
            spec = "bool"
        if spec is None:
            problems.append(f"`{path}` has no flag {name}")
        elif isinstance(spec, list) and has_value and value not in spec:
            problems.append(f"`{path}` {name}={value}: not one of {spec}")
        elif spec == "bool" and has_value:
            problems.append(f"`{path}` {name} takes no value")
    return problems


@cache
def listed_commands(config: str) -> list[list[str]]:
    """Every command of a dry run, look-ups included, as words."""
    commands = []
    for line in dry_run_listing(config).splitlines():
        for prefix in LOOKUP_PREFIXES:
            if line.startswith(prefix):
                line = line[len(prefix) :]
        if line.strip() and not line.startswith("#") and not is_rules_call(shlex.split(line)):
            commands.append(shlex.split(line))
    return commands


@needs_gcloud
@pytest.mark.parametrize("config", sorted(DRY_RUN_CONFIGS))
def test_every_command_and_flag_exists_in_the_installed_sdk(config):
    problems = [f"{p}\n    in: {shlex.join(c)[:160]}" for c in listed_commands(config) for p in command_problems(c)]
    assert not problems, "\n".join(problems)


@needs_gcloud
def test_dry_run_lists_the_lookups_too():
    lookups = [line for line in dry_run_listing("twilio").splitlines() if line.startswith(LOOKUP_PREFIXES)]
    assert any("gcloud alpha monitoring policies list" in line for line in lookups)
    assert any("gcloud secrets versions list" in line for line in lookups)
    assert any("gcloud run services get-iam-policy" in line for line in lookups)
    assert any("gcloud tasks queues describe" in line for line in lookups)


@needs_gcloud
def test_the_queue_commands_are_held_to_the_sdk():
    # The Cloud Tasks commands deploy.sh runs are among those checked, the service agent's too.
    listed = {tuple(c[:4]) for c in listed_commands("twilio")}
    assert {("gcloud", "tasks", "queues", verb) for verb in ("describe", "create", "add-iam-policy-binding")} <= listed
    assert ["gcloud", "beta", "services", "identity", "create", "--service=cloudtasks.googleapis.com"] in [
        c[:6] for c in listed_commands("twilio")
    ]
    # Queue flags are easy to take from the older App Engine queue commands.
    assert command_problems(["gcloud", "tasks", "queues", "create", "q", "--max-tasks-dispatched-per-second=5"]) == [
        "`gcloud tasks queues create` has no flag --max-tasks-dispatched-per-second"
    ]
    assert command_problems(["gcloud", "tasks", "queues", "update", "q", "--max-doublings=4", "--location=l"]) == []


@needs_gcloud
def test_the_components_deploy_sh_needs_are_installed():
    checks = [c for c in listed_commands("twilio") if c[-1] == "--help"]
    assert {c[1] for c in checks} == {"alpha", "beta"}
    for command in checks:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{shlex.join(command)}: {result.stderr[-300:]}"


@needs_gcloud
def test_the_check_catches_a_command_outside_its_release_track():
    assert command_problems(["gcloud", "monitoring", "policies", "create", "--policy={}", "--project=p"]) == [
        "`gcloud monitoring` is a command group, and 'policies' is not one of its commands"
    ]
    assert command_problems(["gcloud", "alpha", "monitoring", "policies", "create", "--policy={}", "--project=p"]) == []


@needs_gcloud
def test_the_check_catches_a_wrong_flag_and_a_wrong_choice():
    assert command_problems(["gcloud", "pubsub", "topics", "create", "t", "--label=a=b"]) == [
        "`gcloud pubsub topics create` has no flag --label"
    ]
    assert command_problems(["gcloud", "functions", "deploy", "f", "--ingress-settings=internal"]) == [
        "`gcloud functions deploy` --ingress-settings=internal: "
        "not one of ['all', 'internal-and-gclb', 'internal-only']"
    ]
    assert command_problems(["gcloud", "functions", "deploy", "f", "--no-allow-unauthenticated", "--quiet"]) == []


# --- tools ------------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform is not installed")
def test_terraform_is_formatted():
    result = subprocess.run(
        ["terraform", "fmt", "-check", "-recursive", "-diff", str(TERRAFORM)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _checkov() -> str | None:
    """checkov lives in its own environment (it conflicts with this one); CHECKOV may point at it."""
    candidates = [os.environ.get("CHECKOV"), shutil.which("checkov"), str(Path(sys.executable).parent / "checkov")]
    return next((c for c in candidates if c and Path(c).is_file() and os.access(c, os.X_OK)), None)


@pytest.mark.skipif(_checkov() is None, reason="checkov is not installed (set CHECKOV to its executable)")
def test_checkov_finds_nothing_unexplained():
    result = subprocess.run(
        [
            _checkov(),
            "-d",
            str(TERRAFORM),
            "--framework",
            "terraform",
            "--quiet",
            "--compact",
            "--skip-download",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    reports = json.loads(result.stdout)
    for report in reports if isinstance(reports, list) else [reports]:
        failed = report.get("results", {}).get("failed_checks", [])
        assert not failed, "\n".join(f"{c['check_id']} {c['resource']} {c['file_path']}" for c in failed)


def test_the_outcomes_push_subscription_follows_topology_json_in_both_routes():
    """Optional (outcomes_push_endpoint / OUTCOMES_PUSH_ENDPOINT): pushed with an OIDC token of its
    own identity, ordered, with the retry policy and dead-letter topic of topology.json's outcomes_push."""
    push = TOPOLOGY["outcomes_push"]
    subscription = resources("google_pubsub_subscription")["outcomes_push"]
    assert subscription["count"] == "${local.outcomes_push_enabled ? 1 : 0}"
    assert subscription["topic"] == "${google_pubsub_topic.outcomes.id}" and subscription["enable_message_ordering"]
    assert subscription["ack_deadline_seconds"] == "${local.outcomes_push.ack_deadline_seconds}"
    assert _block(subscription, "retry_policy") == {
        "minimum_backoff": "${local.outcomes_push.minimum_backoff}",
        "maximum_backoff": "${local.outcomes_push.maximum_backoff}",
    }
    assert _block(subscription, "dead_letter_policy") == {
        "dead_letter_topic": "${google_pubsub_topic.outcomes_dead_letter[0].id}",
        "max_delivery_attempts": "${local.outcomes_push.max_delivery_attempts}",
    }
    push_config = _block(subscription, "push_config")
    assert push_config["push_endpoint"] == "${var.outcomes_push_endpoint}"
    assert _block(push_config, "oidc_token") == {
        "service_account_email": "${google_service_account.outcomes_push[0].email}",
        "audience": "${local.outcomes_push_audience}",
    }
    assert terraform()["variable"]["outcomes_push_endpoint"]["default"] == ""

    endpoint = DRY_RUN_CONFIGS["webhook"]["OUTCOMES_PUSH_ENDPOINT"]
    creates = {c[4]: c for c in commands("webhook", "gcloud", "pubsub", "subscriptions", "create")}
    command = creates[push["subscription"]]
    assert flag(command, "--topic") == TOPOLOGY["outcomes_topic"] and "--enable-message-ordering" in command
    assert flag(command, "--dead-letter-topic") == push["dead_letter_topic"]
    assert flag(command, "--max-delivery-attempts") == str(push["max_delivery_attempts"])
    assert flag(command, "--ack-deadline") == str(push["ack_deadline_seconds"])
    assert flag(command, "--min-retry-delay") == push["minimum_backoff"]
    assert flag(command, "--max-retry-delay") == push["maximum_backoff"]
    assert flag(command, "--push-endpoint") == flag(command, "--push-auth-token-audience") == endpoint
    assert flag(command, "--push-auth-service-account").startswith("rbm-outcomes-push@")
    assert flag(creates[push["dead_letter_subscription"]], "--topic") == push["dead_letter_topic"]
    untouched = {c[4] for c in commands("twilio", "gcloud", "pubsub", "subscriptions", "create")}
    assert push["subscription"] not in untouched, "no endpoint, no push subscription"


def test_a_rejected_handshake_counts_with_the_rejected_signatures():
    # Token guessing (handshakes with an unknown client token) raises the signature alert;
    # a batch message's create counts among the messages sent.
    also = locals_()["log_events_also"]
    assert also == {"signature_rejected": ["handshake_rejected"], "message_sent": ["batch_message_sent"]}
    assert logged_events_match("handshake_rejected") and logged_events_match("batch_message_sent")
    counted = 'jsonPayload.event=("signature_rejected" OR "handshake_rejected")'
    (metric,) = (
        c for c in commands("twilio", "gcloud", "logging", "metrics", "create") if c[4].endswith("/signature_rejected")
    )
    assert flag(metric, "--log-filter").endswith(counted)
    for c in commands("twilio", "gcloud", "logging", "metrics", "create"):
        event = c[4].removeprefix("rbm_relay/")
        counts = " OR ".join(f'"{e}"' for e in [event, *also.get(event, [])])
        assert flag(c, "--log-filter").endswith(f"jsonPayload.event=({counts})")
    event = resources("google_logging_metric")["event"]
    assert "local.log_events_also" in event["filter"] and "signature_rejected" in also
