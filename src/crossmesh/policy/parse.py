"""Raw policy specs → the IR of `policy.model`, with every problem at its field path.

One parser walks each spec once and both builds the rules and collects the problems,
so what `crossmesh validate` rejects is exactly what the evaluator could not read.
Problems carry a path relative to the object (`("spec", "ingress", 0, "from", 1)`);
the manifest loader turns that into `file:line:column`.

The implicit defaults follow the projects' own translation, not intuition:

- NetworkPolicy (Kubernetes docs, "Network Policies"): a `podSelector` peer means pods
  of the policy's namespace; `namespaceSelector` alone, all pods of the selected
  namespaces (`{}`: every namespace); both in one peer, pods matching both (AND);
  separate peers OR. A rule without `from`/`to` matches every peer, without `ports`
  every port. `policyTypes` defaults to Ingress, plus Egress "if the NetworkPolicy has
  any egress rules" (section "The NetworkPolicy resource"). `endPort` needs a numeric
  `port` ("Targeting a range of ports").
- Cilium (cilium/cilium pkg/k8s/apis/cilium.io/utils getEndpointSelector, Cilium docs
  "Using Kubernetes Constructs in Policy" → Namespaces): a namespaced policy selects only
  its own namespace, and a peer selector without a namespace label means the policy's
  namespace; a clusterwide peer selector without one means any pod (namespace label
  Exists). A selector with a `reserved:` key is taken as written.
- Cluster Mesh (Cilium docs, "Cluster Mesh" → "Network Policy"): "Policies automatically
  select endpoints from the local cluster only, unless one or multiple cluster are
  specifically targeted" — `clustermesh.policyDefaultLocalCluster`, true since Cilium
  1.19 and in the 1.20 chart crossmesh renders for. Kubernetes NetworkPolicy peers get
  it too, unless their podSelector names `io.cilium.k8s.policy.cluster`.
- Cilium rules: a rule with `toPorts` and no L3 field allows every peer on those ports
  ("Layer 4 Policies": "to any layer 3 destination"); a rule with neither (`- {}`)
  allows nothing but still puts the endpoint into default deny ("Layer 3 Policies" →
  "Ingress/Egress Default Deny"); an L3 field that is present but empty selects
  nothing; two L3 fields in one rule are rejected ("combining X and Y is not supported
  yet"). A direction is default-deny when the policy has allow or deny rules for it,
  unless `enableDefaultDeny` says otherwise (CRD field documentation).
"""

from __future__ import annotations

from crossmesh.load.fields import Issue
from crossmesh.model import k8s
from crossmesh.policy.model import Policy, PolicyKind
from crossmesh.policy.parse_base import POLICY_KINDS, cilium_port_name
from crossmesh.policy.parse_cilium import CiliumPolicyParser
from crossmesh.policy.parse_k8s import NetworkPolicyParser

__all__ = [
    "POLICY_KINDS",
    "Issue",
    "check_manifest",
    "cilium_port_name",
    "cluster_policies",
    "parse_manifest",
    "unenforced",
]


class _Parser(NetworkPolicyParser, CiliumPolicyParser):
    """One manifest's parser: the plumbing of ParserBase, both kinds of spec."""

    __slots__ = ()


def _manifest_names(m: k8s.Manifest) -> tuple[PolicyKind, str]:
    kind = PolicyKind(m.kind)
    return kind, "" if kind is PolicyKind.CILIUM_CLUSTERWIDE else (m.namespace or "default")


def parse_manifest(
    m: k8s.Manifest, *, cluster: str, local_cluster_default: bool = True
) -> tuple[list[Policy], list[Issue]]:
    """The policies of one manifest object (none when it is not a policy) and its problems."""
    if m.kind not in POLICY_KINDS or m.obj is None:
        return [], []
    kind, namespace = _manifest_names(m)
    parser = _Parser(kind, cluster, namespace, m.name, local_cluster_default)
    if kind is PolicyKind.NETWORK_POLICY:
        policies = parser.network_policy(m.raw.get("spec"), m.file, m.line)
    else:
        policies = parser.cilium_policy(m.raw, m.file, m.line)
    return policies, parser.issues


def check_manifest(m: k8s.Manifest) -> list[Issue]:
    """Problems of one manifest object, for the loader (`crossmesh validate`)."""
    return parse_manifest(m, cluster="")[1]


def cluster_policies(
    cluster: str, manifests: list[k8s.Manifest], *, cilium: bool, local_cluster_default: bool = True
) -> list[Policy]:
    """Every policy enforced in `cluster`. Cilium policies need Cilium: elsewhere nothing enforces them."""
    out: list[Policy] = []
    for m in manifests:
        if m.kind in (PolicyKind.CILIUM.value, PolicyKind.CILIUM_CLUSTERWIDE.value) and not cilium:
            continue
        out.extend(parse_manifest(m, cluster=cluster, local_cluster_default=local_cluster_default)[0])
    return sorted(out, key=lambda p: p.id)


def unenforced(cluster: str, cni: str, manifests: list[k8s.Manifest]) -> list[tuple[k8s.Manifest, str]]:
    """Cilium policies in a cluster whose CNI is not Cilium: applied, but nothing enforces them."""
    if cni == "cilium":
        return []
    return [
        (m, f"{m.kind} {m.name} is not enforced in cluster {cluster}: its CNI is {cni}, not cilium")
        for m in manifests
        if m.kind in (PolicyKind.CILIUM.value, PolicyKind.CILIUM_CLUSTERWIDE.value)
    ]
