"""The L7 proxy's side of the HTTP flow records: one datagram per request to the flow daemon.

The lab's service daemon runs each node's L7 proxy (servicesd.py); the flow daemon (flowsd.py)
records what it reports, on `<lab dir>/l7.sock` (a Unix datagram socket, mode 0600). A datagram
is one request (observe/l7.py: `HttpEvent`, JSON): a request is a whole record or nothing, and
the proxy never waits on the recorder — when the flow daemon is not there (restarting, not
started yet) or its queue is full, the record is counted in `unsent` and the proxy goes on.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from crossmesh.observe import l7

SOCKET_NAME = "l7.sock"


def socket_path(lab_dir: Path) -> Path:
    return lab_dir / SOCKET_NAME


class HttpLog:
    """Sends HTTP events to the flow daemon's socket, from any thread (and any network namespace:
    a Unix socket is found by its path, which namespaces of the network do not change)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.lock = threading.Lock()
        self.sent = 0
        self.unsent = 0  # the flow daemon was not listening or its queue was full

    def send(self, event: l7.HttpEvent) -> bool:
        data = l7.encode(event)
        try:
            self.sock.sendto(data, self.path)
        except OSError:  # ENOENT, ECONNREFUSED, EAGAIN: no recorder now; the request is not held up
            with self.lock:
                self.unsent += 1
            return False
        with self.lock:
            self.sent += 1
        return True

    def close(self) -> None:
        self.sock.close()
