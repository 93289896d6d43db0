"""Flow records from what the kernel logged: names, services, tunnels and the deciding policy."""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from crossmesh.observe.enrich import VXLAN, WIREGUARD, Directory, Observed, enrich
from crossmesh.observe.flows import DropReason, Flow, Verdict
from crossmesh.policy.endpoints import mesh_index
from crossmesh.workspace import compile_mesh

# examples/three-clouds before Istio: hq keeps its Cilium HTTP rule (tests/meshes/cilium-l7/mesh.yaml)
CILIUM_L7 = Path(__file__).resolve().parents[2] / "tests" / "meshes" / "cilium-l7"
DENY = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: no-hq
  namespace: default
spec:
  endpointSelector:
    matchLabels: {name: rebel-base}
  ingressDeny:
    - fromEndpoints:
        - matchLabels: {name: hq}
"""


@dataclass(frozen=True)
class Packet:
    src: str
    dst: str
    sport: int
    dport: int
    protocol: int = 6
    time: float = 1000.0
    orig_src: str = ""
    orig_sport: int = 0
    orig_dst: str = ""
    orig_dport: int = 0
    icmp_code: int = -1
    mtu: int = 0
    inner_protocol: int = 0
    inner_src: str = ""
    inner_dst: str = ""
    inner_sport: int = 0
    inner_dport: int = 0
    inner_length: int = 0


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Directory:
    tmp = tmp_path_factory.mktemp("mesh")
    shutil.copytree(CILIUM_L7, tmp / "m", ignore=shutil.ignore_patterns("state", ".crossmesh"))
    (tmp / "m" / "apps" / "cluster2" / "deny.yaml").write_text(DENY)
    compiled = compile_mesh(tmp / "m" / "mesh.yaml", tmp / "state", dry_run=True)
    index = mesh_index(compiled.plan, compiled.loaded.manifests)
    devices = {
        "aws-talos-1": {"cm-t-g0": WIREGUARD, "cm-t-x0": VXLAN},
        "azure-talos-1": {"cm-t-g1": WIREGUARD, "cm-t-x1": VXLAN},
    }
    return Directory.build(compiled.plan, index, devices)


def test_a_service_connection_names_both_pods_the_service_its_backend_and_the_tunnel(directory: Directory) -> None:
    packet = Packet("10.10.0.3", "10.11.0.3", 43512, 80, orig_dst="10.96.109.143", orig_dport=80)
    flow, match = enrich(
        packet, Observed(Verdict.FORWARDED), node="aws-talos-1", indev="cm-t-v1", outdev="cm-t-x0", directory=directory
    )
    assert flow.source.ref == "cluster1/default/x-wing-0" and flow.source.labels["name"] == "x-wing"
    assert flow.source.identity >= 256 and flow.destination.identity >= 256
    assert flow.destination.ref == "cluster2/default/rebel-base-0"
    assert flow.service == "cluster1/default/rebel-base" and flow.service_address == "10.96.109.143:80"
    assert flow.backend == "cluster2/default/rebel-base-0"
    assert flow.tunnel is not None and (flow.tunnel.peer, flow.tunnel.site) == ("azure-talos-1", "azure-we")
    # The source's node enforces its egress: the rule that let it out is named.
    assert flow.direction == "egress"
    assert flow.policy == "CiliumNetworkPolicy cluster1/default/allow-cross-cluster" and flow.rule == "spec.egress[0]"
    assert match == "l3-only"
    assert flow.summary == (
        "cluster1/default/x-wing-0:43512 -> cluster2/default/rebel-base-0:80 "
        "(service cluster1/default/rebel-base 10.96.109.143:80) TCP FORWARDED via tunnel azure-talos-1 (azure-we)"
    )
    assert Flow.from_json(flow.to_json()) == flow


def test_a_default_deny_drop_names_the_policies_that_isolate_the_pod(directory: Directory) -> None:
    packet = Packet("10.10.0.3", "10.11.0.3", 40000, 5353, protocol=17)
    observed = Observed(Verdict.DROPPED, DropReason.POLICY_DENIED, "ingress")
    flow, match = enrich(packet, observed, node="azure-talos-1", indev="cm-t-x1", outdev="", directory=directory)
    # Every policy selecting rebel-base for ingress makes it default-deny there (a Cilium policy with
    # ingress rules does too), in the order `policy trace` lists them.
    isolating = (
        "CiliumNetworkPolicy cluster2/default/allow-x-wing-from-cluster1, NetworkPolicy cluster2/default/default-deny, "
        "CiliumNetworkPolicy cluster2/default/no-hq"
    )
    assert flow.policy == isolating and flow.rule == ""
    assert flow.tunnel is not None and flow.tunnel.peer == "aws-talos-1"
    assert match == "none"
    assert flow.summary == (
        "cluster1/default/x-wing-0:40000 -> cluster2/default/rebel-base-0:5353 UDP DROPPED "
        f"(POLICY_DENIED by {isolating} ingress) via tunnel aws-talos-1 (aws-sg)"
    )


def test_an_explicit_deny_names_the_policy_and_its_rule(directory: Directory) -> None:
    packet = Packet("10.11.0.2", "10.11.0.3", 40000, 80)
    observed = Observed(Verdict.DROPPED, DropReason.POLICY_DENY, "ingress")
    flow, match = enrich(packet, observed, node="azure-talos-1", indev="cm-t-v4", outdev="", directory=directory)
    assert flow.source.ref == "cluster2/default/hq-0" and flow.tunnel is None
    assert (flow.policy, flow.rule) == ("CiliumNetworkPolicy cluster2/default/no-hq", "spec.ingressDeny[0]")
    assert match == "l3-only"
    assert "(POLICY_DENY by CiliumNetworkPolicy cluster2/default/no-hq spec.ingressDeny[0] ingress)" in flow.summary
    assert "—" not in flow.summary


def test_a_kernel_drop_the_evaluator_allows_is_said_not_hidden(directory: Directory) -> None:
    packet = Packet("10.10.0.3", "10.11.0.3", 40000, 80)
    observed = Observed(Verdict.DROPPED, DropReason.POLICY_DENIED, "ingress")
    flow, _ = enrich(packet, observed, node="azure-talos-1", indev="", outdev="", directory=directory)
    assert flow.rule == ""
    assert "the kernel dropped it, but policy trace allows it: allowed by CiliumNetworkPolicy" in flow.summary


def test_a_kernel_reason_other_than_the_evaluators_is_said(directory: Directory) -> None:
    packet = Packet("10.10.0.3", "10.11.0.3", 40000, 5353, protocol=17)
    observed = Observed(Verdict.DROPPED, DropReason.POLICY_DENY, "ingress")
    flow, _ = enrich(packet, observed, node="azure-talos-1", indev="", outdev="", directory=directory)
    assert "the kernel says POLICY_DENY, policy trace: no rule allows it" in flow.summary


def test_nodes_and_the_world_carry_cilium_reserved_identities(directory: Directory) -> None:
    packet = Packet("10.0.1.5", "8.8.8.8", 5000, 53, protocol=17)
    own, _ = enrich(packet, Observed(Verdict.FORWARDED), node="aws-talos-1", indev="", outdev="", directory=directory)
    assert (own.source.kind, own.source.name, own.source.identity) == ("node", "aws-talos-1", 1)
    assert (own.destination.kind, own.destination.identity, own.destination.ref) == ("world", 2, "8.8.8.8")
    assert own.direction == "" and own.policy == "" and own.tunnel is None
    remote, _ = enrich(
        packet, Observed(Verdict.FORWARDED), node="azure-talos-1", indev="", outdev="", directory=directory
    )
    assert remote.source.identity == 6
    # A node's tunnel address is the node too, and a packet out of the tunnel device has its peer.
    tunnel_packet = Packet("100.64.0.1", "100.64.0.2", 7, 7, protocol=17)
    flow, _ = enrich(
        tunnel_packet, Observed(Verdict.FORWARDED), node="aws-talos-1", indev="", outdev="cm-t-g0", directory=directory
    )
    assert flow.destination.name == "azure-talos-1" and flow.tunnel is not None and flow.tunnel.peer == "azure-talos-1"


def test_icmp_has_no_ports_in_its_summary_and_no_policy_verdict(directory: Directory) -> None:
    packet = Packet("10.10.0.3", "10.11.0.3", 0, 0, protocol=1)
    observed = Observed(Verdict.DROPPED, DropReason.POLICY_DENIED, "egress")
    flow, _ = enrich(packet, observed, node="aws-talos-1", indev="", outdev="", directory=directory)
    assert flow.summary.startswith("cluster1/default/x-wing-0 -> cluster2/default/rebel-base-0 ICMP DROPPED")


def test_an_address_that_is_not_ipv4_is_refused(directory: Directory) -> None:
    with pytest.raises(ValueError):
        enrich(
            Packet("fe80::1", "10.11.0.3", 1, 2),
            Observed(Verdict.FORWARDED),
            node="aws-talos-1",
            indev="",
            outdev="",
            directory=directory,
        )


def test_a_remembered_policy_decision_is_the_one_evaluated_and_the_memory_is_bounded(
    directory: Directory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flow daemon decides each (source, destination, port, protocol, direction, rule) once:
    a repeated flow (another source port) names the same policy as a fresh evaluation does."""
    from crossmesh.observe import enrich as enrich_mod

    cases = [
        (Packet("10.10.0.3", "10.11.0.3", 40000, 80), Observed(Verdict.FORWARDED, direction="ingress")),
        (Packet("10.10.0.3", "10.11.0.3", 40000, 80), Observed(Verdict.DROPPED, DropReason.POLICY_DENIED, "ingress")),
        (Packet("10.11.0.2", "10.11.0.3", 40000, 80), Observed(Verdict.DROPPED, DropReason.POLICY_DENY, "ingress")),
    ]
    for packet, observed in cases:
        directory.verdicts.clear()
        fresh = enrich(packet, observed, node="azure-talos-1", indev="", outdev="", directory=directory)
        again = enrich(
            dataclasses.replace(packet, sport=41234),
            observed,
            node="azure-talos-1",
            indev="",
            outdev="",
            directory=directory,
        )
        assert len(directory.verdicts) == 1
        assert (again.flow.policy, again.flow.rule, again.match) == (fresh.flow.policy, fresh.flow.rule, fresh.match)
        assert again.flow.summary == fresh.flow.summary.replace(":40000", ":41234")
    monkeypatch.setattr(enrich_mod, "VERDICTS_KEPT", 2)
    directory.verdicts.clear()
    for dport in (80, 81, 82):
        enrich(Packet("10.10.0.3", "10.11.0.3", 40000, dport), cases[0][1], node="azure-talos-1", indev="", outdev="",
               directory=directory)  # fmt: skip
    assert len(directory.verdicts) == 1  # forgotten at two, then the third remembered


