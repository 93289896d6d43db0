"""The state directory (default `.crossmesh/` beside the mesh file).

    allocations.json      cluster ids, pod CIDRs, tunnel addresses (stable across runs)
    keys/<node>.key       WireGuard private keys, mode 0600, directory 0700
    keys/<node>.pub       public keys
    applied-plan.json     the plan last rendered or applied, for `plan`'s difference
    pki/                  the mesh's ClusterMesh CA and the clusters' certificates (see `pki`), 0700
    etcd-pki/             the control plane's etcd CA and its identities' certificates (`crossmesh pki etcd`), 0700
    istio-pki/            the service mesh's Istio root and per-cluster intermediates (see `meshpki`), 0700
    ingress-pki/          the ingress CA and the gateway listeners' certificates (see `ingresspki`), 0700
    vpn/<connection>.tunnel<N>.psk   Site-to-Site VPN pre-shared keys (see `psk`), 0600 in a 0700 folder

In a full mesh of n nodes every node lists ~n peers and ~3n routes: written out per
node, applied-plan.json grows as n² (810 MB in the 1,000-node benchmark). They are few distinct
objects, though, shared by all nodes (see `serialize.plan_json`), so the file holds
each distinct peer and route once and the nodes refer to them by index ("packed"),
written without indentation.

Every folder and file here is opened without following links and judged before use: the
state folder and `keys/` must be real folders of this user (or root) that no one else may
write to, a key a regular file no one else may read (see `disk`); anything else is refused
with the fix, never followed. Writes are atomic (temporary file + rename) with explicit
modes, so neither a crash nor the umask leaves a key half-written or readable.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from crossmesh.errors import StateError
from crossmesh.identity.ingress import ListenerId
from crossmesh.identity.svid import Authority
from crossmesh.ipam.allocate import Allocations
from crossmesh.model.tls import CertSpec, ClusterMeshTLS, EtcdTLS, IngressCert
from crossmesh.state import disk, ingresspki, meshpki, pki, psk
from crossmesh.state import keys as wgkeys

KEYS, PKI, ETCD_PKI, ISTIO_PKI, INGRESS_PKI, VPN = "keys", "pki", "etcd-pki", "istio-pki", "ingress-pki", "vpn"
SUBFOLDERS = {
    VPN: "VPN pre-shared keys",
    KEYS: "keys",
    PKI: "ClusterMesh CA and certificates",
    ETCD_PKI: "etcd CA and certificates",
    ISTIO_PKI: "Istio root and intermediates",
    INGRESS_PKI: "ingress CA and listener certificates",
}
KEY_FILE_LIMIT = 4096  # a key file holds 45 bytes
STATE_FILE_LIMIT = 1 << 30  # applied-plan.json of the largest documented mesh is far smaller


class StateStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def beside(cls, mesh_path: Path, override: Path | None = None) -> StateStore:
        # realpath, not Path.resolve: a mesh path that is a link loop must reach the reader, which names it
        return cls(override if override is not None else Path(os.path.realpath(mesh_path)).parent / ".crossmesh")

    # allocations ------------------------------------------------------------------------
    def load_allocations(self) -> Allocations:
        data = self._read_json("allocations.json")
        if data is None:
            return Allocations()
        try:
            return Allocations.from_json(data)
        except (KeyError, ValueError, TypeError, AttributeError) as err:
            raise StateError(f"{self.root / 'allocations.json'} is corrupt ({err}) — fix or delete it") from err

    def save_allocations(self, alloc: Allocations) -> None:
        self._write_json("allocations.json", alloc.to_json())

    # keys -------------------------------------------------------------------------------
    @property
    def key_dir(self) -> Path:
        return self.root / "keys"

    def private_key_path(self, node: str) -> Path:
        return self.key_dir / f"{node}.key"

    def ensure_keys(self, nodes: list[str]) -> dict[str, str]:
        """Public key per node, generating a private key (0600) where none exists yet."""
        out = {}
        with self._folder(KEYS) as fd:
            for node in sorted(nodes):
                text = self._read_key(fd, node)
                if text is None:
                    text = wgkeys.generate_private_key()
                    self._write_key(fd, node, text)
                out[node] = wgkeys.public_key(text)
        return out

    def public_keys(self, nodes: list[str]) -> dict[str, str]:
        with self._existing(KEYS) as fd:
            return {n: wgkeys.public_key(self._existing_key(fd, n)) for n in sorted(nodes)}

    def known_public_keys(self, nodes: list[str]) -> dict[str, str]:
        """The public keys of the nodes that have a key already; creates nothing."""
        out = {}
        with self._existing(KEYS) as fd:
            if fd is None:
                return {}
            for n in sorted(nodes):
                text = self._read_key(fd, n)
                if text is not None:
                    out[n] = wgkeys.public_key(text)
        return out

    def private_key(self, node: str) -> str:
        with self._existing(KEYS) as fd:
            return self._existing_key(fd, node)

    def rotate_key(self, node: str) -> str:
        priv = wgkeys.generate_private_key()
        with self._folder(KEYS) as fd:
            self._write_key(fd, node, priv)
        return wgkeys.public_key(priv)

    def _existing_key(self, fd: int | None, node: str) -> str:
        text = None if fd is None else self._read_key(fd, node)
        if text is None:
            raise StateError(f"no key for node {node} in {self.key_dir} — run `crossmesh plan` or `render` first")
        return text

    def _read_key(self, fd: int, node: str) -> str | None:
        text = _read_secret(fd, f"{node}.key", self.private_key_path(node))
        if text is not None and not wgkeys.is_valid_key(text):
            path = self.private_key_path(node)
            raise StateError(f"{path} does not hold a WireGuard private key — delete it to generate a new one")
        return text

    def _write_key(self, fd: int, node: str, text: str) -> None:
        os.fchmod(fd, disk.PRIVATE_DIR)  # a keys/ folder left 0755 by hand is tightened
        disk.write_private(self.private_key_path(node), text + "\n", folder=fd)
        pub = wgkeys.public_key(text) + "\n"
        disk.write_at(fd, f"{node}.pub", pub.encode(), disk.SHARED, self.key_dir / f"{node}.pub")

    # VPN pre-shared keys ----------------------------------------------------------------
    def ensure_psks(self, tunnels: Iterable[tuple[str, int]]) -> None:
        """A pre-shared key (0600) for each (connection, tunnel) that has none yet; kept ones stay."""
        wanted = sorted(set(tunnels))
        if not wanted:
            return
        with self._folder(VPN) as fd:
            os.fchmod(fd, disk.PRIVATE_DIR)  # a vpn/ folder left 0755 by hand is tightened
            for connection, index in wanted:
                if self._read_psk(fd, connection, index) is None:
                    name = psk.file_name(connection, index)
                    disk.write_at(fd, name, (psk.generate() + "\n").encode(), disk.PRIVATE, self.root / VPN / name)

    def psk(self, connection: str, index: int) -> str:
        """The pre-shared key of tunnel `index` of `connection`, as made by `ensure_psks`."""
        with self._existing(VPN) as fd:
            text = None if fd is None else self._read_psk(fd, connection, index)
        if text is None:
            path = self.root / VPN / psk.file_name(connection, index)
            raise StateError(f"no pre-shared key {path} — run `crossmesh plan` or `render` first")
        return text

    def _read_psk(self, fd: int, connection: str, index: int) -> str | None:
        name = psk.file_name(connection, index)
        path = self.root / VPN / name
        text = _read_secret(fd, name, path)
        why = None if text is None else psk.problem(text)
        if why is not None:
            raise StateError(f"{path} does not hold a pre-shared key ({why}) — delete it to generate a new one")
        return text

    # ClusterMesh PKI --------------------------------------------------------------------
    def clustermesh_tls(self, mesh: str, clusters: Iterable[str], now: datetime) -> dict[str, ClusterMeshTLS]:
        """The mesh CA (made once) and each cluster's clustermesh-apiserver certificates (see `pki`)."""
        with self._folder(PKI) as fd:
            os.fchmod(fd, disk.PRIVATE_DIR)  # a pki/ folder left 0755 by hand is tightened
            return pki.clustermesh_tls(fd, self.root / PKI, mesh, clusters, now)

    def etcd_tls(self, mesh: str, specs: Iterable[CertSpec], now: datetime) -> EtcdTLS:
        """The etcd CA (made once) and the certificates `specs` describe (see `pki.etcd_tls`)."""
        with self._folder(ETCD_PKI) as fd:
            os.fchmod(fd, disk.PRIVATE_DIR)
            return pki.etcd_tls(fd, self.root / ETCD_PKI, mesh, specs, now)

    # Istio PKI --------------------------------------------------------------------------
    def istio_cas(
        self, mesh: str, trust_domain: str, clusters: Iterable[str], now: datetime
    ) -> tuple[x509.Certificate, dict[str, Authority]]:
        """The mesh's Istio root (made once) and each cluster's intermediate (see `meshpki`)."""
        with self._folder(ISTIO_PKI) as fd:
            os.fchmod(fd, disk.PRIVATE_DIR)
            cas = meshpki.istio_cas(fd, self.root / ISTIO_PKI, mesh, trust_domain, clusters, now)
            return meshpki.istio_root(fd, self.root / ISTIO_PKI), cas

    def istio_revocations(self) -> list[dict[str, str]]:
        """The revoked Istio intermediates (see `meshpki.revocations`); none before the first render."""
        with self._existing(ISTIO_PKI) as fd:
            return [] if fd is None else meshpki.revocations(fd, self.root / ISTIO_PKI)

    def istio_revoked(self) -> frozenset[int]:
        """The serial numbers of the revoked Istio intermediates."""
        with self._existing(ISTIO_PKI) as fd:
            return frozenset() if fd is None else meshpki.revoked(fd, self.root / ISTIO_PKI)

    def istio_revoke(self, cluster: str) -> None:
        """Revoke `cluster`'s Istio intermediate; the next `istio_cas` issues it a new one."""
        with self._folder(ISTIO_PKI) as fd:
            meshpki.revoke(fd, self.root / ISTIO_PKI, cluster)

    # ingress PKI ------------------------------------------------------------------------
    def ingress_listeners(
        self, mesh: str, listeners: Mapping[ListenerId, Iterable[str]], now: datetime
    ) -> dict[ListenerId, IngressCert]:
        """The certificate of each listener, naming its hostnames, from the mesh's ingress CA (made
        once); kept ones are served again unless due (see `ingresspki`)."""
        with self._folder(INGRESS_PKI) as fd:
            os.fchmod(fd, disk.PRIVATE_DIR)
            ca = ingresspki.ca(fd, self.root / INGRESS_PKI, mesh, now)
            return {
                lid: ingresspki.listener(fd, self.root / INGRESS_PKI, ca, lid, names, now)
                for lid, names in sorted(listeners.items(), key=lambda kv: kv[0].stem)
            }

    def ingress_ca_cert(self) -> x509.Certificate:
        """The ingress CA's certificate; StateError before the first render that made it."""
        with self._existing(INGRESS_PKI) as fd:
            if fd is None:
                raise StateError(
                    f"{self.root / INGRESS_PKI} does not exist yet — render a mesh whose Gateway has a mesh "
                    "certificate first"
                )
            return ingresspki.ca_cert(fd, self.root / INGRESS_PKI)

    def ingress_kept(self) -> list[ingresspki.Kept]:
        """The listener certificates kept so far (none before the first render)."""
        with self._existing(INGRESS_PKI) as fd:
            return [] if fd is None else ingresspki.kept(fd, self.root / INGRESS_PKI)

    # the folders ------------------------------------------------------------------------
    def _open(self, sub: str | None, *, create: bool) -> int:
        """A descriptor of the state folder (or of its `sub` folder: `keys/`, `pki/`), judged at each
        step; missing folders are made 0700 (their missing parents 0755) or, without `create`,
        FileNotFoundError."""
        root = self.root.absolute()
        try:
            fd = disk.make_dirs(root.parent, disk.SHARED_DIR) if create else os.open(root.parent, os.O_DIRECTORY)
        except FileNotFoundError:
            raise
        except OSError as err:
            raise StateError(f"cannot open {root.parent}: {err.strerror}") from err
        steps = [(root.name, self.root, "give --state a real folder, or replace it with one")]
        if sub is not None:
            steps.append((sub, self.root / sub, f"replace it with a real folder holding the {SUBFOLDERS[sub]}"))
        for name, shown, fix in steps:
            try:
                child = disk.open_dir(name, shown, dir_fd=fd, create=disk.PRIVATE_DIR if create else None, fix=fix)
            finally:
                os.close(fd)
            fd = child
            try:
                disk.refuse_shared(os.fstat(fd), shown, bits=0o022, chmod="700")
            except BaseException:
                os.close(fd)
                raise
        return fd

    @contextmanager
    def _folder(self, sub: str | None) -> Iterator[int]:
        fd = self._open(sub, create=True)
        try:
            yield fd
        finally:
            os.close(fd)

    @contextmanager
    def _existing(self, sub: str | None) -> Iterator[int | None]:
        """The folder as `_folder` gives it, or None when it does not exist yet."""
        try:
            fd = self._open(sub, create=False)
        except FileNotFoundError:
            yield None
            return
        try:
            yield fd
        finally:
            os.close(fd)

    # applied plan -----------------------------------------------------------------------
    def load_applied_plan(self) -> dict[str, Any] | None:
        data = self._read_json("applied-plan.json")
        if not isinstance(data, dict):
            return None
        try:
            return _unpack_plan(data)
        except (KeyError, IndexError, TypeError, AttributeError) as err:
            raise StateError(f"{self.root / 'applied-plan.json'} is corrupt ({err}) — fix or delete it") from err

    def save_applied_plan(self, data: dict[str, Any]) -> None:
        self._write_json("applied-plan.json", _pack_plan(data), compact=True)

    # helpers ----------------------------------------------------------------------------
    def _read_json(self, name: str) -> Any:
        path = self.root / name
        try:
            with self._existing(None) as fd:
                got = None if fd is None else disk.read_at(fd, name, path, limit=STATE_FILE_LIMIT)
            return None if got is None else json.loads(got[0])
        except (OSError, ValueError) as err:
            raise StateError(f"{path} is unreadable ({err}) — fix or delete it") from err

    def _write_json(self, name: str, data: Any, *, compact: bool = False) -> None:
        # json's C encoder only runs without indentation: big files are written compact.
        text = (
            json.dumps(data, sort_keys=True, separators=(",", ":"))
            if compact
            else json.dumps(data, indent=2, sort_keys=True)
        )
        try:
            with self._folder(None) as fd:
                disk.write_at(fd, name, (text + "\n").encode(), disk.SHARED, self.root / name)
        except OSError as err:
            raise StateError(f"cannot write {self.root / name}: {err.strerror}") from err


