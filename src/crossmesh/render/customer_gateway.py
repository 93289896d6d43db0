"""The customer gateway's own files (seed 001: the OpenStack VPN gateway behind r1's `ipsec0`) as
Terraform templates that Terraform fills in, and the gateway site's security-group rules.

Why templates. AWS picks each tunnel's outside address when the VPN connection is created, so
`render` cannot know them, and swanctl.conf names them (the peer, its IKE identity, the key's
owner), as does the port map that puts the second charon on UDP 500/4500. So the files are made by
the same derivation the lab runs — `vpngw.customer_gateways(plan, outside, psks)`, then
render/ipsec.py and render/bgp.py exactly as drivers/lab/vpn.py calls them — with stand-in outside
addresses (from 240.0.0.0/4, reserved: never a real peer) and stand-in keys, and each stand-in is
then replaced by a `templatefile` variable: `${<connection>_tunnel<N>_address}` is
`aws_vpn_connection.X.tunnelN_address`, `${<connection>_tunnel<N>_psk}` the key's sensitive input
variable. Nothing else differs from the lab's files, byte for byte (tests/unit/test_render_transit.py
fills a template with the lab's stand-ins and compares). The templates hold no key, so render writes
them 0644; Terraform writes the filled files 0600 in 0700 folders under
`hubs/<hub>/customer-gateway/<site>/` (`local_sensitive_file` for swanctl.conf, which holds the key,
so `terraform plan` never prints it), to be copied to GATEWAY_ROOT on the gateway (docs/hybrid.md).

Security-group rules, OpenStack customer sites: IKE (UDP 500), NAT-T (UDP 4500) and ESP (IP
protocol 50: AWS speaks plain ESP when it sees no NAT) from each tunnel's outside address only, in a
group added to the gateway instance's port; and a check that the port lets the gateway forward the
hub's networks (allowed address pairs), as the site prerequisites check their gateways'.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import PurePosixPath
from typing import Any

from crossmesh import nft
from crossmesh.model.plan import Plan
from crossmesh.plan import vpngw
from crossmesh.render import bgp, ipsec
from crossmesh.render.providers import ident, openstack_pairs
from crossmesh.render.transit import psk_variable

GATEWAY_ROOT = PurePosixPath("/var/lib/crossmesh/vpn")
"""Where the files go on the gateway: charon-<k>/ per tunnel and bird/, as the lab's folder."""
STAND_IN_NET = IPv4Network("240.0.0.0/4")
IKE_PORT, NATT_PORT, ESP_PROTOCOL = 500, 4500, "50"


@dataclass(frozen=True, slots=True)
class GatewayFile:
    """A file of the gateway as a template: `variables` maps each `${name}` it uses to the Terraform
    expression that fills it; `secret` when one of them is a pre-shared key."""

    template: str
    variables: dict[str, str]
    secret: bool


def address_variable(connection: str, index: int) -> str:
    return ident(f"{connection}_tunnel{index}_address")


def gateway_files(spec: vpngw.GatewaySpec, root: PurePosixPath = GATEWAY_ROOT) -> dict[str, str]:
    """The gateway's files under `root` (relative path → text), made as drivers/lab/vpn.py makes them."""
    live = ipsec.Liveness()
    out = {}
    for k, tunnel in enumerate(spec.tunnels):
        instance = ipsec.CharonInstance(k, root / f"charon-{k}", live)
        out[f"charon-{k}/strongswan.conf"] = ipsec.strongswan_conf(instance)
        out[f"charon-{k}/swanctl.conf"] = ipsec.swanctl_conf(tunnel, instance.liveness)
    if spec.router is not None:
        out["bird/bird.conf"] = bgp.bird_conf(spec.router, log=root / "bird" / "bird.log")
    table = ipsec.port_map(spec.tunnels)
    if table is not None:
        out["port-map.nft"] = nft.render(table)
    return out


def _escape(text: str) -> str:
    """Terraform's template syntax taken literally: `${` and `%{` are written `$${` and `%%{`."""
    return text.replace("${", "$${").replace("%{", "%%{")


def _sites(plan: Plan, hub: str) -> list[str]:
    """The customer sites whose every connection goes into `hub`: their gateway is this module's."""
    sites = sorted({c.site for c in plan.vpn if c.hub == hub})
    return [s for s in sites if all(c.hub == hub for c in plan.vpn if c.site == s)]


def templates(plan: Plan, hub: str) -> dict[str, dict[str, GatewayFile]]:
    """Each customer site of `hub`: its gateway's files as templates, by path under GATEWAY_ROOT."""
    keys = vpngw.tunnel_keys(plan)
    if any(c.customer_address in STAND_IN_NET for c in plan.vpn):
        raise ValueError(f"a customer gateway's address is in {STAND_IN_NET}, which render keeps for stand-ins")
    stand_in = {key: STAND_IN_NET.network_address + 1 + i for i, key in enumerate(keys)}
    psk_stand_in = {key: f"CROSSMESHSTANDINKEY{i}X" for i, key in enumerate(keys)}
    gateways = vpngw.customer_gateways(plan, stand_in, psk_stand_in)
    out = {}
    for site in _sites(plan, hub):
        files = {}
        for rel, text in gateway_files(gateways[site]).items():
            template, used, secret = _escape(text), {}, False
            for (conn, index), address in stand_in.items():
                pattern = rf"(?<![0-9.]){re.escape(str(address))}(?![0-9])"
                name = address_variable(conn, index)
                template, n = re.subn(pattern, f"${{{name}}}", template)
                if n:
                    used[name] = f"aws_vpn_connection.{ident(conn)}.tunnel{index}_address"
                key_name = psk_variable(conn, index)
                if psk_stand_in[conn, index] in template:
                    template = template.replace(psk_stand_in[conn, index], f"${{{key_name}}}")
                    used[key_name] = f"var.{key_name}"
                    secret = True
            files[rel] = GatewayFile(template, dict(sorted(used.items())), secret)
        out[site] = files
    return out


