"""A hub's AWS side as a Terraform/OpenTofu JSON root module: `hubs/<hub>/transit.tf.json`.

What the plan decides becomes resources; what the mesh file cannot know — the VPC, the subnets the
transit gateway's attachment uses, the VPC's route tables — is a `variable` saying what to pass, as
in `sites/<site>/prerequisites.tf.json` (render/providers.py), whose layout, provider pinning and
naming this module follows. Per hub:

- the transit gateway, with the plan's Amazon-side ASN. When the mesh file gives route tables, AWS's
  default association and propagation are turned off and every table, association, propagation and
  static route is a resource, so the gateway routes exactly as the plan does; without them the plan's
  one table is AWS's default table ("How transit gateways work": every attachment associated with it
  and propagating to it), and the defaults stay on. ECMP across VPN tunnels stays off: tunnel 2 is a
  standby (plan/vpngw.py), not a second path;
- the VPC attachment of the hub's site, and per VPN connection a customer gateway (`ipsec.1`, its
  ASN and public address) and the connection with each tunnel's inside CIDR, key, IKE version and
  phase 1/2 proposals and lifetimes from the plan. The connection's attachment is AWS's to make; its
  id is `aws_vpn_connection.X.transit_gateway_attachment_id`;
- a static connection's prefixes as static transit gateway routes: AWS propagates only BGP-learned
  routes from a VPN attachment (Transit Gateway guide, "Static and propagated routes"), and
  `aws_vpn_connection_route` is for virtual private gateways only;
- the VPC route-table entries to the transit gateway (`vpngw.vpc_routes`, what the lab's VPC router
  holds), after the VPC attachment exists (a route to a gateway with no attachment in the VPC fails).

Pre-shared keys are `sensitive` input variables, filled by `psk.auto.tfvars.json` (render/tree.py
writes it 0600 beside the module, from the state directory; Terraform loads `*.auto.tfvars.json` by
itself). Not `file()` of the state directory's key: that path belongs to the machine that rendered,
not to the one that applies, and would tie the module to it. Not the keys in the module itself:
this file is meant to be shared and reviewed, and `sensitive` keeps the keys out of plan output. AWS
keeps them (EC2 returns them to whoever may describe the connection) and so does Terraform's state:
protect the state as you would the keys.
"""

from __future__ import annotations

import json
from typing import Any

from crossmesh.model.plan import HubPlan, Plan, VpnConnectionPlan
from crossmesh.plan import vpngw
from crossmesh.plan.hubs import DEFAULT_ROUTE_TABLE
from crossmesh.render.providers import PROVIDERS, ident

LOCAL_PROVIDER = ("hashicorp/local", ">= 2.2")  # local_sensitive_file: 2.2.0 and later
PSK_FILE = "psk.auto.tfvars.json"


def psk_variable(connection: str, index: int) -> str:
    return ident(f"{connection}_tunnel{index}_psk")


def is_aws_default(hub: HubPlan) -> bool:
    """Whether the plan's route tables are AWS's default one: a single table every attachment is
    associated with and propagates to, with no static route (hubs.route_tables makes it so when the
    mesh file gives none; a file that writes the same table means the same)."""
    if len(hub.route_tables) != 1:
        return False
    t = hub.route_tables[0]
    names = {a.name for a in hub.attachments}
    return (
        t.name == DEFAULT_ROUTE_TABLE
        and set(t.associations) == set(t.propagations) == names
        and all(r.propagated for r in t.routes)
    )


def _tags(plan: Plan, hub: HubPlan, name: str) -> dict[str, str]:
    return {"Name": f"crossmesh-{plan.mesh}-{name}", "crossmesh.io/mesh": plan.mesh, "crossmesh.io/hub": hub.name}


def attachment_id(hub: HubPlan, attachment: str) -> str:
    """The Terraform expression of an attachment's id: the VPC attachment or a VPN connection's."""
    if attachment == hub.site:
        return f"${{aws_ec2_transit_gateway_vpc_attachment.{ident(hub.site)}.id}}"
    return f"${{aws_vpn_connection.{ident(attachment)}.transit_gateway_attachment_id}}"