# --- drops the kernel's forwarding makes, from the ICMP error the node sends -------------------


def icmp_error(node_side: str, to: str, quoted: tuple[str, str, int, int, int], **kw: int) -> Packet:
    """An ICMP destination unreachable the node sent `to`, quoting (protocol, src, dst, sport, dport)."""
    protocol, src, dst, sport, dport = quoted
    return Packet(node_side, to, 0, 0, protocol=1, inner_protocol=protocol, inner_src=src, inner_dst=dst,
                  inner_sport=sport, inner_dport=dport, **kw)  # fmt: skip


def test_a_packet_too_big_for_the_path_is_the_senders_flow_with_the_path_mtu(directory: Directory) -> None:
    # The node refused x-wing-0's 1400-byte datagram to rebel-base-0: the VXLAN path carries 1330.
    error = icmp_error(
        "10.10.0.1", "10.10.0.3", (17, "10.10.0.3", "10.11.0.3", 41000, 9999), icmp_code=4, mtu=1330, inner_length=1400
    )
    observed = Observed(Verdict.DROPPED, DropReason.MTU, quoted=True)
    flow, match = enrich(error, observed, node="aws-talos-1", indev="", outdev="cm-t-v1", directory=directory)
    assert (flow.verdict, flow.drop_reason.value, flow.protocol) == (Verdict.DROPPED, "FRAG_NEEDED", "UDP")
    assert (flow.source.ref, flow.source_port) == ("cluster1/default/x-wing-0", 41000)
    assert (flow.destination.ref, flow.destination_port) == ("cluster2/default/rebel-base-0", 9999)
    assert flow.direction == "" and flow.policy == "" and match == "none"
    # The path it was refused for goes through the tunnel to azure-talos-1 (the overlay inside it).
    assert flow.tunnel is not None and (flow.tunnel.peer, flow.tunnel.site) == ("azure-talos-1", "azure-we")
    assert flow.summary == (
        "cluster1/default/x-wing-0:41000 -> cluster2/default/rebel-base-0:9999 UDP DROPPED (FRAG_NEEDED) "
        "via tunnel azure-talos-1 (azure-we) — 1400 bytes with DF set; 1330 is the path MTU"
    )
    assert Flow.from_json(flow.to_json()) == flow