def fill(template: str, values: Mapping[str, str]) -> str:
    """What `templatefile` makes of a template this module wrote (only `${name}` and the two escapes
    occur): for tests and for anyone filling one by hand."""
    parts = re.split(r"(\$\$\{|%%\{|\$\{[A-Za-z_][A-Za-z0-9_-]*\})", template)
    out = []
    for p in parts:
        if p in ("$${", "%%{"):
            out.append(p[1:])
        elif p.startswith("${"):
            out.append(values[p[2:-1]])
        else:
            out.append(p)
    return "".join(out)


def _expression(f: GatewayFile, template_path: str) -> str:
    args = ", ".join(f"{k} = {v}" for k, v in f.variables.items())
    return f'${{templatefile("${{path.module}}/{template_path}", {{{args}}})}}'


def module(plan: Plan, hub: str, gateway_templates: Mapping[str, Mapping[str, GatewayFile]]) -> dict[str, Any]:
    """The Terraform of `hub`'s customer sites: the files Terraform fills in, and for OpenStack sites
    the gateway's security group."""
    sensitive: dict[str, Any] = {}
    plain: dict[str, Any] = {}
    for site, files in gateway_templates.items():
        for rel, f in files.items():
            block = {
                "filename": f"${{path.module}}/customer-gateway/{site}/{rel}",
                "content": _expression(f, template_path(site, rel)),
                "file_permission": "0600",
                "directory_permission": "0700",
            }
            (sensitive if f.secret else plain)[ident(f"{site}-{rel}")] = block
    resources: dict[str, Any] = {"local_sensitive_file": sensitive, "local_file": plain}
    variables: dict[str, Any] = {}
    checks: dict[str, Any] = {}
    providers = {s.name: s.provider for s in plan.sites}
    for site in gateway_templates:
        if providers[site] == "openstack":
            _openstack(plan, hub, site, variables, resources, checks)
    doc: dict[str, Any] = {"resource": {k: v for k, v in sorted(resources.items()) if v}}
    if variables:
        doc["variable"] = variables
    if checks:
        doc["check"] = checks
    return doc


def template_path(site: str, rel: str) -> str:
    return f"templates/{site}/{rel}.tftpl"


def _openstack(  # noqa: PLR0913 - the module's parts it adds to
    plan: Plan,
    hub: str,
    site: str,
    variables: dict[str, Any],
    resources: dict[str, Any],
    checks: dict[str, Any],
) -> None:
    conns = [c for c in plan.vpn if c.site == site and c.hub == hub]
    port = ident(f"{site}_gateway_port_id")
    variables[port] = {
        "type": "string",
        "description": f"The Neutron port (UUID) of site {site}'s customer gateway instance, the one its "
        f"public address {', '.join(sorted({str(c.customer_address) for c in conns}))} leads to",
    }
    group = ident(f"{site}-vpn")
    resources["openstack_networking_secgroup_v2"] = {
        group: {
            "name": f"crossmesh-{plan.mesh}-{site}-vpn",
            "description": f"crossmesh {plan.mesh}: IPsec from hub {hub}'s tunnel endpoints to site {site}'s "
            "customer gateway",
        }
    }
    rules = {}
    for c in conns:
        for t in c.tunnels:
            source = f"${{aws_vpn_connection.{ident(c.name)}.tunnel{t.index}_address}}/32"
            for what, protocol, port_number in (
                ("ike", "udp", IKE_PORT),
                ("nat-t", "udp", NATT_PORT),
                ("esp", ESP_PROTOCOL, None),
            ):
                rule: dict[str, Any] = {
                    "direction": "ingress",
                    "ethertype": "IPv4",
                    "protocol": protocol,
                    "remote_ip_prefix": source,
                    "security_group_id": f"${{openstack_networking_secgroup_v2.{group}.id}}",
                    "description": f"{what.upper()} from tunnel {t.index} of {c.name} (AWS's outside address)",
                }
                if port_number is not None:
                    rule |= {"port_range_min": port_number, "port_range_max": port_number}
                rules[ident(f"{c.name}-tunnel{t.index}-{what}")] = rule
    resources["openstack_networking_secgroup_rule_v2"] = rules
    resources["openstack_networking_port_secgroup_associate_v2"] = {
        ident(f"{site}-gateway"): {
            "port_id": f"${{var.{port}}}",
            "security_group_ids": [f"${{openstack_networking_secgroup_v2.{group}.id}}"],
            "enforce": False,  # add to the port's groups, do not replace them
        }
    }
    carries = tuple(sorted({p for c in conns for p in c.hub_prefixes}))
    if carries:
        checks[ident(f"{site}-gateway-forwards")] = openstack_pairs(
            f"{site}-gateway",
            port,
            carries,
            f"the customer gateway forwards packets from hub {hub}'s networks onto site {site}'s network",
            port_ref=f"${{var.{port}}}",
        )


def address_values(outside: Mapping[vpngw.TunnelKey, IPv4Address]) -> dict[str, str]:
    """`templatefile`'s address variables for given outside addresses (the lab's, in tests)."""
    return {address_variable(conn, index): str(a) for (conn, index), a in outside.items()}
