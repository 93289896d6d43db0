"""The lab's state file: /run/crossmesh/cm-<tag>/lab.json, what a running lab is made of.

Everything else the lab makes is found by its `cm-<tag>` prefix: namespaces in /run/netns,
wireguard-go sockets, processes whose command line names the tag (processes.py).

lab.json is a file on disk, read by every `crossmesh lab` command, the service daemon and the
provisioner: it is parsed as strictly as any other input, each field against the type it is
declared with here, and a damaged file is a LabError naming the field, never a traceback. The
records keep the JSON shape of the untyped dicts they replaced (camelCase keys in the file), so
a lab started by an earlier crossmesh is still read and brought down.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import json
import os
import time
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from crossmesh.errors import CrossmeshError, UsageError

LAB_ROOT = Path("/run/crossmesh")
# The VPN gateways' folders (drivers/lab/transit.py): not under /run, which each charon replaces with a
# private one of its own (its pid file's path is compiled in) and would no longer see its configuration.
VPN_ROOT = Path("/var/lib/crossmesh-lab")

Progress = Callable[[str], None]


class LabError(CrossmeshError):
    """Building or operating the lab failed; the message names the node or tunnel."""


def quiet(_: str) -> None:
    pass


def _json_key(name: str) -> dict[str, str]:
    """Field metadata: the field's key in lab.json when it is not the field's own name."""
    return {"json": name}


@dataclass(frozen=True, slots=True)
class PodEntry:
    """A pod of the running lab: its namespace, its node and what its echo workload serves."""

    namespace: str  # the pod's network namespace: cm-<tag>-p<j>
    node: str
    node_namespace: str = field(metadata=_json_key("nodeNamespace"))
    address: IPv4Address
    ports: tuple[tuple[int, str], ...]  # (port, protocol)
    cluster: str
    pod_namespace: str = field(metadata=_json_key("podNamespace"))  # the Kubernetes namespace
    name: str


@dataclass(frozen=True, slots=True)
class DeviceEntry:
    """A WireGuard device of the running lab and the wireguard-go serving it (pid 0: not started)."""

    namespace: str  # its node's namespace
    node: str
    pid: int = 0


@dataclass(slots=True)
class LabState:
    tag: str
    mesh: str
    mesh_name: str
    state_dir: str
    status: str = "building"
    created: float = field(default_factory=time.time)
    namespaces: list[str] = field(default_factory=list)
    nodes: dict[str, str] = field(default_factory=dict)  # node → namespace
    pods: dict[str, PodEntry] = field(default_factory=dict)  # ref → pod
    wireguard: dict[str, DeviceEntry] = field(default_factory=dict)  # ifname → device
    workloads: dict[str, int] = field(default_factory=dict)  # node → pid
    control_plane: str = ""  # "etcd": per-node agents own WireGuard peers and tunnel routes
    lease_ttl: int = 3  # seconds: a crashed node's routes are withdrawn about this long after the crash
    overlay: dict[str, Any] = field(default_factory=dict)  # membership changes: lab add-node / remove-node
    placements: dict[str, str] = field(default_factory=dict)  # pod → node, kept so that joins move nobody
    indices: dict[str, dict[str, int]] = field(default_factory=dict)  # numbers in namespace and device names
    etcd_pids: dict[str, int] = field(default_factory=dict)  # member → pid
    services_pid: int = 0  # the service daemon: health checks, ClusterIP tables, DNS
    services_digest: str = ""  # of the plan it runs with; a new plan restarts it
    flows_pid: int = 0  # the flow daemon: every node's flow records behind flows.sock, metrics on :9965
    flows_digest: str = ""  # of the plan and policies it names flows with; a new one restarts it
    flow_logs: bool = True  # off (`lab up --no-flow-logs`): no table logs to NFLOG and no flow daemon runs
    mesh_ca_pid: int = 0  # the service mesh's CA daemon (meshca.py); 0: the mesh has no spec.istio
    mesh_proxies: dict[str, int] = field(default_factory=dict)  # node → pid of its mesh proxy (meshproxy.py)
    mesh_digest: str = ""  # of what the CA and proxies were started with; a new one restarts them
    ingress: dict[str, int] = field(default_factory=dict)  # gateway pod ref → pid of its haproxy (ingressd.py)
    ingress_digests: dict[str, str] = field(default_factory=dict)  # gateway pod ref → digest of its configuration
    # VPN gateways (transit.py): customer:<site> | hub:<hub> → digest, folder (under vpn/), namespace
    vpn: dict[str, dict[str, str]] = field(default_factory=dict)
    sites: dict[str, str] = field(default_factory=dict)  # site → router namespace
    inet: str = ""
    local: str = ""  # the client outside, cm-<tag>-local ("": built before it existed; `lab up` adds it)
    applied: dict[str, str] = field(default_factory=dict)  # namespace → digest of the spec it was brought to
    built_digest: str = ""  # of the applied revision (crossmesh apply) the lab was last brought to
    built_from: str = ""  # that revision's mesh file, under the lab's folder ("": the lab's own mesh file)
    cut_sites: list[str] = field(default_factory=list)  # cut off from the internet: lab cut-site, heal-site
    stopped_forwarding: list[str] = field(default_factory=list)  # nodes: lab stop-forwarding, heal-node
    cut_uplinks: list[str] = field(default_factory=list)  # nodes cut at their site router: lab cut-uplink, heal-node
    cut_tunnels: list[str] = field(default_factory=list)  # "<connection>/<tunnel>": lab cut-tunnel, heal-tunnel

    @property
    def dir(self) -> Path:
        return LAB_ROOT / f"cm-{self.tag}"

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / "lab.json.tmp"
        tmp.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True))
        os.replace(tmp, self.dir / "lab.json")

    def to_json(self) -> dict[str, Any]:
        """The lab.json document: JSON types only, records under their lab.json keys."""
        data: dict[str, Any] = to_json(self)
        return data

    @classmethod
    def from_json(cls, data: object, source: str = "lab.json") -> LabState:
        """The state of a lab.json document; LabError naming `source` and the field when the
        document is not one. Fields the document lacks take their defaults, as a lab.json written
        before the field existed does."""
        try:
            state: LabState = _record(cls, data, "")
        except _Refused as err:
            raise LabError(f"{source}: {err.where + ': ' if err.where else ''}{err.problem}{_DAMAGED}") from None
        return state

    @classmethod
    def read(cls, path: Path) -> LabState | None:
        """The state in lab.json file `path`; None when there is none."""
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise LabError(f"{path}: unreadable: {err.strerror}") from err
        try:
            data = json.loads(text)
        except ValueError as err:
            raise LabError(f"{path}: not JSON: {err}{_DAMAGED}") from err
        return cls.from_json(data, str(path))

    @classmethod
    def load(cls, tag: str) -> LabState | None:
        """The state of lab `tag`; None when it has none (not started, or brought down)."""
        return cls.read(LAB_ROOT / f"cm-{tag}" / "lab.json")


_DAMAGED = " — a damaged lab state file; remove the lab with `crossmesh lab down MESH`"


def to_json(value: Any) -> Any:
    """`value` (a LabState, a record or a field of one) as JSON types: records as objects under
    their lab.json keys, tuples as lists, addresses as text."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.metadata.get("json", f.name): to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, IPv4Address):
        return str(value)
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


