"""Regenerates infra/schema/providers.json: the schema of every Terraform
resource and data source type that infra/terraform uses, at the provider
versions infra/terraform/module/versions.tf pins.

No provider binary can be downloaded where the tests run, so the schema comes
from the prebuilt CDK for Terraform bindings on npm (@cdktf/provider-NAME):
each release is generated from one provider release (its package.json names
it under cdktf.provider.version) and its .jsii manifest describes every
argument and nested block, and whether it is optional. This script picks the
newest binding built from a provider version the constraint allows, extracts
the types we use, and writes them as
    {"providers": {NAME: {source, constraint, version, package}},
     "schemas": {NAME: {"resource"|"data": {TYPE: BLOCK}}}}
where BLOCK = {"arguments": {name: "required"|"optional"},
               "attributes": [read-only names], "blocks": {name: BLOCK + {"required": bool}}}.

Run it after changing a provider version or using a new resource type:
    .venv/bin/python infra/schema/regenerate.py
It needs node's npm and the network (the npm registry); tests/unit/test_infra_schema.py
then checks the Terraform against the file offline.
"""

import json
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import hcl2
from hcl2 import SerializationOptions

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM = ROOT / "infra" / "terraform"
OUT = Path(__file__).with_name("providers.json")
HCL = SerializationOptions(with_comments=False, explicit_blocks=False, strip_string_quotes=True)
REGISTRY_DOC = r"https://registry\.terraform\.io/providers/[^ ]+/docs/(resources|data-sources)/\w+"
DOC_LINK = re.compile(r"\{@link " + REGISTRY_DOC + r"#(\w+) ")
CLASS_LINK = re.compile(r"Represents a \{@link " + REGISTRY_DOC + r" (\w+)\}")


def parse(path: Path) -> dict:
    with path.open() as f:
        return hcl2.load(f, serialization_options=HCL)


def required_providers() -> dict[str, dict]:
    """Local name -> {source, constraint}, from the module's versions.tf."""
    (block,) = (b["required_providers"] for b in parse(TERRAFORM / "module" / "versions.tf")["terraform"])
    return {
        name: {"source": spec["source"], "constraint": spec["version"]}
        for entry in block
        for name, spec in entry.items()
    }


def used_types() -> dict[str, set[tuple[str, str]]]:
    """Provider local name -> {(kind, type)} of everything the module and the example declare."""
    used: dict[str, set[tuple[str, str]]] = {}
    for path in sorted(TERRAFORM.glob("*/*.tf")):
        parsed = parse(path)
        for kind in ("resource", "data"):
            for block in parsed.get(kind, []):
                for type_, named in block.items():
                    for body in named.values():
                        provider = body.get("provider") or type_.split("_")[0]
                        used.setdefault(provider.replace("${", "").replace("}", ""), set()).add((kind, type_))
    return used


def allows(constraint: str, version: str) -> bool:
    """Whether `version` satisfies a pessimistic constraint "~> X.Y.Z" (X.Y.Z <= v < X.(Y+1))."""
    match = re.fullmatch(r"~>\s*(\d+)\.(\d+)\.(\d+)", constraint)
    if not match:
        sys.exit(f"only ~> X.Y.Z constraints are supported, not {constraint!r}")
    want = tuple(map(int, match.groups()))
    have = tuple(int(p) for p in version.split(".")[:3])
    return have[:2] == want[:2] and have[2] >= want[2]


def npm(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["npm", *args], check=True, capture_output=True, text=True, cwd=cwd, timeout=900).stdout