def _read_secret(fd: int, name: str, path: Path) -> str | None:
    """The text of a secret file `name` of the folder `fd`, which only this user may read; None when
    it does not exist."""
    try:
        got = disk.read_at(fd, name, path, limit=KEY_FILE_LIMIT)
    except OSError as err:
        raise StateError(f"cannot read {path}: {err.strerror}") from err
    if got is None:
        return None
    data, st = got
    disk.refuse_shared(st, path, bits=0o077, chmod="600")
    return data.decode("utf-8", errors="replace").strip()


# packed applied plan ----------------------------------------------------------------------
PACKED = "packed"  # {"peers": [...], "routes": [...]}: the distinct peer and route entries


def _pack_plan(data: dict[str, Any]) -> dict[str, Any]:
    """Each distinct peer and route dict once, nodes referring to them by index (first-seen order)."""
    peers, routes = _Interned(), _Interned()
    nodes = []
    for node in data.get("nodes", []):
        node = dict(node)
        if node.get("tunnel"):
            node["tunnel"] = {**node["tunnel"], "peers": peers.indices(node["tunnel"]["peers"])}
        node["routes"] = routes.indices(node.get("routes", []))
        nodes.append(node)
    return {**data, "nodes": nodes, PACKED: {"peers": peers.table, "routes": routes.table}}


class _Interned:
    """Distinct objects by identity, in first-seen order; lists of them as lists of indices."""

    def __init__(self) -> None:
        self.table: list[Any] = []
        self._index: dict[int, int] = {}
        self._lists: dict[int, list[int]] = {}  # a list that nodes share (see plan_json) is indexed once

    def indices(self, items: list[Any]) -> list[int]:
        out = self._lists.get(id(items))
        if out is None:
            try:
                out = [self._index[id(x)] for x in items]
            except KeyError:
                for x in items:
                    if id(x) not in self._index:
                        self._index[id(x)] = len(self.table)
                        self.table.append(x)
                out = [self._index[id(x)] for x in items]
            self._lists[id(items)] = out
        return out


def _unpack_plan(data: dict[str, Any]) -> dict[str, Any]:
    """`_pack_plan` undone (entries shared, not copied); an unpacked file is returned as it is."""
    packed = data.pop(PACKED, None)
    if packed is None:
        return data
    peer_table, route_table = packed["peers"], packed["routes"]
    for node in data["nodes"]:
        if node.get("tunnel"):
            node["tunnel"]["peers"] = [peer_table[i] for i in node["tunnel"]["peers"]]
        node["routes"] = [route_table[i] for i in node["routes"]]
    return data
