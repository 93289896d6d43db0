"""The lab's mesh CA daemon: what istiod's CA is to ztunnel, for every cluster of a lab.

It holds each cluster's intermediate (the state directory's `istio-pki/`, made by the state
store) and listens on one Unix socket per node, `<lab dir>/mesh/ca/<node>.sock` (0600, in a 0700
folder: only root, as the node proxies run). A node proxy sends one JSON line, {"csr": PEM}; the
CA signs it with the intermediate of the node's cluster — only for the SPIFFE id of a pod placed
on that node (Istio's node authorization: a node cannot get another node's identities) — for the
mesh's `workloadCertTTL`, and answers one JSON line:

    {"chain": PEM leaf + intermediate, "roots": PEM, "not_after": epoch,
     "intermediates": PEM of every cluster's intermediate, "revoked": [serials]}

or {"error": reason}. The intermediates and the revocation list let a proxy check a peer that
presented only its leaf (Python's ssl gives no chain) and refuse a revoked intermediate. Each
refusal is logged with its reason.

    python -m crossmesh.drivers.lab.meshca LAB_DIR
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from crossmesh.drivers.lab.desired import compiled_of
from crossmesh.drivers.lab.meshtls import ca_socket, spiffe_of
from crossmesh.drivers.lab.state import LabState, daemon_state
from crossmesh.identity.spiffe import SpiffeId
from crossmesh.identity.svid import Authority, sign_csr
from crossmesh.policy.endpoints import mesh_endpoints
from crossmesh.policy.model import EndpointKind
from crossmesh.state.store import StateStore

REQUEST_MAX = 1 << 16
READ_TIMEOUT = 10.0


def _pem(certs: list[x509.Certificate]) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


class CA:
    def __init__(self, state: LabState) -> None:
        compiled = compiled_of(state)
        plan = compiled.plan
        if plan.istio is None:
            raise SystemExit(f"mesh {plan.mesh} has no spec.istio: no mesh CA to run")
        self.state = state
        self.ttl = plan.istio.cert_ttl
        store = StateStore(Path(state.state_dir))
        self.root, self.cas = store.istio_cas(
            plan.mesh, plan.istio.trust_domain, [c.name for c in plan.clusters], datetime.now(UTC)
        )
        self.revoked = store.istio_revoked()
        self.cluster_of = {n.name: n.cluster for n in plan.nodes}
        self.allowed: dict[str, frozenset[SpiffeId]] = {n.name: frozenset() for n in plan.nodes}
        for ep in mesh_endpoints(plan, compiled.loaded.manifests):
            if ep.kind is EndpointKind.POD:
                self.allowed[ep.node] = self.allowed[ep.node] | {spiffe_of(ep, plan.istio.trust_domain)}
        self.intermediates = _pem([ca.cert for ca in self.cas.values()])

    def sign(self, node: str, request: bytes) -> dict[str, object]:
        """The answer to one request line from `node`'s socket."""
        try:
            csr = json.loads(request)["csr"].encode()
        except (ValueError, KeyError, TypeError, AttributeError):
            return {"error": 'not a request: one JSON line {"csr": PEM} expected'}
        authority: Authority = self.cas[self.cluster_of[node]]
        mine = self.allowed.get(node, frozenset())
        try:
            chain = sign_csr(authority, csr, mine.__contains__, datetime.now(UTC), self.ttl)
        except ValueError as err:
            return {"error": f"{err} (node {node} may have the ids of its own pods only)"}
        leaf = x509.load_pem_x509_certificate(chain)
        return {
            "chain": chain.decode(),
            "roots": _pem([self.root]),
            "not_after": leaf.not_valid_after_utc.timestamp(),
            "intermediates": self.intermediates,
            "revoked": sorted(self.revoked),
        }

    async def handle(self, node: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
            answer = self.sign(node, line)
            if "error" in answer:
                print(f"{time.strftime('%H:%M:%S')} node {node}: refused: {answer['error']}", flush=True)
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (OSError, TimeoutError, ValueError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def serve(self) -> None:
        folder = ca_socket(self.state.dir, "x").parent
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        os.chmod(folder.parent, 0o700)
        for node in self.cluster_of:
            path = ca_socket(self.state.dir, node)
            path.unlink(missing_ok=True)
            old = os.umask(0o177)  # the socket is made 0600: no moment when another user could connect
            try:
                await asyncio.start_unix_server(functools.partial(self.handle, node), path=str(path), limit=REQUEST_MAX)
            finally:
                os.umask(old)
            os.chmod(path, 0o600)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(f"mesh CA: {len(self.cas)} cluster intermediates, {len(self.cluster_of)} node sockets; ready", flush=True)
        await stop.wait()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m crossmesh.drivers.lab.meshca LAB_DIR", file=sys.stderr)
        return 2
    state = daemon_state(argv[0])
    if isinstance(state, str):
        print(state, file=sys.stderr)
        return 2
    asyncio.run(CA(state).serve())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
