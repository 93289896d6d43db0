"""A reader of the lab's flow relay: connect to its Unix socket, ask, and read flows and node statuses.

`crossmesh observe` reads with `RelayStream` (flows and statuses as they come, following or not); a
check or the UI that wants what the relay holds at once takes a `snapshot`. The protocol (observe/wire.py) is
one request line, then JSON lines. The relay is another process and its socket a file in a folder:
what it sends is untrusted, and judged by the protocol's `Decoder`: a line longer than `MAX_LINE` is
skipped whole (its rest is read and dropped, never held), and a line that is not JSON or not a valid
flow or status is skipped too; each is counted in `malformed` with the first reason kept, so the
reader can say so — one bad line never
stops the stream or raises. What does raise, all `CrossmeshError`s:

    NoRelay        nothing listens at the socket (no file, or a file nobody serves)
    RelayDenied    the socket is there but this user may not open it (the relay serves root)
    RelayError     a connect or read timed out, or the connection failed in the middle

A relay that closes the connection ends the iteration quietly: `status` is then None if it never
sent its status line, which the reader should say.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from crossmesh.errors import CrossmeshError, EnvironmentProblem
from crossmesh.observe.flows import Flow
from crossmesh.observe.wire import MAX_LINE, Decoder, Malformed, Request, Status, request_line

SOCKET_NAME = "flows.sock"  # in the lab's folder, /run/crossmesh/cm-<tag>/
CONNECT_TIMEOUT = 3.0  # seconds
READ_TIMEOUT = 10.0  # seconds without a byte: the relay sends a status line every second while following
CHUNK = 65536


class NoRelay(EnvironmentProblem):
    """No relay serves the socket."""


class RelayDenied(EnvironmentProblem):
    """The relay's socket may not be opened by this user."""


class RelayError(CrossmeshError):
    """The relay did not answer in time, or the connection broke."""


class RelayStream:
    """One request to the relay and its answer, as an iterator of `Flow` and `Status`.

    Use as a context manager, so the connection is closed (which is how a follower says it is done):

        with RelayStream(path, since=None, follow=False) as stream:
            for item in stream: ...
        stream.malformed, stream.first_problem, stream.status
    """

    def __init__(
        self,
        path: Path,
        *,
        since: float | None,
        follow: bool,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        max_line: int = MAX_LINE,
    ) -> None:
        self.path = path
        self.since, self.follow = since, follow
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.max_line = max_line
        self.malformed = 0
        self.first_problem = ""
        self.status: Status | None = None  # the latest status line
        self._sock: socket.socket | None = None

    def __enter__(self) -> RelayStream:
        if self._sock is None:
            self.connect()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.connect_timeout)
        try:
            sock.connect(str(self.path))
            sock.settimeout(self.read_timeout)
            sock.sendall(request_line(Request(self.since, self.follow)))
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as err:
            sock.close()
            raise NoRelay(f"{self.path}: no flow relay listens there ({err.strerror})") from err
        except PermissionError as err:
            sock.close()
            raise RelayDenied(f"{self.path}: permission denied — the flow relay serves root only: run as root") from err
        except TimeoutError as err:
            sock.close()
            raise RelayError(f"{self.path}: the flow relay did not accept within {self.connect_timeout:g} s") from err
        except OSError as err:
            sock.close()
            raise RelayError(f"{self.path}: cannot reach the flow relay: {err.strerror or err}") from err
        self._sock = sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __iter__(self) -> Iterator[Flow | Status]:
        if self._sock is None:
            raise RelayError("the relay stream is not connected (use it in a `with` block)")
        decoder = Decoder(self.max_line)
        while True:
            chunk = self._recv()
            for item in decoder.feed(chunk) if chunk else decoder.end():
                if isinstance(item, Malformed):
                    self.malformed += 1
                    self.first_problem = self.first_problem or item.reason
                    continue
                if isinstance(item, Status):
                    self.status = item
                yield item
            if not chunk:
                return

    def _recv(self) -> bytes:
        if self._sock is None:
            return b""  # closed by the reader between two lines
        try:
            return self._sock.recv(CHUNK)
        except TimeoutError as err:
            raise RelayError(f"{self.path}: the flow relay sent nothing for {self.read_timeout:g} s") from err
        except OSError as err:
            raise RelayError(f"{self.path}: the connection to the flow relay failed: {err.strerror or err}") from err


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the relay held at one moment: its flows (time order), its status line (None: it closed
    before sending one), and how many of its lines were malformed (the first one's reason)."""

    flows: list[Flow]
    status: Status | None
    malformed: int
    first_problem: str


def snapshot(path: Path, *, since: float | None = None, read_timeout: float = READ_TIMEOUT) -> Snapshot:
    """The relay's flows from `since` on, read up to its status line, for a caller that wants them at
    once (a check waiting for a flow it caused, the UI's first page); raises as `RelayStream` does."""
    flows: list[Flow] = []
    with RelayStream(path, since=since, follow=False, read_timeout=read_timeout) as stream:
        for item in stream:
            if isinstance(item, Status):
                break
            flows.append(item)
    return Snapshot(flows, stream.status, stream.malformed, stream.first_problem)


def socket_path(lab_dir: Path) -> Path:
    """The relay's socket in a lab's folder (`LabState.dir`)."""
    return lab_dir / SOCKET_NAME
