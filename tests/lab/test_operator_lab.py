"""Issue 15 in the lab: `lab up --agents` runs two operator replicas and etcd-fed agents from an
applied revision; editing the mesh file and running `crossmesh apply` against the lab's etcd
converges the running lab (`crossmesh status --wait` returns when it has); killing the leading
replica elects the other within the lease TTL; a mesh that does not validate changes nothing."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from agentkit import peers, public_key, state
from labkit import Lab, copy_example, crossmesh

from crossmesh.drivers import etcd
from crossmesh.drivers.lab import lab as labs
from crossmesh.kv.layout import ADMIN_USER

pytestmark = pytest.mark.lab
TTL = 3
ADMISSION = "allow-x-wing-from-cluster1"  # cluster2's ingress rule for x-wing of cluster1


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    mesh, name = copy_example(tmp_path_factory.mktemp("operator"), "three-clouds")
    lab = Lab(mesh, name)
    try:
        lab.up("--agents", "--lease-ttl", str(TTL))
        yield lab
    finally:
        lab.down()


def _etcd_flags(lab: Lab) -> list[str]:
    me = etcd.identity(etcd.pki_dir(labs.LAB_ROOT / f"cm-{lab.tag}"), ADMIN_USER)
    endpoints = ",".join(etcd.endpoints(lab.tag))
    return ["--etcd-endpoints", endpoints, "--cacert", str(me.ca), "--cert", str(me.cert), "--key", str(me.key)]


def _status(lab: Lab, *extra: str) -> tuple[int, dict[str, object]]:
    done = crossmesh("status", "--mesh", lab.name, *_etcd_flags(lab), "-o", "json", *extra, timeout=200)
    return done.returncode, json.loads(done.stdout)


def test_the_lab_runs_two_operators_and_converges(lab: Lab) -> None:
    code, report = _status(lab)
    assert code == 0 and report["converged"], report
    operator = labs.operator_control(state(lab.tag))
    assert all(operator["replicas"].values()) and len(operator["replicas"]) == 2
    assert operator["leader"] in operator["replicas"]


def test_apply_of_an_added_node_converges_the_running_lab(lab: Lab) -> None:
    doc = yaml.safe_load(lab.mesh.read_text())
    new = {"name": "azure-talos-2", "site": "azure-we", "address": "10.1.1.6", "publicAddress": "203.0.113.21"}
    doc["spec"]["clusters"][1]["nodes"].append(new)
    lab.mesh.write_text(yaml.safe_dump(doc, sort_keys=False))
    started = time.monotonic()
    applied = crossmesh("apply", str(lab.mesh), *_etcd_flags(lab), check=True)
    assert "applied revision 2" in applied.stdout
    code, report = _status(lab, "--wait", "--timeout", "120")
    took = time.monotonic() - started
    print(f"\n[operator] apply of one added node → converged on 4 nodes in {took:.1f} s")
    assert code == 0 and report["converged"], report
    st = state(lab.tag)
    assert "azure-talos-2" in st.nodes
    key = public_key(st, "azure-talos-2")
    for other in ("aws-talos-1", "gcp-talos-1"):  # other sites peer with it; its own site does not
        assert key in peers(next(i for i, d in st.wireguard.items() if d.node == other))
    # Applying the same file again makes no revision and changes nothing.
    again = crossmesh("apply", str(lab.mesh), *_etcd_flags(lab), check=True)
    assert "unchanged" in again.stdout


def _provisioned(lab: Lab, before: str) -> None:
    """Wait for the provisioner's `lab up` of the new revision to return. The agents converge before
    it does (it restarts the flow daemon, and with spec.istio the mesh proxies, whose inputs changed
    with the policies): only then is the lab built from the new revision's folder, the older one gone."""
    deadline = time.monotonic() + 60
    while True:
        st = state(lab.tag)
        kept = list((st.dir / "applied").iterdir())
        if (st.built_from != before and len(kept) == 1) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert st.built_from != before and Path(st.built_from).is_relative_to(st.dir / "applied"), st.built_from
    assert len(kept) == 1, kept


def test_a_revision_applied_from_another_file_is_what_the_lab_enforces(lab: Lab, tmp_path: Path) -> None:
    """`crossmesh apply` of a copy that drops cluster2's admission of x-wing: the lab's tables, its
    service daemon (which rewrites them) and `crossmesh test` all follow the revision, not the lab's
    own mesh file, which still admits it."""
    other = tmp_path / "other"
    shutil.copytree(lab.mesh.parent, other, ignore=shutil.ignore_patterns(".crossmesh"))
    rebel = other / "apps" / "cluster2" / "rebel-base.yaml"
    docs = [d for d in yaml.safe_load_all(rebel.read_text()) if d and d["metadata"]["name"] != ADMISSION]
    rebel.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    before = state(lab.tag).built_from
    crossmesh("apply", str(other / "mesh.yaml"), *_etcd_flags(lab), check=True)
    assert _status(lab, "--wait", "--timeout", "120")[0] == 0
    _provisioned(lab, before)
    x_wing_to_rebel_base = "^policy/.*x-wing.* -> cluster2/default/rebel-base.*:80/TCP"
    code, report = lab.test("--test", x_wing_to_rebel_base)
    checks = report["checks"]
    assert code == 0 and checks and all(c["name"].startswith("policy/denied") for c in checks), checks  # type: ignore[union-attr]
    # Back to the lab's own file: admitted again, and the revision's folder replaced.
    before = state(lab.tag).built_from
    crossmesh("apply", str(lab.mesh), *_etcd_flags(lab), check=True)
    assert _status(lab, "--wait", "--timeout", "120")[0] == 0
    _provisioned(lab, before)
    code, report = lab.test("--test", x_wing_to_rebel_base)
    checks = report["checks"]
    assert code == 0 and checks and all(c["name"].startswith("policy/allowed") for c in checks), checks  # type: ignore[union-attr]
    assert len(list((state(lab.tag).dir / "applied").iterdir())) == 1


def test_a_mesh_that_does_not_validate_leaves_the_applied_revision(lab: Lab) -> None:
    _, before = _status(lab)
    broken = lab.mesh.with_name("broken.yaml")
    broken.write_text(lab.mesh.read_text().replace("network: 10.0.0.0/16", "network: 10.0.0.0/33"))
    done = crossmesh("apply", str(broken), *_etcd_flags(lab))
    assert done.returncode == 2 and "broken.yaml:" in done.stderr
    _, after = _status(lab)
    assert after["desired"] == before["desired"]


def test_killing_the_leader_elects_the_other_within_the_lease(lab: Lab) -> None:
    done = crossmesh("lab", "crash-operator", "--mesh", str(lab.mesh), check=True)
    took = float(done.stdout.split(" leads after ")[1].split(" s")[0])
    print(f"\n[operator] {done.stdout.strip()}")
    assert took <= TTL + 1.5, done.stdout
    # The agents kept running meanwhile; the killed replica comes back as a standby.
    deadline = time.monotonic() + TTL + 15
    while time.monotonic() < deadline and not all(labs.operator_control(state(lab.tag))["replicas"].values()):
        time.sleep(0.5)
    assert all(labs.operator_control(state(lab.tag))["replicas"].values())
    code, _ = _status(lab)
    assert code == 0
