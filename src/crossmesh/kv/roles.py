"""etcd's users and roles for a mesh, made to be what `kv.layout` says — run with the `root`
certificate, by the lab at `lab up --agents`, by `crossmesh pki etcd-roles`, or by an `apply` that
bootstraps an etcd.

Idempotent: a role is made exactly its permissions (what it should no longer have is revoked), a
user exactly its roles; a node role of the mesh that no node needs any more (a removed node) is
deleted, so the removed node's certificate can write nothing. Auth is enabled last, once `root`
holds its role (etcd refuses it before), and stays enabled.
"""

from __future__ import annotations

from collections.abc import Mapping

from crossmesh.kv.api import KvAdmin, Role
from crossmesh.kv.identities import ROOT_USER
from crossmesh.kv.layout import Layout


async def ensure_roles(
    kv: KvAdmin, layout: Layout, nodes: list[str], gateways: Mapping[str, str] | None = None
) -> list[str]:
    """Make `root`, every user of `layout.users(nodes, gateways)` and its role, delete the mesh's
    roles no user needs, then enable auth; the changes made (none on a second run)."""
    wanted = layout.users(nodes, gateways)
    changes = []
    if await kv.ensure_user(ROOT_USER, [ROOT_USER]):
        changes.append("etcd user root (role root)")
    for user, role in sorted(wanted.items()):
        if await kv.ensure_role(role):
            changes.append(f"etcd role {role.name}: {_describe(role)}")
        if await kv.ensure_user(user, [role.name]):
            changes.append(f"etcd user {user} (role {role.name})")
    names = {r.name for r in wanted.values()}
    for role in await kv.roles():
        if role.name not in names and role.name.startswith(layout.role_prefix):
            await kv.delete_role(role.name)
            changes.append(f"etcd role {role.name} deleted: no node of mesh {layout.mesh} needs it")
    await kv.enable_auth()
    return changes


def _describe(role: Role) -> str:
    return ", ".join(f"{p.kind} {p.key.decode(errors='replace')}{'*' if p.prefix else ''}" for p in role.permissions)