def test_no_answer_from_a_neighbour_is_a_no_route_drop_of_the_senders_flow(directory: Directory) -> None:
    error = icmp_error("10.10.0.1", "10.10.0.3", (6, "10.10.0.3", "10.0.1.99", 41001, 9999), icmp_code=1)
    observed = Observed(Verdict.DROPPED, DropReason.NO_ROUTE, quoted=True)
    flow, _ = enrich(error, observed, node="aws-talos-1", indev="", outdev="cm-t-v1", directory=directory)
    assert (flow.drop_reason, flow.protocol, flow.destination.kind, flow.tunnel) == (
        DropReason.NO_ROUTE,
        "TCP",
        "world",
        None,
    )
    assert flow.summary == (
        "cluster1/default/x-wing-0:41001 -> 10.0.1.99:9999 TCP DROPPED (NO_ROUTE) "
        "— 10.0.1.99 unreachable: no route to the host, or no answer to ARP"
    )
    no_net = enrich(
        icmp_error("10.0.1.5", "10.0.1.5", (17, "10.0.1.5", "192.0.2.9", 5, 53), icmp_code=0),
        observed,
        node="aws-talos-1",
        indev="",
        outdev="",
        directory=directory,
    ).flow
    assert no_net.source.ref == "aws-talos-1" and no_net.summary.endswith("— no route to 192.0.2.9")