def _tunnel_options(conn: VpnConnectionPlan) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for t in conn.tunnels:
        n = f"tunnel{t.index}"
        out |= {
            f"{n}_inside_cidr": str(t.inside_cidr),
            f"{n}_preshared_key": f"${{var.{psk_variable(conn.name, t.index)}}}",
            f"{n}_ike_versions": [t.ike_version],
            f"{n}_phase1_encryption_algorithms": list(t.phase1.encryption),
            f"{n}_phase1_integrity_algorithms": list(t.phase1.integrity),
            f"{n}_phase1_dh_group_numbers": list(t.phase1.dh_groups),
            f"{n}_phase1_lifetime_seconds": t.phase1.lifetime_seconds,
            f"{n}_phase2_encryption_algorithms": list(t.phase2.encryption),
            f"{n}_phase2_integrity_algorithms": list(t.phase2.integrity),
            f"{n}_phase2_dh_group_numbers": list(t.phase2.dh_groups),
            f"{n}_phase2_lifetime_seconds": t.phase2.lifetime_seconds,
        }
    return out


def _connections(plan: Plan, hub: HubPlan, conns: list[VpnConnectionPlan]) -> dict[str, Any]:
    tgw = f"${{aws_ec2_transit_gateway.{ident(hub.name)}.id}}"
    return {
        "aws_customer_gateway": {
            ident(c.name): {
                "bgp_asn": str(c.customer_asn),
                "ip_address": str(c.customer_address),
                "type": "ipsec.1",
                "tags": _tags(plan, hub, f"{c.name}-cgw") | {"crossmesh.io/site": c.site},
            }
            for c in conns
        },
        "aws_vpn_connection": {
            ident(c.name): {
                "customer_gateway_id": f"${{aws_customer_gateway.{ident(c.name)}.id}}",
                "transit_gateway_id": tgw,
                "type": "ipsec.1",
                "static_routes_only": c.routing == "static",
                **_tunnel_options(c),
                "tags": _tags(plan, hub, c.name) | {"crossmesh.io/site": c.site},
            }
            for c in conns
        },
    }


def _route_tables(plan: Plan, hub: HubPlan, static_conns: set[str]) -> dict[str, Any]:
    """Tables, associations, propagations and static routes: every one the plan has, and no other."""
    tables: dict[str, Any] = {}
    assoc: dict[str, Any] = {}
    prop: dict[str, Any] = {}
    routes: dict[str, Any] = {}
    for t in hub.route_tables:
        table = f"${{aws_ec2_transit_gateway_route_table.{ident(t.name)}.id}}"
        tables[ident(t.name)] = {
            "transit_gateway_id": f"${{aws_ec2_transit_gateway.{ident(hub.name)}.id}}",
            "tags": _tags(plan, hub, f"{hub.name}-{t.name}"),
        }
        for a in t.associations:
            assoc[ident(f"{t.name}-{a}")] = {
                "transit_gateway_attachment_id": attachment_id(hub, a),
                "transit_gateway_route_table_id": table,
            }
        for a in t.propagations:
            if a not in static_conns:  # a static VPN attachment propagates nothing: its routes are below
                prop[ident(f"{t.name}-{a}")] = {
                    "transit_gateway_attachment_id": attachment_id(hub, a),
                    "transit_gateway_route_table_id": table,
                }
        for r in t.routes:
            if r.propagated and r.attachment not in static_conns:
                continue
            routes[ident(f"{t.name}-{r.destination.network_address}-{r.destination.prefixlen}")] = {
                "destination_cidr_block": str(r.destination),
                "transit_gateway_attachment_id": attachment_id(hub, r.attachment),
                "transit_gateway_route_table_id": table,
            }
    return {
        "aws_ec2_transit_gateway_route_table": tables,
        "aws_ec2_transit_gateway_route_table_association": assoc,
        "aws_ec2_transit_gateway_route_table_propagation": prop,
        "aws_ec2_transit_gateway_route": routes,
    }


