"""How `crossmesh agent` is deployed on real nodes: a systemd unit per node, and DaemonSets per cluster.

Every node that runs an agent gets them — `kv.identities.runs_agent`, the rule etcd's users and
certificates follow too: under `topology: full-mesh` the nodes with a tunnel; under `topology: gateways`
every node. A node with a tunnel (a gateway) runs the whole agent; a node without one runs a
*route-only* agent: no WireGuard device and no peers, only its routes (protocol 101) to the other sites
via its site's active gateway, moved when etcd's `gateways/<site>` names another.

All run the same command line — the agent reads its intent from etcd (which also tells it whether it
has a tunnel), so it needs the mesh's name, the etcd endpoints, its etcd client certificate (CN = the
node's name) and its state directory, never the mesh file — and all keep everything node-specific in
that directory, `/var/lib/crossmesh`, on the node's own disk: the agent's WireGuard private key
(`keys/<node>.key`, which it makes and rotates itself: a Kubernetes Secret could not be written back)
and the etcd client certificate and key, which must not reach any other node (a Secret mounted by one
DaemonSet would give every node every node's key, and with it the right to rewrite every record). The
etcd endpoints are the one value `render` cannot know: `/etc/crossmesh/agent.env` on a systemd node,
the ConfigMap `crossmesh-agent` in a cluster.

- systemd (every distribution but Talos): a tunnel node's unit runs after `wg-quick@wg-crossmesh`,
  which makes the device, and may reach wireguard-go's socket; a route-only node's waits for the
  network alone. Root, but with CAP_NET_ADMIN as its only capability (see `systemd_unit`).
- DaemonSets (any distribution; the only way on Talos, which runs no host service of ours): hostNetwork,
  NET_ADMIN only, each scheduled on its nodes of the cluster by name. A pod template is the same on
  every node it runs on, so a cluster with both kinds of node gets two: `crossmesh-agent` on the tunnel
  nodes, whose init container makes the device when the node has none (and which mounts wireguard-go's
  socket folder off Talos), and `crossmesh-agent-routes` on the route-only nodes, with neither. Their
  selectors (their own names) never overlap, and `crossmesh-agent`'s is the one it always had (a
  DaemonSet's selector cannot change). On Talos the agent owns `wg-crossmesh`, so a tunnel node is
  configured from `talos-agent.yaml` (the machine patch without the WireguardConfig document) —
  Talos's network controller re-applies a WireguardConfig's peers whenever a link changes and would
  undo the agent's. A route-only Talos node has no WireguardConfig to leave out and keeps `talos.yaml`
  (validate refuses Talos nodes that must route via a gateway, so it arises only in a one-site mesh).

Both serve the agent's metrics at :9962 on every address of the node (`--metrics-address`, stated
rather than left to the default, so that the files say where): the port the rendered Prometheus
configuration scrapes (render/grafana.py). The DaemonSets name it as the container port `metrics`
(on the host network it is the node's port, so a second claim on it, such as Cilium agent's own
Prometheus port, leaves the pod Pending and saying why) and carry the `prometheus.io/scrape` and
`prometheus.io/port` annotations that Prometheus configurations discovering pods commonly read.
"""

from __future__ import annotations

import re
from typing import Any

from crossmesh import __version__
from crossmesh.kv.identities import runs_agent
from crossmesh.model.plan import ClusterPlan, NodePlan, Plan
from crossmesh.observe.metrics import AGENT_PORT

