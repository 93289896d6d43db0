"""The lab's public face: every name other code uses, from the modules that hold them.

    state.py          the state file (lab.json), finding running labs, LabError
    processes.py      the lab's processes, found by command line, and stopped
    desired.py        what a running lab is to be: compiled mesh, topology, namespace digests
    pods.py           the pods' echo workloads; `lab exec`; killing and reviving a pod
    control_plane.py  etcd and the per-node agents; crash-node (and recover_node); rotate-keys
    operators.py      the mesh applied to the lab's etcd, two operator replicas; crash-operator; the active gateways
    services.py       starting the service daemon (servicesd.py), the pods' resolv.conf, and the
                      flow daemon (flowsd.py: NFLOG → flow records → flows.sock via flowrelay.py)
    teardown.py       down, leftovers, and removing what removed nodes left
    up.py             lab up: build or reconcile, then wait for handshakes and pods
    membership.py     add-node, remove-node
    faults.py         cut-site, heal-site; stop-forwarding, cut-uplink, heal-node

State of a running lab lives in /run/crossmesh/cm-<tag>/ (lab.json, the nodes' wg-quick
files 0600, logs, workload specs). Everything else the lab makes is found by its
`cm-<tag>` prefix: namespaces in /run/netns, wireguard-go sockets, processes whose
command line names the tag. That is what lets `down --all` clean up after a crash.
"""

from __future__ import annotations

from crossmesh.drivers.lab.control_plane import (
    agent_config,
    agent_dir,
    agent_running,
    agent_status,
    crash_node,
    recover_node,
    rotate_keys,
    start_agent,
)
from crossmesh.drivers.lab.desired import namespace_digest, policy_index, topology_of, unhealthy_backends
from crossmesh.drivers.lab.membership import add_node, remove_node
from crossmesh.drivers.lab.operators import control as operator_control
from crossmesh.drivers.lab.operators import crash_leader, gateway_values
from crossmesh.drivers.lab.pods import exec_argv, pod_key, set_killed
from crossmesh.drivers.lab.processes import alive, wireguard_pids
from crossmesh.drivers.lab.services import plan_services_view, resolv_conf
from crossmesh.drivers.lab.state import (
    LAB_ROOT,
    DeviceEntry,
    LabError,
    LabState,
    PodEntry,
    Progress,
    find_lab,
    running_labs,
    to_json,
)
from crossmesh.drivers.lab.teardown import down, leftovers
from crossmesh.drivers.lab.up import (
    AGENT_HANDSHAKE_GRACE,
    HANDSHAKE_TIMEOUT,
    REQUIRED,
    UpResult,
    preflight,
    tunnel_status,
    up,
)

__all__ = [
    "AGENT_HANDSHAKE_GRACE",
    "HANDSHAKE_TIMEOUT",
    "LAB_ROOT",
    "DeviceEntry",
    "REQUIRED",
    "LabError",
    "LabState",
    "PodEntry",
    "Progress",
    "UpResult",
    "add_node",
    "agent_config",
    "agent_dir",
    "agent_running",
    "agent_status",
    "alive",
    "crash_node",
    "crash_leader",
    "operator_control",
    "down",
    "exec_argv",
    "find_lab",
    "gateway_values",
    "leftovers",
    "namespace_digest",
    "plan_services_view",
    "pod_key",
    "policy_index",
    "preflight",
    "recover_node",
    "remove_node",
    "resolv_conf",
    "rotate_keys",
    "running_labs",
    "set_killed",
    "start_agent",
    "to_json",
    "topology_of",
    "tunnel_status",
    "unhealthy_backends",
    "up",
    "wireguard_pids",
]