class _Refused(Exception):
    """A part of lab.json that is not what its field declares; `where` is the field's path."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(where, problem)
        self.where, self.problem = where, problem


def _refuse(where: str, expected: str, value: object) -> _Refused:
    return _Refused(where, f"expected {expected}, got {json.dumps(value)[:80]}")


def _record(cls: type, value: object, where: str) -> Any:
    if not isinstance(value, dict):
        raise _refuse(where, "an object", value)
    fields = {f.metadata.get("json", f.name): f for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise _Refused(where, f"unknown field {unknown[0]!r} (a lab.json of another crossmesh?)")
    kwargs = {}
    for key, f in fields.items():
        if key in value:
            kwargs[f.name] = _parse(value[key], _hints(cls)[f.name], f"{where}.{key}" if where else key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise _Refused(where, f"missing field {key!r}")
    return cls(**kwargs)


def _parse(value: object, hint: Any, where: str) -> Any:
    """`value` read from lab.json as the declared type `hint`, or _Refused at `where`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _record(hint, value, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise _refuse(where, "an object", value)
        return {k: _parse(v, args[1], f"{where}[{json.dumps(k)}]") for k, v in value.items()}
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise _refuse(where, "a list", value)
        if origin is tuple and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise _refuse(where, f"a list of {len(args)}", value)
            return tuple(_parse(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(value, args, strict=True)))
        items = [_parse(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if hint is IPv4Address:
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return IPv4Address(value)
        raise _refuse(where, "an IPv4 address", value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (str, int, float) and isinstance(value, hint) and not isinstance(value, bool):
        return value
    if hint is bool and isinstance(value, bool):
        return value
    raise _refuse(where, _NAMES.get(hint, str(hint)), value)


_NAMES: dict[Any, str] = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def daemon_state(lab_dir: str) -> LabState | str:
    """The lab a daemon started as `python -m … LAB_DIR` serves (LAB_DIR: /run/crossmesh/cm-<tag>),
    or why there is none, to print before exiting 2."""
    try:
        state = LabState.load(Path(lab_dir).name.removeprefix("cm-"))
    except LabError as err:
        return str(err)
    return state if state is not None else f"no lab state in {lab_dir}"


def running_labs() -> list[LabState]:
    """Every lab whose state file reads; a damaged one is left out (it does not stop the others)."""
    return _scan()[0]


def _scan() -> tuple[list[LabState], list[LabError]]:
    if not LAB_ROOT.is_dir():
        return [], []
    out, damaged = [], []
    for d in sorted(p for p in LAB_ROOT.glob("cm-*") if p.is_dir()):
        try:
            state = LabState.load(d.name[3:])
        except LabError as err:
            damaged.append(err)
            continue
        if state is not None:
            out.append(state)
    return out, damaged


def find_lab(mesh: Path | None) -> LabState:
    """The lab of `mesh`, or the only running lab when no mesh is given. When none is found and a
    lab's state file is damaged, that is what is said (naming the file and the field)."""
    labs, damaged = _scan()
    if mesh is not None:
        target = str(mesh.resolve())
        for lab in labs:
            if lab.mesh == target:
                return lab
        if damaged:
            raise damaged[0]
        raise UsageError(f"no lab is running for {mesh} — start it with `crossmesh lab up {mesh}`")
    if not labs and damaged:
        raise damaged[0]
    if not labs:
        raise UsageError("no lab is running — start one with `crossmesh lab up MESH`")
    if len(labs) > 1:
        names = ", ".join(f"{lab.mesh_name} ({lab.mesh})" for lab in labs)
        raise UsageError(f"{len(labs)} labs are running ({names}) — say which with --mesh MESH")
    return labs[0]


@contextlib.contextmanager
def lab_lock(tag: str | None) -> Iterator[None]:
    """One `lab up` at a time for lab `tag` (the CLI's and the provisioner's, which follows
    `crossmesh apply`): an exclusive lock in the lab's folder, released by the kernel if the holder
    dies. A new lab (`tag` None) has nothing to share yet."""
    folder = LAB_ROOT / f"cm-{tag}"
    if tag is None or not folder.is_dir():
        yield
        return
    fd = os.open(folder / "up.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