def test_a_refused_packet_sent_to_a_service_names_the_service(directory: Directory) -> None:
    quoted = (6, "10.10.0.3", "10.96.109.143", 41002, 80)  # the kernel translates the quote back for its sender
    error = icmp_error("10.10.0.1", "10.10.0.3", quoted, icmp_code=4, mtu=1330, inner_length=1400)
    observed = Observed(Verdict.DROPPED, DropReason.MTU, quoted=True)
    flow, _ = enrich(error, observed, node="aws-talos-1", indev="", outdev="", directory=directory)
    assert (flow.service, flow.service_address) == ("cluster1/default/rebel-base", "10.96.109.143:80")


def test_an_icmp_error_without_a_quote_is_refused_and_one_forwarded_is_not_read_as_its_quote(
    directory: Directory,
) -> None:
    observed = Observed(Verdict.DROPPED, DropReason.MTU, quoted=True)
    with pytest.raises(ValueError, match="without the packet"):
        enrich(Packet("10.10.0.1", "10.10.0.3", 0, 0, protocol=1), observed, node="aws-talos-1", indev="",
               outdev="", directory=directory)  # fmt: skip
    # A policy rule that drops an ICMP error someone else sent: the record is that ICMP packet.
    error = icmp_error("10.11.0.3", "10.10.0.3", (17, "10.10.0.3", "10.11.0.3", 1, 2), icmp_code=3)
    dropped = Observed(Verdict.DROPPED, DropReason.POLICY_DENIED, "ingress")
    flow, _ = enrich(error, dropped, node="aws-talos-1", indev="", outdev="", directory=directory)
    assert (flow.protocol, flow.source.ref, flow.destination.ref) == (
        "ICMP",
        "cluster2/default/rebel-base-0",
        "cluster1/default/x-wing-0",
    )
