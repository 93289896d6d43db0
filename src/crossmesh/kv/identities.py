"""Who talks to a mesh's etcd, and the certificate each one gets. Pure: `crossmesh pki etcd`, the
lab, the rendered `rbac.sh` and `ensure_roles` all take the list from here, so the certificates
issued, the etcd users made and the roles granted are the same names.

etcd started with `--client-cert-auth` (and auth enabled) takes a client certificate its CA signed
as the user its common name names. The identities of a mesh:

    server                 the etcd members' serving certificate (its names: the members' addresses)
    <node>                 the agent of each node that runs one (`runs_agent`): its node role (kv.layout)
    crossmesh-operator     the operator
    crossmesh-admin        `apply` and whoever administers the mesh
    root                   etcd's administrator: makes users and roles, enables auth

As files (`crossmesh pki etcd --output-dir`), each identity is a folder of its own holding
`ca.crt`, `tls.crt` and `tls.key`: `server/` and `users/<common name>/` (`folder`), so no node
name can collide with the server's folder.
"""

from __future__ import annotations

from collections.abc import Sequence

from crossmesh.kv.api import Role
from crossmesh.kv.layout import ADMIN_USER, OPERATOR_USER, Layout
from crossmesh.model.plan import NodePlan, Plan
from crossmesh.model.tls import CertSpec

ROOT_USER = "root"  # etcd's own administrator: its role `root` may do everything
SERVER = "server"  # the members' certificate (CertSpec.secret), not an etcd user
SERVER_CN = "etcd"
RESERVED = (ROOT_USER, OPERATOR_USER, ADMIN_USER)  # a node with one of these names would be that user
DEFAULT_SERVER_IPS = ("127.0.0.1",)


def runs_agent(plan: Plan, node: NodePlan) -> bool:
    """Whether `node` runs an agent (the one rule: etcd users, certificates and the rendered units and
    DaemonSets follow it). A node with a tunnel; under `topology: gateways` every node (the others
    route the other sites via their site's active gateway, and follow it when it fails over)."""
    return node.tunnel is not None or plan.topology == "gateways"


def agent_nodes(plan: Plan) -> list[str]:
    """The nodes that run an agent (`runs_agent`), sorted: each has its own etcd user."""
    return sorted(n.name for n in plan.nodes if runs_agent(plan, n))


def gateway_sites(plan: Plan) -> dict[str, str]:
    """Each gateway node's site under `topology: gateways` (its agent may move the site's active
    gateway); empty for a full mesh."""
    if plan.topology != "gateways":
        return {}
    return {n.name: n.site for n in plan.nodes if n.gateway}


def reserved_nodes(plan: Plan) -> list[str]:
    """Nodes named as an etcd identity that is not a node's: their certificate would carry that
    identity's rights (`root` would administer etcd)."""
    return sorted(n.name for n in plan.nodes if n.name in RESERVED)


def users(plan: Plan) -> dict[str, Role]:
    """Every etcd user of the mesh (certificate common name) and its role, `root` aside (etcd's own
    role). ValueError when a node is named as another identity."""
    clash = reserved_nodes(plan)
    if clash:
        raise ValueError(
            f"node {clash[0]} is named as the etcd identity {clash[0]} — rename the node "
            f"({', '.join(RESERVED)} are reserved)"
        )
    return Layout(plan.mesh).users(agent_nodes(plan), gateway_sites(plan))


def etcd_specs(
    plan: Plan, *, server_ips: Sequence[str] = DEFAULT_SERVER_IPS, server_names: Sequence[str] = ()
) -> tuple[CertSpec, ...]:
    """The certificate of every identity: the members' (serving and client use, named by
    `server_ips` and `server_names`) and one client certificate per user (CN = the user), sorted
    by name. ValueError as `users`."""
    clients = sorted([*users(plan), ROOT_USER])
    server = CertSpec(
        SERVER, SERVER_CN, tuple(sorted(set(server_names))), tuple(sorted(set(server_ips), key=_ip_order)), server=True
    )
    return (server, *(CertSpec(cn, cn) for cn in clients))


def folder(spec: CertSpec) -> str:
    """Where an identity's files go, relative to the output folder."""
    return SERVER if spec.server else f"users/{spec.common_name}"


def _ip_order(address: str) -> tuple[int, str]:
    return (":" in address, address)