def pick_binding(name: str, constraint: str) -> tuple[str, str]:
    """(package@version, provider version): the newest binding of the newest allowed provider release."""
    package = f"@cdktf/provider-{name}"
    # Releases before 3.0 predate the cdktf field, and a range that mixes both
    # makes npm answer bare version strings.
    releases = json.loads(npm("view", f"{package}@>=3.0.0", "version", "cdktf.provider.version", "--json"))
    releases = [r for r in (releases if isinstance(releases, list) else [releases]) if isinstance(r, dict)]
    candidates = [
        (r["cdktf.provider.version"], r["version"])
        for r in releases
        if r.get("cdktf.provider.version") and allows(constraint, r["cdktf.provider.version"])
    ]
    if not candidates:
        sys.exit(f"no {package} release is built from a provider version matching {constraint}")

    def key(v):
        return tuple(int(p) for p in re.findall(r"\d+", v))

    provider_version, package_version = max(candidates, key=lambda c: (key(c[0]), key(c[1])))
    return f"{package}@{package_version}", provider_version


def jsii_types(spec: str, workdir: Path) -> dict:
    """The .jsii manifest's types of an npm package (downloaded with npm pack, not installed)."""
    tarball = npm("pack", spec, "--silent", cwd=workdir).strip().splitlines()[-1]
    with tarfile.open(workdir / tarball) as archive:
        return json.load(archive.extractfile("package/.jsii"))["types"]


def snake(camel: str) -> str:
    return re.sub(r"([A-Z])", r"_\1", camel).lower()


def block_fqn(type_: dict) -> str | None:
    """The interface a property's type refers to (directly, in a list, or in a union), if any."""
    if "fqn" in type_:
        return None if type_["fqn"].startswith("cdktf.") else type_["fqn"]
    for inner in [*type_.get("union", {}).get("types", []), type_.get("collection", {}).get("elementtype", {})]:
        if inner and (found := block_fqn(inner)):
            return found
    return None


def block_schema(types: dict, fqn: str, outputs: str | None) -> dict:
    """Arguments and nested blocks of a config interface, read-only attributes from its output class."""
    arguments, blocks = {}, {}
    for prop in types[fqn].get("properties", []):
        link = DOC_LINK.search(json.dumps(prop.get("docs", {})))
        name = link.group(2) if link else snake(prop["name"])
        nested = block_fqn(prop["type"])
        if nested:
            blocks[name] = {
                "required": not prop.get("optional", False),
                **block_schema(types, nested, f"{nested}OutputReference"),
            }
        else:
            arguments[name] = "optional" if prop.get("optional") else "required"
    getters = {
        snake(p["name"])
        for p in types.get(outputs, {}).get("properties", [])
        if not p.get("static") and not p["name"].endswith("Input") and p["name"] != "internalValue"
    }
    return {
        "arguments": dict(sorted(arguments.items())),
        "attributes": sorted(getters - set(arguments) - set(blocks)),
        "blocks": dict(sorted(blocks.items())),
    }


def type_schemas(types: dict, wanted: set[tuple[str, str]]) -> dict:
    found: dict[str, dict] = {}
    for fqn, t in types.items():
        match = CLASS_LINK.search(t.get("docs", {}).get("summary", "")) if t["kind"] == "class" else None
        if match:
            kind = "resource" if match.group(1) == "resources" else "data"
            if (kind, match.group(2)) in wanted:
                found.setdefault(kind, {})[match.group(2)] = block_schema(types, f"{fqn}Config", fqn)
    missing = wanted - {(k, t) for k, named in found.items() for t in named}
    if missing:
        sys.exit(f"not in the bindings: {sorted(missing)}")
    return {kind: dict(sorted(named.items())) for kind, named in sorted(found.items())}


def main() -> None:
    providers, schemas = {}, {}
    wanted = used_types()
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in sorted(required_providers().items()):
            package, version = pick_binding(name, spec["constraint"])
            print(f"{name}: provider {version} from {package}", file=sys.stderr)
            providers[name] = {**spec, "version": version, "package": package}
            schemas[name] = type_schemas(jsii_types(package, Path(tmp)), wanted.get(name, set()))
    OUT.write_text(json.dumps({"providers": providers, "schemas": schemas}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
