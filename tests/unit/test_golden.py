"""Golden files for the renderers: `crossmesh render` of each tests/golden/<case>/ against the
expected tree, compared as parsed data (YAML documents, wg-quick sections) so that a change
of layout alone does not fail and a change of meaning always does.

Each case holds its mesh file and manifests, a state directory with fixed test keys (never
real ones) and `expected/`. The state is copied before rendering, so the committed one is
never written to. To accept new output, run

    CROSSMESH_REGEN_GOLDEN=1 python3 -m pytest tests/unit/test_golden.py

and review `git diff tests/golden`. Regenerating also writes a key for any node that has none,
and keeps the ClusterMesh CA and certificates a case's first render makes in its `state/pki/`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from crossmesh.cli.main import app
from crossmesh.model.plan import RouteVia
from crossmesh.workspace import compile_mesh

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "mesh.yaml").is_file())
REGEN = os.environ.get("CROSSMESH_REGEN_GOLDEN") == "1"


def fixed_test_key(case: str, node: str) -> str:
    """A deterministic, clamped X25519 private key: for tests only, derived from public names."""
    raw = bytearray(hashlib.sha256(f"crossmesh golden test key: {case}/{node}".encode()).digest())
    raw[0] &= 248
    raw[31] = (raw[31] & 127) | 64
    return base64.b64encode(bytes(raw)).decode()


def node_names(case: str) -> list[str]:
    data = yaml.safe_load((GOLDEN / case / "mesh.yaml").read_text())
    return sorted(n["name"] for c in data["spec"]["clusters"] for n in c["nodes"])


def state_copy(case: str, tmp: Path) -> Path:
    committed = GOLDEN / case / "state"
    keys = committed / "keys"
    if REGEN:
        keys.mkdir(parents=True, exist_ok=True)
        for node in node_names(case):
            path = keys / f"{node}.key"
            if not path.exists():
                path.write_text(fixed_test_key(case, node) + "\n")
    missing = [n for n in node_names(case) if not (keys / f"{n}.key").exists()]
    if missing:
        pytest.fail(f"{case}: no committed test key for {missing} — run with CROSSMESH_REGEN_GOLDEN=1")
    state = tmp / f"state-{case}"
    shutil.copytree(committed, state)
    # git keeps no modes: give the copy those crossmesh makes, which it insists on for keys.
    for path in [state, *state.rglob("*")]:
        path.chmod(0o700 if path.is_dir() else 0o600)
    return state


def keep_test_pki(case: str, state: Path) -> None:
    """The ClusterMesh CA and certificates a render made, kept with the case's test keys (certificates
    are random: without them every render would differ from the golden files). Test-only, like the keys."""
    for folder in ("pki", "istio-pki", "ingress-pki"):  # ClusterMesh; Istio (spec.istio); the ingress CA
        committed = GOLDEN / case / "state" / folder
        if (state / folder).is_dir() and not committed.exists():
            shutil.copytree(state / folder, committed)


def render(case: str, out: Path, state: Path) -> Path:
    result = CliRunner().invoke(
        app, ["render", str(GOLDEN / case / "mesh.yaml"), "--output-dir", str(out), "--state", str(state)]
    )
    assert result.exit_code == 0, result.output
    return out


def files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def parse_wg_quick(text: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """Sections in order, each with its key/value pairs in order; comments and spacing dropped."""
    sections: list[tuple[str, list[tuple[str, str]]]] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            sections.append((line, []))
            continue
        assert sections and "=" in line, f"not wg-quick syntax: {raw!r}"
        key, value = (part.strip() for part in line.split("=", 1))
        sections[-1][1].append((key, value))
    return sections


def parsed(path: Path) -> Any:
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        return list(yaml.safe_load_all(text))
    if path.suffix == ".conf":
        return parse_wg_quick(text)
    if path.suffix == ".json":
        return json.loads(text)
    return text.splitlines()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_there_are_golden_cases() -> None:
    assert set(CASES) >= {"three-clouds", "hybrid", "gateways"}


@pytest.mark.parametrize("case", CASES)
def test_render_matches_golden(case: str, tmp_path: Path) -> None:
    state = state_copy(case, tmp_path)
    out = render(case, tmp_path / "out", state)
    expected = GOLDEN / case / "expected"
    if REGEN:
        keep_test_pki(case, state)
        shutil.rmtree(expected, ignore_errors=True)
        shutil.copytree(out, expected)
        for path in expected.rglob("*"):
            if path.is_file():
                path.chmod(0o644)  # git keeps no modes but the executable bit; the checks below cover modes
    assert expected.is_dir(), f"{case}: no expected/ tree — run with CROSSMESH_REGEN_GOLDEN=1"
    assert files(out) == files(expected)
    for rel in files(expected):
        assert parsed(out / rel) == parsed(expected / rel), f"{case}: {rel} differs from the golden file"


@pytest.mark.parametrize("case", CASES)
def test_rendering_twice_gives_identical_bytes(case: str, tmp_path: Path) -> None:
    state = state_copy(case, tmp_path)
    first = render(case, tmp_path / "first", state)
    second = render(case, tmp_path / "second", state)
    assert files(first) == files(second)
    for rel in files(first):
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel
    # Rendering again into the same directory leaves it as it was.
    before = {rel: (first / rel).read_bytes() for rel in files(first)}
    render(case, first, state)
    assert {rel: (first / rel).read_bytes() for rel in files(first)} == before


@pytest.mark.parametrize("case", CASES)
def test_files_holding_a_private_key_are_0600(case: str, tmp_path: Path) -> None:
    state = state_copy(case, tmp_path)
    out = render(case, tmp_path / "out", state)
    secrets = {p.stem: p.read_text().strip() for p in (state / "keys").glob("*.key")}
    secrets |= {p.name: p.read_text().strip() for p in (state / "vpn").glob("*.psk")}  # VPN pre-shared keys
    holding = [rel for rel in files(out) if any(k in (out / rel).read_text() for k in secrets.values())]
    assert holding, "no rendered file holds a private key: the golden state is not being used"
    for rel in holding:
        assert mode(out / rel) == 0o600, f"{rel} holds a private key but is {oct(mode(out / rel))}"
    for rel in files(out):
        if rel.startswith("clusters/"):
            assert rel not in holding


def test_cilium_mtu_fits_the_path_through_the_gateway(tmp_path: Path) -> None:
    """Cluster edge has no gateway of its own: its cross-site traffic leaves through core's
    gateway, so Cilium must not assume the site's full MTU."""
    compiled = compile_mesh(GOLDEN / "gateways" / "mesh.yaml", state_copy("gateways", tmp_path), persist=False)
    plan = compiled.plan
    out = render("gateways", tmp_path / "out", state_copy("gateways", tmp_path / "again"))
    for cluster in plan.clusters:
        values = yaml.safe_load((out / "clusters" / cluster.name / "cilium-values.yaml").read_text())
        for name in cluster.nodes:
            node = plan.node(name)
            gateways = {r.peer for r in node.routes if r.via is RouteVia.GATEWAY}
            tunnels = [node.tunnel] if node.tunnel else [plan.node(g).tunnel for g in gateways]
            for t in tunnels:
                assert t is not None
                assert values["MTU"] <= t.mtu.value, f"{cluster.name}: MTU {values['MTU']} > {name}'s path {t.mtu}"
