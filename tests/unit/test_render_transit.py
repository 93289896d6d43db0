"""A hub rendered for a real cloud (render/transit.py, render/customer_gateway.py): every Terraform name
is one the providers document (tests/unit/terraform_names.json, with its sources: no terraform binary
or provider schema runs here), the customer gateway's files are the lab's byte for byte once Terraform
fills in AWS's addresses, and the pre-shared keys appear only in the one 0600 file."""

from __future__ import annotations

import json
import re
import shutil
import stat
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from crossmesh import nft
from crossmesh.cli.main import app
from crossmesh.plan import vpngw
from crossmesh.render import bgp, customer_gateway, ipsec, transit, tree
from crossmesh.workspace import Compiled, compile_mesh

MESH = Path(__file__).parents[1] / "meshes" / "hybrid-tgw"
NAMES = json.loads((Path(__file__).parent / "terraform_names.json").read_text())
REFERENCE = re.compile(r"\b((?:data\.)?[a-z0-9]+_[a-z0-9_]+)\.([A-Za-z_][A-Za-z0-9_]*)\.([a-z0-9_]+)")


def compiled_copy(tmp: Path, edit: Any = None) -> Compiled:
    folder = tmp / "m"
    shutil.copytree(MESH, folder)
    if edit is not None:
        path = folder / "mesh.yaml"
        doc = yaml.safe_load(path.read_text())
        edit(doc["spec"])
        path.write_text(yaml.safe_dump(doc))
    return compile_mesh(folder / "mesh.yaml", folder / ".crossmesh")


def hub_files(compiled: Compiled) -> dict[str, str]:
    return {rel: f.content for rel, f in tree.hubs(compiled.plan, compiled.tunnel_psks()).items()}


def modules(files: dict[str, str]) -> dict[str, Any]:
    return {rel: json.loads(text) for rel, text in files.items() if rel.endswith(".tf.json")}


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Compiled:
    return compiled_copy(tmp_path_factory.mktemp("seed"))


def check_names(doc: dict[str, Any]) -> list[str]:
    """Every resource and data-source type, argument and referenced attribute against the reference."""
    wrong = []
    meta = set(NAMES["meta_arguments"]["names"])
    blocks = [("resource", doc.get("resource", {}))]
    blocks += [("data", c["data"]) for c in doc.get("check", {}).values()]
    for kind, by_type in blocks:
        for rtype, labelled in by_type.items():
            known = NAMES[kind].get(rtype)
            if known is None:
                wrong.append(f"{kind} type {rtype}")
                continue
            for label, body in labelled.items():
                wrong += [f"{rtype}.{label}: argument {a}" for a in body if a not in set(known["arguments"]) | meta]
    for text in strings(doc):
        for rtype, _label, attr in REFERENCE.findall(text):
            kind, name = ("data", rtype[5:]) if rtype.startswith("data.") else ("resource", rtype)
            if name in NAMES[kind]:
                known = NAMES[kind][name]
                if attr not in set(known["attributes"]) | set(known["arguments"]):
                    wrong.append(f"{rtype}: attribute {attr}")
            elif kind == "resource" and rtype not in ("path.module", "each.value") and not rtype.startswith("var"):
                wrong.append(f"reference to unknown type {rtype}")
    return wrong


def test_every_terraform_name_is_a_documented_one(seed: Compiled, tmp_path: Path) -> None:
    static = compiled_copy(
        tmp_path / "static", lambda s: s["vpnConnections"][0].update(routing="static", staticRoutes=["10.0.1.0/24"])
    )
    default = compiled_copy(tmp_path / "default", lambda s: s["hubs"][0].pop("routeTables"))
    for compiled in (seed, static, default):
        docs = modules(hub_files(compiled))
        assert set(docs) == {"hubs/tgw/transit.tf.json", "hubs/tgw/customer-gateways.tf.json"}
        for rel, doc in docs.items():
            assert check_names(doc) == [], rel
    values = NAMES["values"]
    transit_doc = modules(hub_files(seed))["hubs/tgw/transit.tf.json"]
    tgw = transit_doc["resource"]["aws_ec2_transit_gateway"]["tgw"]
    for key in ("default_route_table_association", "default_route_table_propagation", "vpn_ecmp_support"):
        assert tgw[key] in values[f"aws_ec2_transit_gateway.{key}"]["allowed"]
    vpn = transit_doc["resource"]["aws_vpn_connection"]["openstack_vpn"]
    assert set(vpn["tunnel1_ike_versions"]) <= set(values["aws_vpn_connection.tunnelN_ike_versions"]["allowed"])
    # The checker itself: a misspelt argument and an unknown attribute are caught.
    bad = {
        "resource": {
            "aws_vpn_connection": {"x": {"tunnel1_inside_cidrs": "", "type": "${aws_vpn_connection.x.tunnel1_addr}"}}
        }
    }
    assert check_names(bad) == [
        "aws_vpn_connection.x: argument tunnel1_inside_cidrs",
        "aws_vpn_connection: attribute tunnel1_addr",
    ]


