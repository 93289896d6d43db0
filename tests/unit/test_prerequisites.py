"""Provider prerequisites: the data (plan/prerequisites.py), its Terraform (render/providers.py), and the
lab's site-router firewall built from the same data (drivers/lab/firewall.py) — a rule removed from the
data is no longer admitted by the nftables ruleset nft itself loads."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from crossmesh import nft
from crossmesh.drivers.lab import topology
from crossmesh.model.plan import Plan
from crossmesh.plan import prerequisites
from crossmesh.plan.prerequisites import ANYWHERE, Protocol, Scope, SitePrerequisites, Targets
from crossmesh.render import providers
from crossmesh.workspace import compile_mesh

ROOT = Path(__file__).resolve().parents[2]


def plan_of(case: str, tmp: Path) -> Plan:
    shutil.copytree(ROOT / case, tmp / "m", ignore=shutil.ignore_patterns(".crossmesh", "expected", "state"))
    return compile_mesh(tmp / "m" / "mesh.yaml", tmp / "state").plan


def site(plan: Plan, name: str) -> SitePrerequisites:
    return prerequisites.for_site(plan, name)


def rule(p: SitePrerequisites, name: str) -> prerequisites.InboundRule:
    return next(r for r in p.inbound if r.name == name)


def test_wireguard_from_each_public_peer_and_from_anywhere_for_peers_behind_nat(tmp_path: Path) -> None:
    plan = plan_of("tests/meshes/hybrid-wireguard", tmp_path)
    aws = site(plan, "aws")
    assert aws.dialled == (("aws-worker-1", IPv4Address("10.100.2.50"), IPv4Address("203.0.113.69")),)
    master = rule(aws, "wireguard-from-openstack-master")
    assert (master.protocol, master.port, master.source) == (Protocol.UDP, 51820, IPv4Network("198.51.100.190/32"))
    assert (master.targets, master.scope) == (Targets.DIALLED, Scope.INTERNET)
    natted = rule(aws, "wireguard-from-behind-nat")
    assert natted.source == ANYWHERE and "openstack-worker" in natted.reason and "NAT" in natted.reason
    # openstack-worker is behind NAT and dialled by nobody: its site admits WireGuard to the master only.
    openstack = site(plan, "openstack")
    assert [n for n, _, _ in openstack.dialled] == ["openstack-master"]
    assert {r.name for r in openstack.inbound if r.scope is Scope.INTERNET} == {"wireguard-from-aws-worker-1"}


def test_site_network_rules_and_no_forwarding_or_routes_in_a_full_mesh(tmp_path: Path) -> None:
    plan = plan_of("examples/three-clouds", tmp_path)
    for p in prerequisites.derive(plan):
        assert p.forwarding == () and p.routes == ()
        site_rules = {(r.name, r.protocol, r.port, r.source) for r in p.inbound if r.scope is Scope.SITE}
        assert ("vxlan-from-site", Protocol.UDP, 8472, p.site.network) in site_rules
        assert ("clustermesh-from-site", Protocol.TCP, 32379, p.site.network) in site_rules
        # VXLAN never from the internet, nor from anything but the site network here
        assert all(r.source == p.site.network for r in p.inbound if r.scope is Scope.SITE)
        assert all(r.reason for r in p.inbound)


def test_sites_a_hub_joins_admit_each_other_s_cluster_traffic(tmp_path: Path) -> None:
    """Seed 001: the OpenStack nodes' VXLAN reaches aws-worker-1 from 10.0.1.0/24 through the transit
    gateway (no WireGuard, no NAT), and the AWS worker's reaches the OpenStack nodes from the VPC
    through the customer gateway: each site's group must admit the other site's network."""
    plan = plan_of("tests/meshes/hybrid-tgw", tmp_path)
    for here, there, net in (("aws", "openstack", "10.0.1.0/24"), ("openstack", "aws", "10.100.0.0/16")):
        p = site(plan, here)
        vxlan = rule(p, f"vxlan-from-site-{there}")
        assert (vxlan.protocol, vxlan.port, vxlan.source) == (Protocol.UDP, 8472, IPv4Network(net))
        assert (vxlan.targets, vxlan.scope) == (Targets.NODES, Scope.SITE)
        assert "transit gateway tgw" in vxlan.reason and "openstack-vpn" in vxlan.reason
        assert rule(p, f"kubernetes-api-from-site-{there}").source == IPv4Network(net)
        assert p.dialled == () and not any(r.scope is Scope.INTERNET for r in p.inbound)  # no WireGuard at all


def test_gateways_forward_and_the_route_table_follows_the_nodes(tmp_path: Path) -> None:
    plan = plan_of("tests/golden/gateways", tmp_path)
    east = site(plan, "dc-east")
    assert [(f.node, f.carries) for f in east.forwarding] == [
        ("gw-east-1", (IPv4Network("10.40.0.0/16"),)),
        ("gw-east-2", (IPv4Network("10.40.0.0/16"),)),
    ]
    assert "standby" in east.forwarding[0].reason and "active" in east.forwarding[1].reason
    assert [(e.destination, e.node, e.next_hop) for e in east.routes] == [
        (IPv4Network("10.40.0.0/16"), "gw-east-2", IPv4Address("10.30.0.11"))
    ]
    # The gateway puts aws-west's packets on dc-east's network: VXLAN is allowed from there too.
    assert rule(east, "vxlan-from-site-aws-west").source == IPv4Network("10.40.0.0/16")


def test_derive_is_deterministic(tmp_path: Path) -> None:
    plan = plan_of("tests/golden/gateways", tmp_path)
    assert prerequisites.derive(plan) == prerequisites.derive(plan)


def _references(doc: Any) -> set[str]:
    return set(re.findall(r"var\.([A-Za-z0-9_]+)", json.dumps(doc)))


@pytest.mark.parametrize("case", ["examples/three-clouds", "tests/meshes/hybrid-wireguard", "tests/golden/gateways"])
def test_terraform_declares_every_variable_it_uses_and_invents_no_ids(case: str, tmp_path: Path) -> None:
    plan = plan_of(case, tmp_path)
    for p in prerequisites.derive(plan):
        text = providers.render(p)
        if p.site.provider == "baremetal":
            assert text is None
            continue
        assert text is not None
        doc = json.loads(text)
        declared = doc["variable"]
        assert _references(doc) <= set(declared), p.site.name
        assert all(v.get("description") for v in declared.values())
        for value in re.findall(r'"(?!description|error_message)[a-z_]+": "([^"]*)"', text):
            assert not re.match(r"(vpc|eni|rtb|i|sg)-[0-9a-f]", value), f"{p.site.name}: invented id {value}"


def test_a_missing_provider_kind_gets_no_file(tmp_path: Path) -> None:
    plan = plan_of("tests/golden/gateways", tmp_path)
    assert providers.render(site(plan, "dc-east")) is None  # baremetal


def test_aws_descriptions_use_only_what_ec2_accepts(tmp_path: Path) -> None:
    plan = plan_of("examples/three-clouds", tmp_path)
    doc = json.loads(providers.render(site(plan, "aws-sg")) or "{}")
    for r in doc["resource"]["aws_vpc_security_group_ingress_rule"].values():
        assert re.fullmatch(r"[A-Za-z0-9 ._\-:/()#,@\[\]+=&;{}!$*]{1,255}", r["description"]), r["description"]


def _router(plan: Plan, site_name: str, firewall: dict[str, SitePrerequisites] | None = None) -> topology.Namespace:
    topo = topology.build(plan, "f1f1", prerequisites=firewall)
    return topo.namespace(topo.site_ns[site_name])


def _text(namespace: topology.Namespace) -> str:
    return nft.render(namespace.nft) if namespace.nft is not None else ""


def test_the_router_admits_exactly_the_internet_rules(tmp_path: Path) -> None:
    plan = plan_of("tests/meshes/hybrid-wireguard", tmp_path)
    text = _text(_router(plan, "aws"))
    assert "ip daddr { 10.100.2.50 } ip saddr 198.51.100.190/32 udp dport 51820 accept" in text
    assert "ip daddr { 10.100.2.50 } udp dport 51820 accept" in text  # from anywhere: the peer behind NAT
    assert "ct status dnat accept\n" not in text  # no blanket admission of whatever the 1:1 NAT lets in
    assert "8472" not in text  # site-network rules are not the internet's


def _without(p: SitePrerequisites, name: str) -> SitePrerequisites:
    return replace(p, inbound=tuple(r for r in p.inbound if r.name != name))


def _admitted(nft: str) -> set[tuple[str, str, int]]:
    """(source, destination, port) of every accept rule of the forward chain, as nft itself read it."""
    done = subprocess.run(
        ["unshare", "--net", "sh", "-c", "nft -f - && nft -j list chain ip crossmesh forward"],
        input=nft,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = set()
    for item in json.loads(done.stdout)["nftables"]:
        expr = item.get("rule", {}).get("expr", [])
        if not any("accept" in e for e in expr):
            continue
        fields: dict[str, Any] = {}
        for e in expr:
            match = e.get("match", {})
            left = match.get("left", {}).get("payload", {})
            fields[left.get("field", "")] = match.get("right")
        if "dport" in fields:
            source = fields.get("saddr", {"prefix": {"addr": "0.0.0.0", "len": 0}})
            src = (
                f"{source['prefix']['addr']}/{source['prefix']['len']}" if isinstance(source, dict) else f"{source}/32"
            )
            daddr = fields["daddr"]["set"] if isinstance(fields["daddr"], dict) else [fields["daddr"]]
            out |= {(src, d, fields["dport"]) for d in daddr}
    return out


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nft") is None or shutil.which("unshare") is None,
    reason="loading a ruleset needs root, nft and unshare (the lab's requirements)",
)
def test_a_rule_removed_from_the_data_is_no_longer_admitted(tmp_path: Path) -> None:
    plan = plan_of("tests/meshes/hybrid-wireguard", tmp_path)
    full = {p.site.name: p for p in prerequisites.derive(plan)}
    before = _admitted(_text(_router(plan, "aws", full)))
    assert ("198.51.100.190/32", "10.100.2.50", 51820) in before
    assert ("0.0.0.0/0", "10.100.2.50", 51820) in before
    cut = {**full, "aws": _without(full["aws"], "wireguard-from-behind-nat")}
    after = _admitted(_text(_router(plan, "aws", cut)))
    assert after == before - {("0.0.0.0/0", "10.100.2.50", 51820)}
