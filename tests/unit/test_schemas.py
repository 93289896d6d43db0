"""Rendered files against the upstream definitions kept in tests/reference (SPEC §3; copies of
the files listed in tests/reference/SOURCES.md, with the check-rendered tool in tests/tools):
Cilium's Helm values schema, Talos's config schema, and `wg-quick strip` for WireGuard files; the
agents' DaemonSets against Kubernetes's OpenAPI schemas (kubernetes-validate, a test dependency)
and their systemd units with `systemd-analyze verify`.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging.version import Version
from typer.testing import CliRunner

from crossmesh.cli.main import app
from crossmesh.render import agent_deploy

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "tests" / "reference"
CHECK_RENDERED = REPO / "tests" / "tools" / "check-rendered"
CILIUM_SCHEMA = REFERENCE / "cilium" / "v1.20.0" / "values.schema.json"
TALOS_SCHEMA = REFERENCE / "talos" / "v1.13.9" / "config.schema.json"

MESHES = {p.parent.name: p for p in sorted((REPO / "examples").glob("*/mesh.yaml"))}
MESHES |= {f"golden-{p.parent.name}": p for p in sorted((REPO / "tests" / "golden").glob("*/mesh.yaml"))}


def need(path: Path) -> Path:
    assert path.exists(), f"upstream reference {path} is missing from the repository (see tests/reference/SOURCES.md)"
    return path


def rendered_tree(name: str, tmp: Path) -> Path:
    out = tmp / name / "out"
    result = CliRunner().invoke(
        app, ["render", str(MESHES[name]), "--output-dir", str(out), "--state", str(tmp / name / "state")]
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("rendered")
    return {name: rendered_tree(name, base) for name in MESHES}


def yaml_docs(root: Path, name: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(root.rglob(name)):
        for doc in yaml.safe_load_all(path.read_text()):
            assert isinstance(doc, dict), f"{path}: a document that is not a mapping"
            out.append((path.relative_to(root).as_posix(), doc))
    return out


def unrequire(schema: Any) -> Any:
    """The schema without `required`: a machine-config patch states only what it changes."""
    if isinstance(schema, dict):
        return {k: unrequire(v) for k, v in schema.items() if k != "required"}
    if isinstance(schema, list):
        return [unrequire(v) for v in schema]
    return schema


def talos_validator(definition: str, *, partial: bool) -> jsonschema.protocols.Validator:
    schema = json.loads(need(TALOS_SCHEMA).read_text())
    base = unrequire(schema) if partial else schema
    root = {k: v for k, v in base.items() if k != "oneOf"}
    root["$ref"] = f"#/$defs/{definition}"
    cls = jsonschema.validators.validator_for(schema)
    return cls(root)  # type: ignore[no-any-return]


def problems(validator: jsonschema.protocols.Validator, doc: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '(document)'}: {e.message[:200]}" for e in validator.iter_errors(doc)
    ]


def test_examples_and_golden_cases_are_rendered(trees: dict[str, Path]) -> None:
    assert {"three-clouds", "hybrid-openstack-aws"} <= set(trees)


def test_cilium_values_validate_against_the_chart_schema(trees: dict[str, Path]) -> None:
    schema = json.loads(need(CILIUM_SCHEMA).read_text())
    validator = jsonschema.Draft7Validator(schema)
    checked = 0
    for name, root in trees.items():
        for rel, doc in yaml_docs(root, "cilium-values.yaml"):
            assert problems(validator, doc) == [], f"{name}: {rel}"
            checked += 1
    assert checked >= 3 + 3  # three-clouds (example and golden) has three Cilium clusters


def test_talos_machine_config_patches_validate_as_partial_v1alpha1_config(trees: dict[str, Path]) -> None:
    validator = talos_validator("v1alpha1.Config", partial=True)
    checked = 0
    for name, root in trees.items():
        # talos-agent.yaml: the same patch for nodes whose link the agent owns (render/agent_deploy.py)
        for rel, doc in yaml_docs(root, "talos.yaml") + yaml_docs(root, "talos-agent.yaml"):
            if "kind" in doc:
                continue
            assert problems(validator, doc) == [], f"{name}: {rel}"
            checked += 1
    assert checked >= 3 + 3


def test_talos_wireguard_documents_validate_whole(trees: dict[str, Path]) -> None:
    validator = talos_validator("network.WireguardConfigV1Alpha1", partial=False)
    checked = 0
    for name, root in trees.items():
        for rel, doc in yaml_docs(root, "talos.yaml"):
            if doc.get("kind") != "WireguardConfig":
                continue
            assert problems(validator, doc) == [], f"{name}: {rel}"
            checked += 1
    assert checked >= 3


def test_the_talos_validators_do_reject_wrong_documents() -> None:
    # A schema check that accepts anything proves nothing.
    patch = talos_validator("v1alpha1.Config", partial=True)
    assert problems(patch, {"machine": {"nodeLabels": "not-a-map"}})
    assert problems(patch, {"cluster": {"network": {"podSubnets": "10.0.0.0/16"}}})
    wgdoc = talos_validator("network.WireguardConfigV1Alpha1", partial=False)
    assert problems(wgdoc, {"apiVersion": "v1alpha1", "kind": "WireguardConfig", "name": "wg0", "mtu": "big"})
    cilium = jsonschema.Draft7Validator(json.loads(need(CILIUM_SCHEMA).read_text()))
    assert problems(cilium, {"cluster": {"id": "one"}})


def wg_quick() -> str:
    path = shutil.which("wg-quick")
    if path is None:
        pytest.skip("wg-quick (wireguard-tools) is not installed: cannot check WireGuard files")
    if os.geteuid() != 0:
        pytest.skip("wg-quick strip re-runs itself through sudo when not root: cannot check WireGuard files here")
    return path


def test_wg_quick_strip_accepts_every_wireguard_file(trees: dict[str, Path]) -> None:
    tool = wg_quick()
    checked = 0
    for name, root in trees.items():
        for conf in sorted(root.rglob("*.conf")):
            result = subprocess.run([tool, "strip", str(conf)], capture_output=True, text=True, timeout=30)
            assert result.returncode == 0, f"{name}: {conf.relative_to(root)}: {result.stderr.strip()}"
            assert "PrivateKey = " in result.stdout and "[Peer]" in result.stdout
            keys = {line.split("=", 1)[0].strip() for line in result.stdout.splitlines() if "=" in line}
            assert not keys & {"Address", "MTU", "DNS", "Table"}  # wg-quick's own settings are stripped
            checked += 1
    assert checked >= 3 + 3


def test_check_rendered_accepts_the_examples(trees: dict[str, Path], tmp_path: Path) -> None:
    need(CHECK_RENDERED)
    need(REFERENCE)
    wg_quick()
    # One run over both examples: the tool reads every CRD under reference/ first, which takes seconds.
    both = tmp_path / "examples"
    for name in ["three-clouds", "hybrid-openstack-aws"]:
        shutil.copytree(trees[name], both / name)
    result = subprocess.run(
        [sys.executable, str(CHECK_RENDERED), str(both)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "problems: 0" in result.stdout


# The agents' deployment (render/agent_deploy.py) ------------------------------------------------

# The oldest and the newest Kubernetes whose OpenAPI schemas kubernetes-validate ships (strict: an
# unknown field is an error, as `kubectl apply --validate=strict` makes it).
KUBERNETES_VERSIONS = (min(kubernetes_validate.utils.all_versions(), key=Version), kubernetes_validate.latest_version())


def kubernetes_problems(doc: dict[str, Any]) -> list[str]:
    out = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            out.append(f"Kubernetes {version}: {err.message}")
    return out


def test_agent_daemonsets_validate_against_the_kubernetes_schema(trees: dict[str, Path]) -> None:
    kinds: set[str] = set()
    daemonsets: set[str] = set()
    for name, root in trees.items():
        for rel, doc in yaml_docs(root, "crossmesh-agent.yaml"):
            assert kubernetes_problems(doc) == [], f"{name}: {rel} {doc['kind']}"
            kinds.add(doc["kind"])
            if doc["kind"] == "DaemonSet":
                daemonsets.add(doc["metadata"]["name"])
    assert kinds == {"Namespace", "ServiceAccount", "DaemonSet"}
    assert daemonsets == {agent_deploy.NAME, agent_deploy.ROUTES_NAME}  # golden-gateways has route-only nodes


def test_the_kubernetes_validator_does_reject_wrong_documents(trees: dict[str, Path]) -> None:
    (_, daemonset), *_ = [
        (r, d) for r, d in yaml_docs(trees["three-clouds"], "crossmesh-agent.yaml") if d["kind"] == "DaemonSet"
    ]
    assert kubernetes_problems(daemonset) == []
    misspelt = copy.deepcopy(daemonset)
    misspelt["spec"]["template"]["spec"]["hostNetwrk"] = True
    assert kubernetes_problems(misspelt)
    wrong_type = copy.deepcopy(daemonset)
    wrong_type["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] = "NET_ADMIN"
    assert kubernetes_problems(wrong_type)


def systemd_verify(unit: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` of `unit` in a root of its own: the host's unit files (for the targets
    and wg-quick@ it names) and a stand-in for crossmesh at the path the unit runs, since verify
    refuses a unit whose program is missing and crossmesh need not be installed there on this host."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze (systemd) is not installed: cannot check the agent's unit files")
    root = tmp / "root"
    if not root.exists():
        shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
        program = root / agent_deploy.EXECUTABLE.lstrip("/")
        program.parent.mkdir(parents=True)
        program.write_text("#!/bin/sh\n")
        program.chmod(0o755)
    target = root / "etc/systemd/system" / unit.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(unit, target)
    return subprocess.run(
        [tool, "verify", f"--root={root}", "--man=no", unit.name], capture_output=True, text=True, timeout=60
    )


def test_systemd_accepts_every_agent_unit(trees: dict[str, Path], tmp_path: Path) -> None:
    checked = route_only = 0
    for name, root in trees.items():
        for unit in sorted(root.rglob("crossmesh-agent.service")):
            result = systemd_verify(unit, tmp_path)
            # An unknown directive is only a warning to systemd (exit 0): any output fails the check.
            assert (result.returncode, result.stdout + result.stderr) == (0, ""), f"{name}: {unit.relative_to(root)}"
            checked += 1
            route_only += "wg-quick@" not in unit.read_text()
    assert checked >= 3 + 3  # the hybrid example and its golden case: three nodes each
    assert route_only >= 4  # golden-gateways: its nodes without a tunnel (no device to wait for)


def test_systemd_verify_does_reject_wrong_units(trees: dict[str, Path], tmp_path: Path) -> None:
    unit = next(trees["golden-hybrid"].rglob("crossmesh-agent.service"))
    text = unit.read_text()
    bad = tmp_path / "crossmesh-agent.service"
    bad.write_text(text.replace("ProtectClock=yes", "ProtectClocks=yes"))
    assert "ProtectClocks" in systemd_verify(bad, tmp_path).stderr
    bad.write_text(text.replace("ExecStart=/usr/local/bin/crossmesh", "ExecStart=/nonexistent/crossmesh"))
    assert systemd_verify(bad, tmp_path).returncode != 0
