"""The supply chain: what the functions import is what the hashed lock installs.

requirements.txt is the lock `make lock` generates from requirements.in: every
package a deployment installs, pinned with `==` and hashed (Cloud Functions'
Python build installs it with pip, which checks every hash once one is given).
requirements-dev.txt locks the tools the same way, held to the runtime lock so
the tests run the deployed versions. And local.audit never says "no known
vulnerabilities" about packages it could not audit.
"""

import ast
import importlib.metadata
import importlib.util
import re
import sys
from functools import cache
from pathlib import Path

from local import audit

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = {"functions", "main"}
REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def lock(name: str) -> dict[str, tuple[str, list[str]]]:
    """A pip-compile lock: normalized name -> (version, its --hash values)."""
    entries: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in (ROOT / name).read_text().splitlines():
        if match := REQUIREMENT.match(line):
            current = normalize(match.group(1))
            entries[current] = (match.group(2), [])
        elif current and (hashed := re.search(r"--hash=(\S+)", line)):
            entries[current][1].append(hashed.group(1))
        elif not line.startswith((" ", "#")) and line.strip():
            raise AssertionError(f"{name}: a line that is not a pinned requirement: {line!r}")
    return entries


def top_level(name: str) -> set[str]:
    """The requirements a .in file names (its -r / -c lines aside)."""
    lines = (ROOT / name).read_text().splitlines()
    return {normalize(m.group(1)) for line in lines if (m := REQUIREMENT.match(line))}


def imported_modules() -> set[str]:
    """Every module main.py and functions/ import, lazily or not, as a dotted name
    (`from a import b` gives a.b when b is a module, else a)."""
    found = set()
    for path in [ROOT / "main.py", *sorted((ROOT / "functions").glob("**/*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                found |= {_submodule(node.module, a.name) for a in node.names}
    return {m for m in found if m.split(".")[0] not in FIRST_PARTY | set(sys.stdlib_module_names)}


def _submodule(module: str, name: str) -> str:
    try:
        return f"{module}.{name}" if importlib.util.find_spec(f"{module}.{name}") else module
    except ModuleNotFoundError:
        return module


@cache
def file_owners() -> dict[Path, str]:
    """Each installed file -> the distribution that installed it (normalized)."""
    owners = {}
    for dist in importlib.metadata.distributions():
        for f in dist.files or []:
            owners[Path(str(dist.locate_file(f))).resolve()] = normalize(dist.metadata["Name"])
    return owners


def providing_distribution(module: str) -> str:
    spec = importlib.util.find_spec(module)
    assert spec and spec.origin, f"{module} is imported but not installed"
    owner = file_owners().get(Path(spec.origin).resolve())
    assert owner, f"no installed distribution provides {module} ({spec.origin})"
    return owner


def test_every_locked_package_is_pinned_and_hashed():
    for name in ("requirements.txt", "requirements-dev.txt"):
        entries = lock(name)
        assert entries, f"{name} locks nothing"
        unhashed = sorted(n for n, (_, hashes) in entries.items() if not hashes)
        assert not unhashed, f"{name}: packages without a hash: {unhashed}"
        assert all(h.startswith("sha256:") for _, hashes in entries.values() for h in hashes)


def test_the_lock_is_generated_from_the_top_level_requirements():
    assert top_level("requirements.in") <= set(lock("requirements.txt"))
    assert top_level("requirements-dev.in") <= set(lock("requirements-dev.txt"))
    assert "-c requirements.txt" in (ROOT / "requirements-dev.in").read_text().splitlines()


def test_the_tools_run_the_deployed_versions():
    runtime, dev = lock("requirements.txt"), lock("requirements-dev.txt")
    differ = {n: (v, dev.get(n, ("missing",))[0]) for n, (v, _) in runtime.items() if dev.get(n, ("",))[0] != v}
    assert not differ, f"requirements-dev.txt installs other versions than the deployed lock: {differ}"


def test_the_lock_provides_every_import_of_the_functions():
    modules = imported_modules()
    # A guard on the analysis: the web framework and the Google clients are third-party imports.
    assert {"flask", "requests", "google.cloud.firestore"} <= modules
    locked = set(lock("requirements.txt"))
    missing = {m: d for m in sorted(modules) if (d := providing_distribution(m)) not in locked}
    assert not missing, f"imported by the functions, not in the deployed lock: {missing}"


def test_the_installed_environment_is_the_lock():
    installed = {normalize(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    differ = {n: (v, installed.get(n)) for n, (v, _) in lock("requirements.txt").items() if installed.get(n) != v}
    assert not differ, f"the virtualenv differs from the lock (run make venv): {differ}"


# --- the audit's verdict ------------------------------------------------------------------


def test_an_unreachable_database_is_a_skipped_audit_not_a_clean_one():
    report = {
        "dependencies": [{"name": "flask", "skip_reason": "Dependency not found on PyPI and could not be audited"}]
    }
    result = audit.verdict(report)
    assert result.ok
    assert result.lines == [f"{audit.SKIPPED} (1 packages not audited)"]
    assert not any("no known vulnerabilities" in line.lower() for line in result.lines)


def test_a_known_vulnerability_fails_the_audit():
    report = {
        "dependencies": [
            {"name": "flask", "version": "3.1.3", "vulns": [{"id": "PYSEC-1", "fix_versions": ["3.1.4"]}]},
            {"name": "requests", "version": "2.34.2", "vulns": []},
        ]
    }
    result = audit.verdict(report)
    assert not result.ok and result.lines == ["pip-audit: flask 3.1.3: PYSEC-1 (fixed in 3.1.4)"]


def test_a_partial_audit_names_what_it_could_not_audit():
    report = {
        "dependencies": [
            {"name": "requests", "version": "2.34.2", "vulns": []},
            {"name": "flask", "skip_reason": "Dependency not found on PyPI and could not be audited"},
        ]
    }
    result = audit.verdict(report)
    assert result.ok
    assert result.lines == [
        "pip-audit: no known vulnerabilities in the 1 packages audited",
        "pip-audit: 1 packages could not be audited (database unreachable for them): flask",
    ]