AGENT_IMAGE = f"ghcr.io/crossmesh/agent:{__version__}"  # built from the repository's Dockerfile
NAME = "crossmesh-agent"  # the Namespace's objects, and the DaemonSet of the tunnel nodes
ROUTES_NAME = "crossmesh-agent-routes"  # the DaemonSet of the route-only nodes (topology gateways)
NAMESPACE = "crossmesh-system"
STATE_DIR = "/var/lib/crossmesh"
ETCD_CA = f"{STATE_DIR}/etcd/ca.crt"  # the etcd servers' CA
ETCD_CERT = f"{STATE_DIR}/etcd/tls.crt"  # this node's etcd client certificate (CN = node), as `pki etcd` writes it
ETCD_KEY = f"{STATE_DIR}/etcd/tls.key"  # its key, 0600
ENV_FILE = "/etc/crossmesh/agent.env"  # systemd: CROSSMESH_ETCD_ENDPOINTS=https://…
ENDPOINTS_VAR = "CROSSMESH_ETCD_ENDPOINTS"
EXECUTABLE = "/usr/local/bin/crossmesh"  # where `pip install 'crossmesh[agent]'` puts it as root
WIREGUARD_GO_SOCKETS = "/var/run/wireguard"  # a node whose device is wireguard-go: its control socket
STATUS_STALE_MINUTES = 2  # the agent rewrites its status file every 5 s while its loop runs
METRICS_ADDRESS = f":{AGENT_PORT}"  # every address of the node: where Prometheus scrapes the agent


def agent_nodes(plan: Plan, cluster: ClusterPlan) -> list[NodePlan]:
    """The cluster's nodes that run an agent (`runs_agent`), by name (so the files list them in a
    stable order): with a tunnel, the whole agent; without one (topology gateways), a route-only one."""
    by_name = {n.name: n for n in plan.nodes}
    return sorted((by_name[n] for n in cluster.nodes if runs_agent(plan, by_name[n])), key=lambda n: n.name)


def agent_args(mesh: str, node: str, endpoints: str) -> list[str]:
    """`crossmesh agent`'s arguments, the same for both ways of running it."""
    return [
        "--node", node,
        "--mesh", mesh,
        "--etcd-endpoints", endpoints,
        "--cacert", ETCD_CA,
        "--cert", ETCD_CERT,
        "--key", ETCD_KEY,
        "--state", STATE_DIR,
        "--metrics-address", METRICS_ADDRESS,
    ]  # fmt: skip


# systemd ----------------------------------------------------------------------------------------

_PLAIN = re.compile(r"[A-Za-z0-9_./:,@=+-]+")


class Expanded(str):
    """A word systemd is meant to expand (`${VAR}`: one argument, the variable's whole value)."""

    __slots__ = ()


def systemd_word(word: str) -> str:
    """One argument of an Exec line as systemd reads it back: plain, or double-quoted with `\\` and
    `"` escaped; `%` (a specifier) and `$` (a variable) doubled, so a value is never expanded."""
    if isinstance(word, Expanded) or _PLAIN.fullmatch(word):
        return word
    escaped = word.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


