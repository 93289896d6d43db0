"""`crossmesh.kv.api.Kv` over etcd's v3 gRPC API (grpc.aio), plaintext or TLS.

TLS is a feature here, not a patch: the channel is built with the CA, client certificate and key,
and etcd — started with `--client-cert-auth` — knows the caller by the certificate's common name,
so its roles decide what a node may write. (etcd's HTTP gateway cannot be used for this: it ignores
the client certificate's name.) The protobuf messages and stubs of etcd's API come from the
`aetcd` package's generated code; none of aetcd's client is used.

    kv = await connect(["https://10.0.0.10:2379"], Tls(ca, cert, key))
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import grpc
from aetcd import rpc

from crossmesh.kv.api import (
    Compare,
    Delete,
    Entry,
    Event,
    KvCompacted,
    KvDenied,
    KvError,
    KvUnavailable,
    Lease,
    LeaseExpired,
    Permission,
    Put,
    Role,
    Snapshot,
    TxnResult,
    prefix_end,
)

TIMEOUT = 5.0  # seconds for a unary call: a member that does not answer in time is "down"
_OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),  # 10,000 node records are ~4 MB: gRPC's default
    ("grpc.max_send_message_length", 8 << 20),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
]
_TARGETS = {"create": rpc.Compare.CREATE, "mod": rpc.Compare.MOD, "version": rpc.Compare.VERSION}
_TLS_WORDS = ("ssl", "handshake", "certificate", "tsi_")  # how gRPC reports a refused TLS handshake
_PERMS = {"read": 0, "write": 1, "readwrite": 2}


@dataclass(frozen=True, slots=True)
class Tls:
    ca: Path
    cert: Path
    key: Path

    def credentials(self) -> grpc.ChannelCredentials:
        try:
            return grpc.ssl_channel_credentials(
                root_certificates=self.ca.read_bytes(),
                private_key=self.key.read_bytes(),
                certificate_chain=self.cert.read_bytes(),
            )
        except OSError as err:
            raise KvError(f"cannot read the etcd TLS material: {err}") from None


def _error(err: grpc.aio.AioRpcError, what: str) -> KvError:
    code, detail = err.code(), err.details() or ""
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return KvDenied(f"{what}: {detail}")
    if "lease not found" in detail:
        return LeaseExpired(f"{what}: {detail}")
    if "compacted" in detail:
        return KvCompacted(f"{what}: {detail}")
    if code == grpc.StatusCode.UNAVAILABLE and any(
        w in detail.lower() for w in ("ssl", "handshake", "certificate", "tsi_")
    ):
        return KvDenied(f"{what}: the etcd member refused the TLS handshake ({detail})")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        return KvUnavailable(f"{what}: {detail or code.name}")
    return KvError(f"{what}: {code.name} {detail}")


def _entry(kv: Any) -> Entry:
    return Entry(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


def _op(op: Put | Delete) -> Any:
    if isinstance(op, Put):
        return rpc.RequestOp(request_put=rpc.PutRequest(key=op.key, value=op.value, lease=op.lease))
    end = prefix_end(op.key) if op.prefix else b""
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=op.key, range_end=end))


def _compare(c: Compare) -> Any:
    result = rpc.Compare.EQUAL if c.op == "=" else rpc.Compare.NOT_EQUAL
    if c.target == "value":
        assert isinstance(c.value, bytes)  # noqa: S101 - the protocol's type
        return rpc.Compare(key=c.key, result=result, target=rpc.Compare.VALUE, value=c.value)
    field = {"create": "create_revision", "mod": "mod_revision", "version": "version"}[c.target]
    return rpc.Compare(key=c.key, result=result, target=_TARGETS[c.target], **{field: c.value})


class EtcdKv:
    def __init__(self, endpoint: str, tls: Tls | None) -> None:
        url = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
        target = f"{url.hostname}:{url.port or 2379}"
        self.endpoint = endpoint
        if tls is not None:
            self.channel = grpc.aio.secure_channel(target, tls.credentials(), options=_OPTIONS)
        else:
            self.channel = grpc.aio.insecure_channel(target, options=_OPTIONS)
        self._kv = rpc.KVStub(self.channel)
        self._watch = rpc.WatchStub(self.channel)
        self._lease = rpc.LeaseStub(self.channel)
        self._maintenance = rpc.MaintenanceStub(self.channel)
        self._auth = rpc.AuthStub(self.channel)

    async def _call(self, what: str, method: Any, request: Any) -> Any:
        try:
            return await method(request, timeout=TIMEOUT)
        except grpc.aio.AioRpcError as err:
            raise _error(err, what) from None

    async def status(self) -> int:
        """The member's revision (and proof that it answers and accepts our certificate)."""
        got = await self._call("status", self._maintenance.Status, rpc.StatusRequest())
        return int(got.header.revision)

    async def get(self, key: bytes) -> Entry | None:
        got = await self._call("get", self._kv.Range, rpc.RangeRequest(key=key))
        return _entry(got.kvs[0]) if got.kvs else None

    async def range(self, prefix: bytes) -> Snapshot:
        got = await self._call("range", self._kv.Range, rpc.RangeRequest(key=prefix, range_end=prefix_end(prefix)))
        return Snapshot([_entry(kv) for kv in got.kvs], int(got.header.revision))

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        got = await self._call("put", self._kv.Put, rpc.PutRequest(key=key, value=value, lease=lease))
        return int(got.header.revision)

    async def delete(self, key: bytes, *, prefix: bool = False) -> int:
        end = prefix_end(key) if prefix else b""
        got = await self._call("delete", self._kv.DeleteRange, rpc.DeleteRangeRequest(key=key, range_end=end))
        return int(got.deleted)

    async def txn(self, compares: list[Compare], success: list[Put | Delete]) -> TxnResult:
        request = rpc.TxnRequest(compare=[_compare(c) for c in compares], success=[_op(op) for op in success])
        got = await self._call("txn", self._kv.Txn, request)
        return TxnResult(bool(got.succeeded), int(got.header.revision))

    async def watch(self, prefix: bytes, start_revision: int) -> AsyncIterator[list[Event]]:
        create = rpc.WatchCreateRequest(key=prefix, range_end=prefix_end(prefix), start_revision=start_revision)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        queue.put_nowait(rpc.WatchRequest(create_request=create))

        async def requests() -> AsyncIterator[Any]:
            while True:
                yield await queue.get()

        call = self._watch.Watch(requests())
        try:
            async for response in call:
                if response.compact_revision:
                    raise KvCompacted(
                        f"watch from revision {start_revision}: compacted up to {response.compact_revision}"
                    )
                if response.canceled:
                    raise _cancelled(response.cancel_reason)
                if response.events:
                    yield [_event(e) for e in response.events]
            raise KvUnavailable("the etcd member ended the watch")
        except grpc.aio.AioRpcError as err:
            raise _error(err, "watch") from None
        finally:
            call.cancel()

    async def grant(self, ttl: int) -> Lease:
        got = await self._call("lease grant", self._lease.LeaseGrant, rpc.LeaseGrantRequest(TTL=ttl))
        return Lease(int(got.ID), int(got.TTL))

    async def refresh(self, lease: int) -> int:
        call = self._lease.LeaseKeepAlive(iter([rpc.LeaseKeepAliveRequest(ID=lease)]), timeout=TIMEOUT)
        try:
            async for got in call:
                if got.TTL <= 0:
                    raise LeaseExpired(f"lease {lease:x} expired")
                return int(got.TTL)
        except grpc.aio.AioRpcError as err:
            raise _error(err, "lease keepalive") from None
        finally:
            call.cancel()
        raise KvUnavailable("lease keepalive: no answer")

    async def revoke(self, lease: int) -> None:
        with contextlib.suppress(LeaseExpired):  # gone already: nothing to withdraw
            await self._call("lease revoke", self._lease.LeaseRevoke, rpc.LeaseRevokeRequest(ID=lease))

    async def close(self) -> None:
        await self.channel.close()

    # --- administration: roles, users, auth (the `root` user's certificate) -------------------
    async def roles(self) -> list[Role]:
        got = await self._call("role list", self._auth.RoleList, rpc.AuthRoleListRequest())
        out = []
        for name in sorted(set(got.roles) - {"root"}):
            have = await self._role_permissions(name)
            out.append(Role(name, [_permission(kind, key, end) for kind, key, end in sorted(have or ())]))
        return out

    async def _role_permissions(self, name: str) -> set[tuple[int, bytes, bytes]] | None:
        """The role's permissions as (type, key, range end), None when there is no such role."""
        try:
            got = await self._call("role get", self._auth.RoleGet, rpc.AuthRoleGetRequest(role=name))
        except KvError as err:
            if isinstance(err, KvDenied) or "role name not found" not in str(err):
                raise
            return None
        return {(int(p.permType), bytes(p.key), bytes(p.range_end)) for p in got.perm}

    async def ensure_role(self, role: Role) -> bool:
        have = await self._role_permissions(role.name)
        if have is None:
            await self._call("role add", self._auth.RoleAdd, rpc.AuthRoleAddRequest(name=role.name))
            have = set()
        want = {(_PERMS[p.kind], p.key, prefix_end(p.key) if p.prefix else b"") for p in role.permissions}
        for _, key, end in sorted(have - want):
            request = rpc.AuthRoleRevokePermissionRequest(role=role.name, key=key, range_end=end)
            await self._call("role revoke", self._auth.RoleRevokePermission, request)
        for kind, key, end in sorted(want - have):
            perm = rpc.Permission(permType=kind, key=key, range_end=end)
            request = rpc.AuthRoleGrantPermissionRequest(name=role.name, perm=perm)
            await self._call("role grant", self._auth.RoleGrantPermission, request)
        return have != want

    async def delete_role(self, name: str) -> None:
        await self._call("role delete", self._auth.RoleDelete, rpc.AuthRoleDeleteRequest(role=name))

    async def ensure_user(self, user: str, roles: list[str]) -> bool:
        try:
            got = await self._call("user get", self._auth.UserGet, rpc.AuthUserGetRequest(name=user))
            have, made = set(got.roles), False
        except KvError as err:
            if isinstance(err, KvDenied) or "user name not found" not in str(err):
                raise
            options = rpc.UserAddOptions(no_password=True)
            await self._call("user add", self._auth.UserAdd, rpc.AuthUserAddRequest(name=user, options=options))
            have, made = set(), True
        for role in sorted(have - set(roles)):
            request = rpc.AuthUserRevokeRoleRequest(name=user, role=role)
            await self._call("user revoke", self._auth.UserRevokeRole, request)
        for role in sorted(set(roles) - have):
            await self._call("user grant", self._auth.UserGrantRole, rpc.AuthUserGrantRoleRequest(user=user, role=role))
        return made or have != set(roles)

    async def enable_auth(self) -> None:
        await self._call("auth enable", self._auth.AuthEnable, rpc.AuthEnableRequest())


