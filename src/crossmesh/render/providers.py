"""Each cloud site's prerequisites (plan/prerequisites.py) as a Terraform/OpenTofu JSON file:
`sites/<site>/prerequisites.tf.json`, one root module per site.

Built as data and serialised (no templates). What the mesh file cannot know — the VPC, the network
interfaces, route tables, the resource group — is a `variable` with a description that says what to
pass, never a made-up value. Inbound rules and routes are resources the module owns: a security group
(AWS, OpenStack: attached to the nodes' interfaces in addition to theirs; an AWS group made by Terraform
has no egress rule, so the nodes keep their own groups' egress), rules in the NSG the nodes already
have (Azure: an interface or subnet takes one NSG only), firewall rules scoped to the nodes' addresses
(GCP). Forwarding is an attribute of an instance or interface the user's own code manages (GCP's
`can_ip_forward` can only be set when an instance is created), so it is not taken over here: a
`check` block reads it and warns on `plan` when it is not as the plan needs, naming what to set.
Bare-metal sites get no file.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

from crossmesh.plan.prerequisites import ANYWHERE, SitePrerequisites, Targets

PROVIDERS = {
    "aws": ("hashicorp/aws", ">= 5.0"),
    "azure": ("hashicorp/azurerm", ">= 4.0"),  # 4.0 renamed enable_ip_forwarding to ip_forwarding_enabled
    "gcp": ("hashicorp/google", ">= 5.0"),
    "openstack": ("terraform-provider-openstack/openstack", ">= 1.54"),
}
_PROVIDER_NAMES = {"aws": "aws", "azure": "azurerm", "gcp": "google", "openstack": "openstack"}
NSG_PRIORITY_BASE = 1000


def render(prereq: SitePrerequisites) -> str | None:
    """The site's module as JSON text (keys sorted: the same plan gives the same bytes), or None
    for a provider without one (baremetal)."""
    build = _BUILDERS.get(prereq.site.provider)
    if build is None:
        return None
    doc = build(prereq)
    source, version = PROVIDERS[prereq.site.provider]
    name = _PROVIDER_NAMES[prereq.site.provider]
    doc["terraform"] = {
        "required_version": ">= 1.5",
        "required_providers": {name: {"source": source, "version": version}},
    }
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


# common ---------------------------------------------------------------------------------------


def ident(text: str) -> str:
    """A Terraform block label: letters, digits and '_' (HCL allows '-' too, but it reads as a minus to
    people), starting with a letter or '_'."""
    label = re.sub(r"[^A-Za-z0-9_]", "_", text)
    return label if label[:1].isalpha() or label[:1] == "_" else f"_{label}"


def _string_var(description: str) -> dict[str, Any]:
    return {"type": "string", "description": description}


def _node_var(variables: dict[str, Any], name: str, what: str, names: list[str]) -> str:
    """Declare `name`, a map from node name to `what` that must name every node listed; return `name`."""
    variables[name] = {
        "type": "map(string)",
        "description": f"{what}, by node name: {', '.join(names)}",
        "validation": [
            {
                "condition": f"${{length(setsubtract({json.dumps(names)}, keys(var.{name}))) == 0}}",
                "error_message": f"Give one entry for each of: {', '.join(names)}.",
            }
        ],
    }
    return name


def _groups(p: SitePrerequisites) -> dict[Targets, list[str]]:
    """The node groups the rules protect, with their members, in a stable order."""
    used = sorted({r.targets for r in p.inbound}, key=lambda t: t.value)
    return {t: [name for name, _ in p.members(t)] for t in used if p.members(t)}


def _site_name(p: SitePrerequisites, *parts: str, limit: int = 63) -> str:
    """A cloud-side name, lower case, within `limit` characters (cut, ending in a digest, past it)."""
    text = re.sub(r"[^a-z0-9-]", "-", "-".join(("crossmesh", p.mesh, p.site.name, *parts)).lower())
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{text[: limit - 9]}-{digest}"


def _forwarding_checks(  # noqa: PLR0913 - what differs between the providers
    p: SitePrerequisites,
    variables: dict[str, Any],
    variable: tuple[str, str],
    data: tuple[str, str, dict[str, str]],
    condition: str,
    advice: str,
) -> dict[str, Any]:
    """A check per forwarding node: `variable` (name, what) maps node names to what the data source
    `data` (type, lookup argument, other arguments) reads; `condition` tests it (`{data}` stands for the
    data source), `advice` says what to set (`{node}` for the node)."""
    if not p.forwarding:
        return {}
    name = _node_var(variables, *variable, [f.node for f in p.forwarding])
    data_type, lookup, extra = data
    checks = {}
    for f in p.forwarding:
        label = ident(f"{f.node}-forwarding")
        args = {lookup: f'${{var.{name}["{f.node}"]}}', **extra}
        checks[ident(f"{f.node}-forwards")] = _check(
            data_type,
            label,
            args,
            condition.format(data=f"data.{data_type}.{label}"),
            f"{advice.format(node=f.node)}: {f.reason}.",
        )
    return checks


def _check(data_type: str, label: str, args: dict[str, Any], condition: str, message: str) -> dict[str, Any]:
    """A check block with its own data source: on `plan` a failed assertion is a warning, not an error."""
    return {
        "data": {data_type: {label: args}},
        "assert": [{"condition": f"${{{condition}}}", "error_message": message}],
    }


# AWS ------------------------------------------------------------------------------------------

_AWS_TEXT = re.compile(r"[^A-Za-z0-9 ._\-:/()#,@\[\]+=&;{}!$*]")  # what EC2 accepts in a description


def _aws_text(text: str) -> str:
    return _AWS_TEXT.sub("", text)[:255]


def _aws(p: SitePrerequisites) -> dict[str, Any]:
    groups = _groups(p)
    variables: dict[str, Any] = {"vpc_id": _string_var(f"The VPC (vpc-...) of site {p.site.name} ({p.site.network})")}
    interfaced = sorted({n for names in groups.values() for n in names} | {e.node for e in p.routes})
    eni = (
        _node_var(variables, "network_interface_ids", "The primary network interface (eni-...)", interfaced)
        if interfaced
        else ""
    )
    resources: dict[str, Any] = {
        "aws_security_group": {
            t.value: {
                "name": _site_name(p, t.value),
                "description": _aws_text(f"crossmesh {p.mesh}: inbound to {t.description} of site {p.site.name}"),
                "vpc_id": "${var.vpc_id}",
                "tags": {"Name": _site_name(p, t.value), "crossmesh.io/mesh": p.mesh, "crossmesh.io/site": p.site.name},
            }
            for t in groups
        },
        "aws_vpc_security_group_ingress_rule": {
            ident(r.name): {
                "security_group_id": f"${{aws_security_group.{r.targets.value}.id}}",
                "cidr_ipv4": str(r.source),
                "ip_protocol": r.protocol.value,
                "from_port": r.port,
                "to_port": r.port,
                "description": _aws_text(r.reason),
            }
            for r in p.inbound
        },
        "aws_network_interface_sg_attachment": {
            ident(f"{name}-{t.value}"): {
                "security_group_id": f"${{aws_security_group.{t.value}.id}}",
                "network_interface_id": f'${{var.{eni}["{name}"]}}',
            }
            for t, names in groups.items()
            for name in names
        },
    }
    if p.routes:
        variables["route_table_ids"] = {
            "type": "list(string)",
            "description": f"The route tables (rtb-...) of the subnets of site {p.site.name}'s nodes",
        }
        resources["aws_route"] = {
            ident(f"to-{e.destination.network_address}-{e.destination.prefixlen}"): {
                "for_each": "${toset(var.route_table_ids)}",
                "route_table_id": "${each.value}",
                "destination_cidr_block": str(e.destination),
                "network_interface_id": f'${{var.{eni}["{e.node}"]}}',
            }
            for e in p.routes
        }
    checks = _forwarding_checks(
        p,
        variables,
        ("instance_ids", "The instance (i-...)"),
        ("aws_instance", "instance_id", {}),
        "!{data}.source_dest_check",
        "Set source_dest_check = false on the instance of {node}",
    )
    return _module(variables, resources, checks)


# Azure ----------------------------------------------------------------------------------------


def _azure(p: SitePrerequisites) -> dict[str, Any]:
    variables: dict[str, Any] = {
        "resource_group_name": _string_var(f"The resource group of site {p.site.name}'s network and its NSG"),
        "network_security_group_name": _string_var(
            f"The network security group of site {p.site.name}'s nodes (on their interfaces or subnet: Azure "
            "allows one per interface and subnet, so the rules go into it)"
        ),
        "priority_base": {
            "type": "number",
            "default": NSG_PRIORITY_BASE,
            "description": "The first NSG priority the rules take (one each, upwards); pick a free range",
        },
    }
    rules = {
        ident(r.name): {
            "name": r.name[:80],
            "priority": f"${{var.priority_base + {i}}}",
            "direction": "Inbound",
            "access": "Allow",
            "protocol": r.protocol.value.capitalize(),
            "source_port_range": "*",
            "destination_port_range": str(r.port),
            "source_address_prefix": "*" if r.source == ANYWHERE else str(r.source),
            "destination_address_prefixes": [str(a) for _, a in p.members(r.targets)],
            "resource_group_name": "${var.resource_group_name}",
            "network_security_group_name": "${var.network_security_group_name}",
            "description": r.reason[:140],
        }
        for i, r in enumerate(p.inbound)
    }
    resources: dict[str, Any] = {"azurerm_network_security_rule": rules}
    if p.routes:
        variables["route_table_name"] = _string_var(f"The route table of the subnets of site {p.site.name}'s nodes")
        resources["azurerm_route"] = {
            ident(f"to-{e.destination.network_address}-{e.destination.prefixlen}"): {
                "name": _site_name(p, "to", str(e.destination.network_address), str(e.destination.prefixlen), limit=80),
                "resource_group_name": "${var.resource_group_name}",
                "route_table_name": "${var.route_table_name}",
                "address_prefix": str(e.destination),
                "next_hop_type": "VirtualAppliance",
                "next_hop_in_ip_address": str(e.next_hop),
            }
            for e in p.routes
        }
    checks = _forwarding_checks(
        p,
        variables,
        ("network_interface_names", "The name of the network interface"),
        ("azurerm_network_interface", "name", {"resource_group_name": "${var.resource_group_name}"}),
        "{data}.ip_forwarding_enabled",
        "Set ip_forwarding_enabled = true on the network interface of {node}",
    )
    return {"provider": {"azurerm": {"features": {}}}, **_module(variables, resources, checks)}


# GCP ------------------------------------------------------------------------------------------


def _gcp(p: SitePrerequisites) -> dict[str, Any]:
    variables: dict[str, Any] = {"network": _string_var(f"The VPC network (name or self link) of site {p.site.name}")}
    public = {name: public for name, _, public in p.dialled}
    firewall = {
        ident(r.name): {
            "name": _site_name(p, r.name),
            "network": "${var.network}",
            "direction": "INGRESS",
            "source_ranges": [str(r.source)],
            # The nodes by address: their internal one, and for the dialled ones the external one too.
            "destination_ranges": sorted(
                {f"{a}/32" for _, a in p.members(r.targets)}
                | {f"{public[n]}/32" for n, _ in p.members(r.targets) if r.targets is Targets.DIALLED}
            ),
            "allow": [{"protocol": r.protocol.value, "ports": [str(r.port)]}],
            "description": r.reason,
        }
        for r in p.inbound
    }
    resources: dict[str, Any] = {"google_compute_firewall": firewall}
    if p.routes:
        resources["google_compute_route"] = {
            ident(f"to-{e.destination.network_address}-{e.destination.prefixlen}"): {
                "name": _site_name(p, "to", str(e.destination.network_address), str(e.destination.prefixlen)),
                "network": "${var.network}",
                "dest_range": str(e.destination),
                "next_hop_ip": str(e.next_hop),
                "priority": 1000,
                "description": e.reason,
            }
            for e in p.routes
        }
    checks = _forwarding_checks(
        p,
        variables,
        ("instance_self_links", "The self link of the instance"),
        ("google_compute_instance", "self_link", {}),
        "{data}.can_ip_forward",
        "Create the instance of {node} with can_ip_forward = true (it cannot be changed later)",
    )
    return _module(variables, resources, checks)


# OpenStack ------------------------------------------------------------------------------------


def _openstack(p: SitePrerequisites) -> dict[str, Any]:
    groups = _groups(p)
    variables: dict[str, Any] = {}
    ported = sorted({n for names in groups.values() for n in names} | {f.node for f in p.forwarding})
    ports = _node_var(variables, "port_ids", "The Neutron port (UUID) on the site network", ported) if ported else ""
    resources: dict[str, Any] = {
        "openstack_networking_secgroup_v2": {
            t.value: {
                "name": _site_name(p, t.value),
                "description": f"crossmesh {p.mesh}: inbound to {t.description} of site {p.site.name}",
            }
            for t in groups
        },
        "openstack_networking_secgroup_rule_v2": {
            ident(r.name): {
                "direction": "ingress",
                "ethertype": "IPv4",
                "protocol": r.protocol.value,
                "port_range_min": r.port,
                "port_range_max": r.port,
                "remote_ip_prefix": str(r.source),
                "security_group_id": f"${{openstack_networking_secgroup_v2.{r.targets.value}.id}}",
                "description": r.reason,
            }
            for r in p.inbound
        },
        "openstack_networking_port_secgroup_associate_v2": {
            ident(name): {
                "port_id": f'${{var.{ports}["{name}"]}}',
                "security_group_ids": [
                    f"${{openstack_networking_secgroup_v2.{t.value}.id}}"
                    for t, names in groups.items()
                    if name in names
                ],
                "enforce": False,  # add to the port's groups, do not replace them
            }
            for name in sorted({n for names in groups.values() for n in names})
        },
    }
    if p.routes:
        variables["router_id"] = _string_var(f"The Neutron router of site {p.site.name}'s network")
        resources["openstack_networking_router_route_v2"] = {
            ident(f"to-{e.destination.network_address}-{e.destination.prefixlen}"): {
                "router_id": "${var.router_id}",
                "destination_cidr": str(e.destination),
                "next_hop": str(e.next_hop),
            }
            for e in p.routes
        }
    checks = {ident(f"{f.node}-forwards"): openstack_pairs(f.node, ports, f.carries, f.reason) for f in p.forwarding}
    return _module(variables, resources, checks)


def openstack_pairs(
    node: str, ports: str, carries: tuple[Any, ...], reason: str, *, port_ref: str | None = None
) -> dict[str, Any]:
    """Port security drops what a port sends from an address not its own: the gateway's port needs
    the networks it forwards as allowed address pairs. The port is `var.<ports>["<node>"]`, or
    `port_ref` (a Terraform expression) when given."""
    label = ident(f"{node}-forwarding")
    networks = json.dumps([str(n) for n in carries])
    pairs = f"[for pair in data.openstack_networking_port_v2.{label}.allowed_address_pairs : pair.ip_address]"
    return _check(
        "openstack_networking_port_v2",
        label,
        {"port_id": port_ref or f'${{var.{ports}["{node}"]}}'},
        f"alltrue([for net in {networks} : contains({pairs}, net)])",
        f"Add allowed address pairs {', '.join(str(n) for n in carries)} to the port of {node}: {reason}.",
    )


def _without_empty(resources: dict[str, Any]) -> dict[str, Any]:
    return {kind: blocks for kind, blocks in resources.items() if blocks}


def _module(variables: dict[str, Any], resources: dict[str, Any], checks: dict[str, Any]) -> dict[str, Any]:
    doc = {"variable": variables, "resource": _without_empty(resources)}
    return {**doc, "check": checks} if checks else doc


_BUILDERS: dict[str, Callable[[SitePrerequisites], dict[str, Any]]] = {
    "aws": _aws,
    "azure": _azure,
    "gcp": _gcp,
    "openstack": _openstack,
}