def systemd_unit(plan: Plan, node: NodePlan) -> str:
    """The node's `crossmesh-agent.service`. Root, because the agent reads wireguard-go's control
    socket (root's, 0700) as well as kernel WireGuard; but its bounding set holds CAP_NET_ADMIN alone,
    so it cannot read or write outside its state directory what root's other capabilities would allow.
    Every directive is checked with `systemd-analyze verify` (systemd 252) by the unit tests.
    A route-only node (no tunnel, topology gateways) has no device to wait for and no wireguard-go
    socket to reach: its unit names neither."""
    if not runs_agent(plan, node):  # agent_nodes gives only nodes that run one; reaching here is a bug
        raise ValueError(f"node {node.name} has no tunnel: it runs no agent under topology {plan.topology}")
    argv = [EXECUTABLE, "agent", *agent_args(plan.mesh, node.name, Expanded("${" + ENDPOINTS_VAR + "}"))]
    exec_start = " ".join(systemd_word(w) for w in argv)
    if node.tunnel is not None:
        description = f"crossmesh agent of node {node.name} (mesh {plan.mesh})"
        # The device comes from wg-quick; a node that makes it otherwise simply has no such unit.
        needs = f"network-online.target wg-quick@{node.tunnel.interface}.service"
        writable = f"{STATE_DIR} -{WIREGUARD_GO_SOCKETS}"
    else:
        description = f"crossmesh agent of node {node.name} (mesh {plan.mesh}): routes only"
        needs, writable = "network-online.target", STATE_DIR
    sections: list[tuple[str, list[tuple[str, str]]]] = [
        (
            "Unit",
            [
                ("Description", description),
                ("Wants", needs),
                ("After", needs),
                ("StartLimitIntervalSec", "0"),  # Restart=always never gives up
            ],
        ),
        (
            "Service",
            [
                ("Type", "exec"),
                ("EnvironmentFile", ENV_FILE),
                ("ExecStart", exec_start),
                ("Restart", "always"),
                ("RestartSec", "5"),
                ("StateDirectory", "crossmesh"),
                ("StateDirectoryMode", "0700"),
                ("UMask", "0077"),
                ("CapabilityBoundingSet", "CAP_NET_ADMIN"),
                # For root the bounding set is what counts; ambient keeps the capability for a
                # drop-in with User= (kernel WireGuard only: wireguard-go's socket is root's).
                ("AmbientCapabilities", "CAP_NET_ADMIN"),
                ("NoNewPrivileges", "yes"),
                ("ProtectSystem", "strict"),
                ("ReadWritePaths", writable),
                ("ProtectHome", "yes"),
                ("PrivateTmp", "yes"),
                ("PrivateDevices", "yes"),
                ("ProtectKernelTunables", "yes"),
                ("ProtectKernelModules", "yes"),
                ("ProtectKernelLogs", "yes"),
                ("ProtectControlGroups", "yes"),
                ("ProtectClock", "yes"),
                ("ProtectHostname", "yes"),
                # etcd over TCP, rtnetlink and WireGuard's generic netlink, wireguard-go's unix socket.
                ("RestrictAddressFamilies", "AF_UNIX AF_NETLINK AF_INET AF_INET6"),
                ("RestrictNamespaces", "yes"),
                ("RestrictRealtime", "yes"),
                ("RestrictSUIDSGID", "yes"),
                ("LockPersonality", "yes"),
                ("SystemCallArchitectures", "native"),
                ("SystemCallFilter", "@system-service"),
                # No MemoryDenyWriteExecute: Python's ctypes/cffi callbacks may need writable code.
            ],
        ),
        ("Install", [("WantedBy", "multi-user.target")]),
    ]
    lines = [
        f"# crossmesh {plan.mesh}: the agent of node {node.name} (cluster {node.cluster}, site {node.site})",
        "# generated by `crossmesh render`. Install as /etc/systemd/system/crossmesh-agent.service; it needs",
        f"# {ENV_FILE} ({ENDPOINTS_VAR}=https://…), {ETCD_CA}, {ETCD_CERT} and {ETCD_KEY} (0600).",
    ]
    if node.tunnel is None:
        lines += [
            "# Routes only: the node has no tunnel (topology gateways); the agent keeps its routes to the other",
            "# sites via its site's active gateway, which it follows in etcd. No wg-quick, no WireGuard device.",
        ]
    for name, entries in sections:
        lines += ["", f"[{name}]"]
        lines += [f"{key}={value}" for key, value in entries]
    return "\n".join(lines) + "\n"


# Kubernetes -------------------------------------------------------------------------------------


def daemonset_objects(plan: Plan, cluster: ClusterPlan, nodes: list[NodePlan]) -> list[dict[str, Any]]:
    """Namespace, ServiceAccount and DaemonSets of the cluster's agents (`nodes`: agent_nodes):
    `crossmesh-agent` on the nodes with a tunnel, `crossmesh-agent-routes` on the route-only ones,
    each where the cluster has such nodes."""
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": NAMESPACE,
            # hostNetwork, a hostPath and NET_ADMIN are what Pod Security's baseline forbids (and Talos
            # enforces baseline outside kube-system): the namespace says so instead of hiding in kube-system.
            "labels": {"pod-security.kubernetes.io/enforce": "privileged"},
        },
    }
    account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": _labels(NAME)},
        "automountServiceAccountToken": False,  # the agent talks to etcd, never to the Kubernetes API
    }
    out: list[dict[str, Any]] = [namespace, account]
    tunnel = [n for n in nodes if n.tunnel is not None]
    if tunnel:
        interface = next(n.tunnel.interface for n in tunnel if n.tunnel is not None)
        out.append(_daemonset(plan, cluster, tunnel, interface))
    route_only = [n for n in nodes if n.tunnel is None]
    if route_only:
        out.append(_daemonset(plan, cluster, route_only, None))
    return out


