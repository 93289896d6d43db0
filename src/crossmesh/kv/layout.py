"""Where a mesh lives in etcd, and who may write what there. Pure: the operator, `apply`,
`status`, the agents and the rendered `rbac.sh` all read key names and roles from here.

    /crossmesh/<mesh>/desired           the applied revision: mesh file, manifests, who, when, digest (apply)
    /crossmesh/<mesh>/ipam/guard        bumped by every allocation transaction (operator)
    /crossmesh/<mesh>/ipam/clusters/<c> a cluster's id and pod CIDR, written once (operator)
    /crossmesh/<mesh>/ipam/nodes/<n>    a node's pod CIDR and tunnel address, written once (operator)
    /crossmesh/<mesh>/intents/<n>       what node n must run: its planned record, MTU, keepalive (operator)
    /crossmesh/<mesh>/rollout           the revision the intents are at, and the nodes it expects (operator)
    /crossmesh/<mesh>/operator/leader   the elected operator, under its lease
    /crossmesh/<mesh>/nodes/<n>         node n's record: public key, endpoint (its agent, under a lease)
    /crossmesh/<mesh>/status/<n>        the revision node n runs, or why it does not (its agent)
    /crossmesh/<mesh>/gateways/<site>   topology gateways: the site's active gateway (created by the
                                        operator, moved by the site's gateways on failover)

etcd knows a client by its certificate's common name: an agent's is its node's name, the operator's
`crossmesh-operator`, `apply`'s `crossmesh-admin` (`kv.identities` lists them). Role names are
`crossmesh:<mesh>:node:<n>`, `crossmesh:<mesh>:operator`, `crossmesh:<mesh>:admin`: a colon is in
no mesh or node name, so no role of one mesh or node can be taken for another's (with dashes,
node `operator` had the operator's role, and mesh `a`'s node `b-admin` mesh `a-b`'s admin role).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from crossmesh.kv.api import Permission, Role

OPERATOR_USER = "crossmesh-operator"
ADMIN_USER = "crossmesh-admin"


@dataclass(frozen=True, slots=True)
class Layout:
    mesh: str

    @property
    def root(self) -> bytes:
        return f"/crossmesh/{self.mesh}/".encode()

    @property
    def desired(self) -> bytes:
        return self.root + b"desired"

    @property
    def ipam(self) -> bytes:
        return self.root + b"ipam/"

    @property
    def ipam_guard(self) -> bytes:
        return self.ipam + b"guard"

    def ipam_cluster(self, name: str) -> bytes:
        return self.ipam + b"clusters/" + name.encode()

    def ipam_node(self, name: str) -> bytes:
        return self.ipam + b"nodes/" + name.encode()

    @property
    def intents(self) -> bytes:
        return self.root + b"intents/"

    def intent(self, node: str) -> bytes:
        return self.intents + node.encode()

    @property
    def rollout(self) -> bytes:
        return self.root + b"rollout"

    @property
    def leader(self) -> bytes:
        return self.root + b"operator/leader"

    @property
    def nodes(self) -> bytes:
        return self.root + b"nodes/"

    def node(self, name: str) -> bytes:
        return self.nodes + name.encode()

    @property
    def statuses(self) -> bytes:
        return self.root + b"status/"

    def status(self, node: str) -> bytes:
        return self.statuses + node.encode()

    @property
    def role_prefix(self) -> str:
        """Every role of this mesh, and no other mesh's, starts so."""
        return f"crossmesh:{self.mesh}:"

    @property
    def gateways(self) -> bytes:
        return self.root + b"gateways/"

    def gateway(self, site: str) -> bytes:
        return self.gateways + site.encode()

    def node_role(self, node: str, gateway_of: str | None = None) -> Role:
        """A node's agent reads the whole mesh and writes only its own record and status — and, for a
        gateway of site `gateway_of`, which of the site's gateways is active (failover)."""
        permissions = [
            Permission("read", self.root, prefix=True),
            Permission("readwrite", self.node(node)),
            Permission("readwrite", self.status(node)),
        ]
        if gateway_of is not None:
            permissions.append(Permission("readwrite", self.gateway(gateway_of)))
        return Role(f"{self.role_prefix}node:{node}", permissions)

    def operator_role(self) -> Role:
        return Role(f"{self.role_prefix}operator", [Permission("readwrite", self.root, prefix=True)])

    def admin_role(self) -> Role:
        return Role(f"{self.role_prefix}admin", [Permission("readwrite", self.root, prefix=True)])

    def users(self, nodes: list[str], gateways: Mapping[str, str] | None = None) -> dict[str, Role]:
        """Every etcd user of the mesh and its role (user name = certificate common name); `gateways`:
        each gateway node's site (topology gateways)."""
        out = {n: self.node_role(n, (gateways or {}).get(n)) for n in nodes}
        out[OPERATOR_USER] = self.operator_role()
        out[ADMIN_USER] = self.admin_role()
        return out
