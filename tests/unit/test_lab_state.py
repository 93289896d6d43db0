"""lab.json: the typed state round-trips in the JSON shape labs have always written, and a damaged
file is refused with a LabError naming the field (it is input like any other)."""

from __future__ import annotations

import json
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from crossmesh.drivers.lab.desired import built_mesh
from crossmesh.drivers.lab.state import DeviceEntry, LabError, LabState, PodEntry

# A lab.json as `lab up` wrote it before pods and devices were typed (trimmed to one of each).
BEFORE = {
    "applied": {"cm-abcd-n0": "sha256:0f"},
    "built_digest": "",
    "built_from": "",
    "control_plane": "etcd",
    "created": 1718000000.25,
    "cut_sites": [],
    "cut_tunnels": [],
    "cut_uplinks": [],
    "etcd_pids": {"cm-abcd-e0": 4100},
    "flow_logs": True,
    "flows_digest": "",
    "flows_pid": 4500,
    "indices": {"site": {"aws-sg": 0}},
    "inet": "cm-abcd-inet",
    "ingress": {},
    "ingress_digests": {},
    "vpn": {},
    "lease_ttl": 3,
    "local": "cm-abcd-local",
    "mesh_ca_pid": 0,
    "mesh_digest": "",
    "mesh_proxies": {},
    "mesh": "/work/examples/three-clouds/mesh.yaml",
    "mesh_name": "three-clouds",
    "namespaces": ["cm-abcd-inet", "cm-abcd-n0", "cm-abcd-p0"],
    "nodes": {"aws-1": "cm-abcd-n0"},
    "overlay": {"add": [{"cluster": "c1", "node": {"name": "late", "site": "aws-sg"}}], "remove": []},
    "placements": {"c1/default/web-0": "aws-1"},
    "pods": {
        "c1/default/web-0": {
            "address": "10.42.0.2",
            "cluster": "c1",
            "name": "web-0",
            "namespace": "cm-abcd-p0",
            "node": "aws-1",
            "nodeNamespace": "cm-abcd-n0",
            "podNamespace": "default",
            "ports": [[8080, "TCP"], [5353, "UDP"]],
        }
    },
    "services_digest": "",
    "services_pid": 4200,
    "sites": {"aws-sg": "cm-abcd-r0"},
    "state_dir": "/work/examples/three-clouds/.crossmesh",
    "status": "up",
    "stopped_forwarding": [],
    "tag": "abcd",
    "wireguard": {"cm-abcd-g0": {"namespace": "cm-abcd-n0", "node": "aws-1", "pid": 4300}},
    "workloads": {"aws-1": 4400},
}


def _text(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True)  # as LabState.save writes it


def test_a_lab_json_of_before_reads_typed_and_writes_back_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "lab.json"
    path.write_text(_text(BEFORE))
    state = LabState.read(path)
    assert state is not None
    assert state.pods["c1/default/web-0"] == PodEntry(
        namespace="cm-abcd-p0",
        node="aws-1",
        node_namespace="cm-abcd-n0",
        address=IPv4Address("10.42.0.2"),
        ports=((8080, "TCP"), (5353, "UDP")),
        cluster="c1",
        pod_namespace="default",
        name="web-0",
    )
    assert state.wireguard == {"cm-abcd-g0": DeviceEntry(namespace="cm-abcd-n0", node="aws-1", pid=4300)}
    assert _text(state.to_json()) == path.read_text()


def test_round_trip() -> None:
    state = LabState(tag="abcd", mesh="/m.yaml", mesh_name="m", state_dir="/s", created=1.5)
    state.pods["c/ns/p"] = PodEntry(
        namespace="cm-abcd-p3",
        node="n",
        node_namespace="cm-abcd-n1",
        address=IPv4Address("10.1.2.3"),
        ports=((80, "TCP"),),
        cluster="c",
        pod_namespace="ns",
        name="p",
    )
    state.wireguard["cm-abcd-g1"] = DeviceEntry(namespace="cm-abcd-n1", node="n")
    state.indices = {"node": {"n": 1}}
    state.stopped_forwarding, state.cut_uplinks = ["n"], ["m", "n"]
    state.cut_tunnels = ["openstack-vpn/1"]
    state.flow_logs = False
    assert LabState.from_json(json.loads(_text(state.to_json()))) == state


def test_fields_a_lab_json_lacks_take_their_defaults() -> None:
    """A lab.json written before a field existed still reads."""
    lacking = ("cut_sites", "built_digest", "built_from", "overlay", "stopped_forwarding", "cut_uplinks", "flow_logs")
    lacking += ("cut_tunnels",)
    state = LabState.from_json({k: v for k, v in BEFORE.items() if k not in lacking})
    assert (state.cut_sites, state.built_digest, state.built_from, state.overlay) == ([], "", "", {})
    assert (state.stopped_forwarding, state.cut_uplinks, state.cut_tunnels) == ([], [], [])
    assert state.flow_logs  # a lab from before the switch logs flows, as it did


