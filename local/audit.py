"""The vulnerability audit of `make lint`: pip-audit over the hashed locks.

pip-audit asks PyPI's JSON API (pypi.org/pypi/NAME/VERSION/json, its
`vulnerabilities` field) about each pinned package. A machine that reaches a
package index but not that API gets every package back as "not found on PyPI,
could not be audited" — and pip-audit still prints "No known vulnerabilities
found". So the verdict here is read from its JSON report: a package counts as
audited only when the database answered for it, and a run where it answered
for none says the audit was skipped, never that nothing was found.

    python -m local.audit requirements.txt requirements-dev.txt

Exit status: 1 when a known vulnerability is found (or pip-audit fails for a
reason other than the network); 0 otherwise, the output saying what was and
was not audited. pip-audit runs under a time limit, so an unreachable database
never hangs lint.
"""

import json
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

TIMEOUT_SECONDS = 120
SKIPPED = "pip-audit: vulnerability database unreachable; audit skipped"


@dataclass(frozen=True)
class Verdict:
    ok: bool
    lines: list[str]


def _fixed(vulnerability: dict[str, Any]) -> str:
    return f"fixed in {', '.join(vulnerability.get('fix_versions', [])) or 'no release'}"


def verdict(report: dict[str, Any]) -> Verdict:
    """pip-audit's JSON report ({"dependencies": [{"name", "version", "vulns" | "skip_reason"}]})
    -> whether lint passes, and what to print."""
    dependencies = report.get("dependencies", [])
    skipped = [d for d in dependencies if "skip_reason" in d]
    audited = [d for d in dependencies if "skip_reason" not in d]
    vulnerable = [d for d in audited if d.get("vulns")]
    if vulnerable:
        lines = [
            f"pip-audit: {d['name']} {d['version']}: {v['id']} ({_fixed(v)})" for d in vulnerable for v in d["vulns"]
        ]
        return Verdict(False, lines)
    if not audited:
        return Verdict(True, [f"{SKIPPED} ({len(skipped)} packages not audited)"])
    lines = [f"pip-audit: no known vulnerabilities in the {len(audited)} packages audited"]
    if skipped:
        names = ", ".join(sorted(d["name"] for d in skipped))
        lines.append(
            f"pip-audit: {len(skipped)} packages could not be audited (database unreachable for them): {names}"
        )
    return Verdict(True, lines)


def main(requirements: list[str]) -> int:
    command = [sys.executable, "-m", "pip_audit", "--require-hashes", "--disable-pip", "--format", "json"]
    command += ["--progress-spinner", "off", *(arg for r in requirements for arg in ("-r", r))]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        print(f"{SKIPPED} (no answer within {TIMEOUT_SECONDS} s)")
        return 0
    try:
        report = json.loads(done.stdout)
    except ValueError:
        print(done.stderr.strip()[-2000:], file=sys.stderr)
        print(f"pip-audit: failed (exit {done.returncode}) without a report")
        return 1
    result = verdict(report)
    print("\n".join(result.lines))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