def test_seed_001_transit_gateway_as_planned(seed: Compiled) -> None:
    res = modules(hub_files(seed))["hubs/tgw/transit.tf.json"]["resource"]
    tgw = res["aws_ec2_transit_gateway"]["tgw"]
    assert (tgw["amazon_side_asn"], tgw["default_route_table_association"]) == (64512, "disable")
    cgw = res["aws_customer_gateway"]["openstack_vpn"]
    assert (cgw["bgp_asn"], cgw["ip_address"], cgw["type"]) == ("65000", "198.51.100.162", "ipsec.1")
    vpn = res["aws_vpn_connection"]["openstack_vpn"]
    assert vpn["transit_gateway_id"] == "${aws_ec2_transit_gateway.tgw.id}" and vpn["static_routes_only"] is False
    assert (vpn["tunnel1_inside_cidr"], vpn["tunnel2_inside_cidr"]) == ("169.254.10.0/30", "169.254.20.0/30")
    assert vpn["tunnel1_phase1_encryption_algorithms"] == ["AES256-GCM-16"] and vpn[
        "tunnel1_phase2_dh_group_numbers"
    ] == [20]
    assert vpn["tunnel2_preshared_key"] == "${var.openstack_vpn_tunnel2_psk}"
    attach = "${aws_vpn_connection.openstack_vpn.transit_gateway_attachment_id}"
    assert {
        a["transit_gateway_attachment_id"] for a in res["aws_ec2_transit_gateway_route_table_association"].values()
    } == {
        "${aws_ec2_transit_gateway_vpc_attachment.aws.id}",
        attach,
    }
    (route,) = res["aws_route"].values()  # seed 001: 10.0.1.0/24 → Transit Gateway in the VPC's tables
    assert (route["destination_cidr_block"], route["transit_gateway_id"]) == (
        "10.0.1.0/24",
        "${aws_ec2_transit_gateway.tgw.id}",
    )
    assert "aws_ec2_transit_gateway_route" not in res  # all propagated (BGP)


def test_a_static_connection_gets_static_transit_gateway_routes(tmp_path: Path) -> None:
    static = compiled_copy(
        tmp_path, lambda s: s["vpnConnections"][0].update(routing="static", staticRoutes=["10.0.1.0/24"])
    )
    res = modules(hub_files(static))["hubs/tgw/transit.tf.json"]["resource"]
    assert res["aws_vpn_connection"]["openstack_vpn"]["static_routes_only"] is True
    (route,) = res["aws_ec2_transit_gateway_route"].values()
    assert route["destination_cidr_block"] == "10.0.1.0/24"
    assert route["transit_gateway_attachment_id"] == "${aws_vpn_connection.openstack_vpn.transit_gateway_attachment_id}"
    assert list(res["aws_ec2_transit_gateway_route_table_propagation"]) == [
        "main_aws"
    ]  # a static VPN propagates nothing


def test_without_route_tables_aws_default_table_does_it(tmp_path: Path) -> None:
    default = compiled_copy(tmp_path, lambda s: s["hubs"][0].pop("routeTables"))
    res = modules(hub_files(default))["hubs/tgw/transit.tf.json"]["resource"]
    assert res["aws_ec2_transit_gateway"]["tgw"]["default_route_table_propagation"] == "enable"
    assert not any(k.startswith("aws_ec2_transit_gateway_route") for k in res)
    assert "transit_gateway_default_route_table_association" not in res["aws_ec2_transit_gateway_vpc_attachment"]["aws"]


