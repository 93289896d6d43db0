"""The agent's etcd connection: plain gRPC (the lab's loopback etcd) or TLS with client
certificates (real clusters), to the first endpoint that answers."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import aetcd
import grpc
from aetcd import rpc
from aetcd import watcher as aetcd_watcher


class TlsClient(aetcd.Client):  # type: ignore[misc]
    """aetcd speaks plain gRPC only; real etcd clusters want TLS with client certificates.
    Same connection steps as aetcd's `connect`, over a secure channel."""

    def __init__(self, host: str, port: int, *, ca: str, cert: str, key: str) -> None:
        super().__init__(host=host, port=port, timeout=2, connect_wait_timeout=1)
        self._credentials = grpc.ssl_channel_credentials(
            root_certificates=Path(ca).read_bytes(),
            private_key=Path(key).read_bytes(),
            certificate_chain=Path(cert).read_bytes(),
        )

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        self._is_connecting = True
        try:
            target = f"{self._host}:{self._port}"
            self.channel = rpc.secure_channel(target, self._credentials, options=self._options.items())
            self.kvstub = rpc.KVStub(self.channel)
            self.clusterstub = rpc.ClusterStub(self.channel)
            self.leasestub = rpc.LeaseStub(self.channel)
            self.maintenancestub = rpc.MaintenanceStub(self.channel)
            self._watcher = aetcd_watcher.Watcher(
                rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
            )
            self._connected.set()
        finally:
            self._is_connecting = False


async def connect(endpoints: list[str], tls: dict[str, str] | None) -> tuple[aetcd.Client, str]:
    """A connected client and the endpoint it reached; ConnectionError when none answers."""
    last: Exception | None = None
    for endpoint in endpoints:
        url = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
        host, port = url.hostname or "", url.port or 2379
        client: aetcd.Client
        if tls:
            client = TlsClient(host, port, ca=tls["ca"], cert=tls["cert"], key=tls["key"])
        else:
            client = aetcd.Client(host=host, port=port, timeout=2, connect_wait_timeout=1)
        try:
            await client.connect()
            await client.status()
            return client, endpoint
        except Exception as err:  # noqa: BLE001 - a member down, refused, TLS refused: try the next
            last = err
            await client.close()
    raise ConnectionError(f"no etcd endpoint answers: {last}")