_KINDS: dict[int, Literal["read", "write", "readwrite"]] = {0: "read", 1: "write", 2: "readwrite"}


def _permission(kind: int, key: bytes, end: bytes) -> Permission:
    """A permission as etcd holds it; any range end counts as a prefix (crossmesh grants no other range)."""
    return Permission(_KINDS.get(kind, "readwrite"), key, prefix=bool(end))


def _event(e: Any) -> Event:
    if e.type == rpc.Event.DELETE:
        return Event("delete", Entry(e.kv.key, b"", e.kv.create_revision, e.kv.mod_revision, 0))
    return Event("put", _entry(e.kv))


def _cancelled(reason: str) -> KvError:
    if "permission denied" in reason:
        return KvDenied(f"watch: {reason}")
    return KvUnavailable(f"watch cancelled: {reason}")


async def connect(endpoints: list[str], tls: Tls | None) -> EtcdKv:
    """A client of the first endpoint that answers (and accepts our certificate). KvDenied when
    a member refuses the certificate, KvUnavailable when none answers."""
    last: KvError | None = None
    for endpoint in endpoints:
        client = EtcdKv(endpoint, tls)
        try:
            await client.status()
            return client
        except KvError as err:
            last = err
            await client.close()
    if isinstance(last, KvDenied):
        raise last
    raise KvUnavailable(f"no etcd endpoint answers ({', '.join(endpoints)}): {last}")