def test_the_lab_reads_the_revision_it_was_built_from_and_nothing_outside_its_folder() -> None:
    state = LabState.from_json(BEFORE)
    assert built_mesh(state) == Path(BEFORE["mesh"])  # never built from an applied revision
    state.built_from = str(state.dir / "applied" / "r7-x1" / "mesh.yaml")
    assert built_mesh(state) == state.dir / "applied" / "r7-x1" / "mesh.yaml"
    for elsewhere in ("/etc/crossmesh/mesh.yaml", str(state.dir / "applied" / ".." / ".." / "mesh.yaml")):
        state.built_from = elsewhere
        with pytest.raises(LabError, match="built_from: .* is not under .*damaged lab state"):
            built_mesh(state)


def test_no_lab_json_is_no_lab(tmp_path: Path) -> None:
    assert LabState.read(tmp_path / "lab.json") is None


_DROP = object()
POD = ("pods", "c1/default/web-0")


def _damaged(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """BEFORE with the field at `path` set to `value` (or removed: _DROP)."""
    data: dict[str, Any] = json.loads(json.dumps(BEFORE))
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is _DROP:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2], r"^lab\.json: expected an object, got \[1, 2\] — "),
        (_damaged(("tag",), _DROP), r"^lab\.json: missing field 'tag'"),
        (_damaged(("tag",), 7), r"^lab\.json: tag: expected a string, got 7"),
        (_damaged(("created",), "yesterday"), r"^lab\.json: created: expected a number"),
        (_damaged(("lease_ttl",), True), r"^lab\.json: lease_ttl: expected an integer, got true"),
        (_damaged(("colour",), "blue"), r"^lab\.json: unknown field 'colour'"),
        (_damaged(("pods",), []), r"^lab\.json: pods: expected an object, got \[\]"),
        (
            _damaged((*POD, "address"), "10.42.0.300"),
            r'^lab\.json: pods\["c1/default/web-0"\]\.address: expected an IPv4',
        ),
        (_damaged((*POD, "ports"), [[8080]]), r'pods\["c1/default/web-0"\]\.ports\[0\]: expected a list of 2'),
        (_damaged((*POD, "ports"), [["http", "TCP"]]), r"\.ports\[0\]\[0\]: expected an integer, got \"http\""),
        (_damaged((*POD, "nodeNamespace"), _DROP), r'pods\["c1/default/web-0"\]: missing field .nodeNamespace.'),
        (_damaged((*POD, "node_namespace"), "x"), r"unknown field 'node_namespace'"),
        (
            _damaged(("wireguard", "cm-abcd-g0"), None),
            r'^lab\.json: wireguard\["cm-abcd-g0"\]: expected an object, got null',
        ),
        (_damaged(("wireguard", "cm-abcd-g0", "pid"), "4300"), r'wireguard\["cm-abcd-g0"\]\.pid: expected an integer'),
        (
            _damaged(("indices", "site", "aws-sg"), "0"),
            r'^lab\.json: indices\["site"\]\["aws-sg"\]: expected an integer',
        ),
        (_damaged(("namespaces",), ["cm-abcd-n0", 3]), r"^lab\.json: namespaces\[1\]: expected a string"),
        (_damaged(("cut_uplinks",), "gw-1"), r"^lab\.json: cut_uplinks: expected a list, got \"gw-1\""),
        (_damaged(("stopped_forwarding",), [None]), r"^lab\.json: stopped_forwarding\[0\]: expected a string"),
        (_damaged(("flow_logs",), "off"), r"^lab\.json: flow_logs: expected true or false, got \"off\""),
        (_damaged(("flow_logs",), 0), r"^lab\.json: flow_logs: expected true or false, got 0"),
    ],
)
def test_a_damaged_lab_json_is_refused_naming_the_field(data: Any, message: str) -> None:
    with pytest.raises(LabError, match=message) as caught:
        LabState.from_json(data)
    assert "crossmesh lab down MESH" in str(caught.value)  # and says what to do


def test_a_lab_json_that_is_not_json_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "lab.json"
    path.write_text('{"tag": "abcd",')
    with pytest.raises(LabError, match=rf"{path}: not JSON: "):
        LabState.read(path)
    path.write_text(_text(_damaged(("status",), ["up"])))
    with pytest.raises(LabError, match=rf"{path}: status: expected a string"):
        LabState.read(path)


def test_a_damaged_lab_does_not_hide_the_others_and_is_named_when_it_is_the_one_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crossmesh.drivers.lab import state as lab_state

    monkeypatch.setattr(lab_state, "LAB_ROOT", tmp_path)
    good = {**BEFORE, "tag": "abcd", "mesh": str(tmp_path / "good.yaml")}
    (tmp_path / "cm-abcd").mkdir()
    (tmp_path / "cm-abcd" / "lab.json").write_text(_text(good))
    (tmp_path / "cm-dead").mkdir()
    (tmp_path / "cm-dead" / "lab.json").write_text(_text({**BEFORE, "tag": "dead", "pods": {"x": 1}}))
    assert [s.tag for s in lab_state.running_labs()] == ["abcd"]
    assert lab_state.find_lab(tmp_path / "good.yaml").tag == "abcd"
    with pytest.raises(LabError, match=r"cm-dead/lab.json: pods"):
        lab_state.find_lab(tmp_path / "other.yaml")