def test_the_customer_gateway_files_are_the_lab_s_once_filled(seed: Compiled) -> None:
    """Fill each template as Terraform's templatefile would, with the lab's stand-ins for AWS's outside
    addresses and the keys, and compare with what drivers/lab/vpn.py writes for the same plan."""
    plan, psks = seed.plan, seed.tunnel_psks()
    outside = {k: IPv4Address(f"203.0.113.{10 + i}") for i, k in enumerate(vpngw.tunnel_keys(plan))}
    spec = vpngw.customer_gateways(plan, outside, psks)["openstack"]
    root = customer_gateway.GATEWAY_ROOT
    live = ipsec.Liveness()
    lab: dict[str, str] = {}
    for index, tunnel in enumerate(spec.tunnels):  # as drivers/lab/vpn.py's start() and Charon.start()
        instance = ipsec.CharonInstance(index, PurePosixPath(root / f"charon-{index}"), live)
        lab[f"charon-{index}/strongswan.conf"] = ipsec.strongswan_conf(instance)
        lab[f"charon-{index}/swanctl.conf"] = ipsec.swanctl_conf(tunnel, instance.liveness)
    assert spec.router is not None
    lab["bird/bird.conf"] = bgp.bird_conf(spec.router, log=PurePosixPath(root / "bird" / "bird.log"))
    table = ipsec.port_map(spec.tunnels, "cm_vpn")
    assert table is not None
    lab["port-map.nft"] = nft.render(table)

    files = hub_files(seed)
    values = customer_gateway.address_values(outside) | {transit.psk_variable(c, i): k for (c, i), k in psks.items()}
    filled = {}
    for rel in lab:
        template = files[f"hubs/tgw/templates/openstack/{rel}.tftpl"]
        filled[rel] = customer_gateway.fill(template, values)
    assert filled == lab
    assert "${openstack_vpn_tunnel1_address}" in files["hubs/tgw/templates/openstack/charon-0/swanctl.conf.tftpl"]
    # Terraform writes each of them, 0600, from its template, the keys' files as sensitive ones.
    cgw = json.loads(files["hubs/tgw/customer-gateways.tf.json"])["resource"]
    written = {**cgw["local_file"], **cgw["local_sensitive_file"]}
    assert {b["filename"].removeprefix("${path.module}/customer-gateway/openstack/") for b in written.values()} == set(
        lab
    )
    assert {b["file_permission"] for b in written.values()} == {"0600"}
    assert {b["filename"].rsplit("/", 1)[1] for b in cgw["local_sensitive_file"].values()} == {"swanctl.conf"}


def test_ipsec_reaches_the_customer_gateway_from_the_tunnel_endpoints_only(seed: Compiled) -> None:
    cgw = modules(hub_files(seed))["hubs/tgw/customer-gateways.tf.json"]["resource"]
    rules = cgw["openstack_networking_secgroup_rule_v2"]
    seen = {(r["protocol"], r.get("port_range_min"), r["remote_ip_prefix"]) for r in rules.values()}
    expected = {
        (proto, port, f"${{aws_vpn_connection.openstack_vpn.tunnel{i}_address}}/32")
        for i in (1, 2)
        for proto, port in (("udp", 500), ("udp", 4500), ("50", None))
    }
    assert seen == expected and all(r["direction"] == "ingress" for r in rules.values())


def test_the_keys_are_only_in_the_0600_variables_file(seed: Compiled, tmp_path: Path) -> None:
    keys = set(seed.tunnel_psks().values())
    out = tmp_path / "out"
    folder = Path(seed.loaded.path).parent
    result = CliRunner().invoke(
        app, ["render", str(folder / "mesh.yaml"), "-d", str(out), "--state", str(folder / ".crossmesh")]
    )
    assert result.exit_code == 0, result.output
    holding = sorted(
        p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and any(k in p.read_text() for k in keys)
    )
    assert holding == ["hubs/tgw/psk.auto.tfvars.json"]
    path = out / holding[0]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert set(json.loads(path.read_text()).values()) == keys
    variables = json.loads((out / "hubs/tgw/transit.tf.json").read_text())["variable"]
    assert all(variables[name]["sensitive"] is True for name in json.loads(path.read_text()))