def module(plan: Plan, hub: HubPlan) -> dict[str, Any]:
    """The AWS resources, variables and outputs of `hub` as Terraform JSON data (no `terraform` block:
    `render` adds the one for the whole hub folder)."""
    conns = [c for c in plan.vpn if c.hub == hub.name]
    default = is_aws_default(hub)
    site = next(s for s in plan.sites if s.name == hub.site)
    variables: dict[str, Any] = {
        "vpc_id": {"type": "string", "description": f"The VPC (vpc-...) of site {site.name} ({site.network})"},
        "subnet_ids": {
            "type": "list(string)",
            "description": f"Subnets (subnet-...) of site {site.name}'s VPC for the transit gateway's attachment: "
            "one in each Availability Zone whose nodes it must reach (AWS puts an interface in each)",
        },
        "route_table_ids": {
            "type": "list(string)",
            "description": f"The route tables (rtb-...) of the subnets of site {site.name}'s nodes: each gets a "
            "route to the transit gateway for every network it carries",
        },
    }
    for c in conns:
        for t in c.tunnels:
            variables[psk_variable(c.name, t.index)] = {
                "type": "string",
                "sensitive": True,
                "description": f"Pre-shared key of tunnel {t.index} of VPN connection {c.name} ({t.psk}; "
                f"{PSK_FILE} beside this file holds it)",
            }
    switch = "enable" if default else "disable"
    vpc_attachment: dict[str, Any] = {
        "transit_gateway_id": f"${{aws_ec2_transit_gateway.{ident(hub.name)}.id}}",
        "vpc_id": "${var.vpc_id}",
        "subnet_ids": "${var.subnet_ids}",
        "tags": _tags(plan, hub, f"{hub.name}-{site.name}"),
    }
    if not default:
        vpc_attachment |= {
            "transit_gateway_default_route_table_association": False,
            "transit_gateway_default_route_table_propagation": False,
        }
    resources: dict[str, Any] = {
        "aws_ec2_transit_gateway": {
            ident(hub.name): {
                "amazon_side_asn": hub.amazon_asn,
                "description": f"crossmesh {plan.mesh}: hub {hub.name}",
                "default_route_table_association": switch,
                "default_route_table_propagation": switch,
                "vpn_ecmp_support": "disable",
                "tags": _tags(plan, hub, hub.name),
            }
        },
        "aws_ec2_transit_gateway_vpc_attachment": {ident(site.name): vpc_attachment},
        **_connections(plan, hub, conns),
    }
    if not default:
        resources |= _route_tables(plan, hub, {c.name for c in conns if c.routing == "static"})
    resources["aws_route"] = {
        ident(f"to-{n.network_address}-{n.prefixlen}"): {
            "for_each": "${toset(var.route_table_ids)}",
            "route_table_id": "${each.value}",
            "destination_cidr_block": str(n),
            "transit_gateway_id": f"${{aws_ec2_transit_gateway.{ident(hub.name)}.id}}",
            "depends_on": [f"aws_ec2_transit_gateway_vpc_attachment.{ident(site.name)}"],
        }
        for n in vpngw.vpc_routes(hub)
    }
    outputs = {
        ident(f"{c.name}_tunnel{i}_address"): {
            "description": f"AWS's outside address of tunnel {i} of {c.name} (the customer gateway's peer)",
            "value": f"${{aws_vpn_connection.{ident(c.name)}.tunnel{i}_address}}",
        }
        for c in conns
        for i in (t.index for t in c.tunnels)
    }
    return {
        "variable": variables,
        "resource": {kind: blocks for kind, blocks in resources.items() if blocks},
        "output": outputs,
    }


def terraform_block(providers: dict[str, tuple[str, str]]) -> dict[str, Any]:
    return {
        "required_version": ">= 1.5",
        "required_providers": {
            name: {"source": source, "version": version} for name, (source, version) in sorted(providers.items())
        },
    }


def dumps(doc: dict[str, Any]) -> str:
    """JSON text, keys sorted: the same plan gives the same bytes."""
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


AWS_PROVIDER = PROVIDERS["aws"]