def _labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "crossmesh"}


def _daemonset(plan: Plan, cluster: ClusterPlan, nodes: list[NodePlan], interface: str | None) -> dict[str, Any]:
    """The DaemonSet of `nodes`: with a tunnel on `interface`, or route-only (None): no device to
    make, no wireguard-go socket to reach."""
    name = NAME if interface is not None else ROUTES_NAME
    labels = _labels(name)
    security = {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsUser": 0,  # see the Dockerfile: wireguard-go's socket is root's, and NET_ADMIN is not ambient
        "runAsNonRoot": False,
        "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    state_mount = {"name": "state", "mountPath": STATE_DIR}
    volumes: list[dict[str, Any]] = [
        # `Directory`, not `DirectoryOrCreate`: without the certificates placed there the pod waits, named.
        {"name": "state", "hostPath": {"path": STATE_DIR, "type": "Directory"}},
    ]
    mounts = [state_mount]
    if interface is not None and cluster.distribution != "talos":  # Talos has kernel WireGuard and no wireguard-go
        volumes.append(
            {"name": "wireguard-go", "hostPath": {"path": WIREGUARD_GO_SOCKETS, "type": "DirectoryOrCreate"}}
        )
        mounts.append({"name": "wireguard-go", "mountPath": WIREGUARD_GO_SOCKETS})
    fresh = f'test -n "$(find {STATE_DIR}/agent-$NODE_NAME.status.json -mmin -{STATUS_STALE_MINUTES})"'
    container = {
        "name": "agent",
        "image": AGENT_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "args": agent_args(plan.mesh, "$(NODE_NAME)", "$(ETCD_ENDPOINTS)"),
        "env": [
            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {
                "name": "ETCD_ENDPOINTS",
                "valueFrom": {"configMapKeyRef": {"name": NAME, "key": "etcd-endpoints"}},
            },
        ],
        "ports": [{"name": "metrics", "containerPort": AGENT_PORT, "protocol": "TCP"}],
        "securityContext": security,
        "volumeMounts": mounts,
        "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}},
        # The status file is rewritten every 5 s while the agent's loop runs, etcd reachable or not:
        # stale means a wedged agent, not a lost etcd (whose outage a restart would not cure).
        "livenessProbe": {
            "exec": {"command": ["sh", "-c", fresh]},
            "initialDelaySeconds": 60,
            "periodSeconds": 30,
            "failureThreshold": 3,
        },
    }
    pod_spec: dict[str, Any] = {
        "serviceAccountName": NAME,
        "automountServiceAccountToken": False,
        "hostNetwork": True,
        "dnsPolicy": "Default",  # the node's resolver: cluster DNS may need the network this agent makes
        "priorityClassName": "system-node-critical",
        # Every taint: control-plane nodes, and nodes not Ready yet — the tunnel may be what they wait for.
        "tolerations": [{"operator": "Exists"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        # By Node name (what --node must be), not by a hostname label a cloud may set otherwise.
                        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [n.name for n in nodes]}]}
                    ]
                }
            }
        },
        "containers": [container],
        "volumes": volumes,
        "terminationGracePeriodSeconds": 30,  # a clean stop revokes the node's lease at once
    }
    if interface is not None:
        # The device, when the node has none (Talos, or a node without wg-quick): the agent sets its key,
        # port, peers, address, MTU and routes. The name is an argument, not part of the script.
        pod_spec["initContainers"] = [
            {
                "name": "device",
                "image": AGENT_IMAGE,
                "imagePullPolicy": "IfNotPresent",
                "command": [
                    "sh",
                    "-c",
                    'ip link show dev "$1" >/dev/null 2>&1 || ip link add dev "$1" type wireguard',
                    "make-device",
                    interface,
                ],
                "securityContext": security,
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
            }
        ]
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(AGENT_PORT)},
                },
                "spec": pod_spec,
            },
        },
    }
