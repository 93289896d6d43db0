"""A Cilium HTTP rule in a mesh with spec.istio is a warning that says why and what to write instead:
Istio's mTLS encrypts what Cilium's L7 proxy would have to read."""

from __future__ import annotations

import shutil
from pathlib import Path

from crossmesh.workspace import check

CILIUM_L7 = Path(__file__).resolve().parents[2] / "tests" / "meshes" / "cilium-l7"


def warnings(tmp: Path, *, istio: bool) -> list[str]:
    shutil.copytree(CILIUM_L7, tmp / "m")
    mesh = tmp / "m" / "mesh.yaml"
    if istio:
        mesh.write_text(mesh.read_text().replace("\nspec:\n", "\nspec:\n  istio: {workloadCertTTL: 24h}\n", 1))
    loaded, problems = check(mesh)
    assert loaded is not None and not [p for p in problems if p.severity == "error"]
    return [f"{p.file}:{p.line}: {p.path}: {p.message}" for p in problems if "HTTP rules" in p.message]


def test_cilium_http_rules_under_istio_are_a_warning_with_the_fix(tmp_path: Path) -> None:
    [warning] = warnings(tmp_path, istio=True)  # once, though hq's file is read for one cluster only
    assert "/apps/cluster2/hq.yaml:22: spec.ingress[0].toPorts[0].rules.http: " in warning
    assert "cannot read" in warning and "AuthorizationPolicy" in warning and "DISABLE" in warning


def test_without_istio_cilium_http_rules_are_fine(tmp_path: Path) -> None:
    assert warnings(tmp_path, istio=False) == []
