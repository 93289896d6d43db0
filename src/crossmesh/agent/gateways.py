"""Which gateway of a site is active, and when a gateway agent should change that (issue 16).

The active gateway is a runtime fact kept in etcd (`/crossmesh/<mesh>/gateways/<site>`): the value
here, written by the operator (the preferred gateway, epoch 1) and by the site's own gateways with a
compare on the value they read, so of two standbys racing on the same evidence one wins.

A gateway agent feeds each probe round into its `Judge` and asks it what to write. The evidence is
chosen so a standby never takes over for a fault of its own or of the remote side: it counts only
remote sites it reaches *directly* (its own tunnel answers) but not *via* the active gateway (the
path of every non-active node of the site). One lost round decides nothing; the preferred gateway
takes its place back only after HOLD_DOWN seconds of continuous health, so a flapping link does not
move the site network back and forth.

Pure: no I/O, no clock (every call takes `now`), no randomness.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from crossmesh.agent.untrusted import json_object, shown

MISSES = 3  # consecutive rounds of evidence before a standby takes over
HOLD_DOWN = 10.0  # seconds of continuous health before the preferred gateway takes back
INTERVAL = 0.1  # seconds between probe rounds, as the design note sets it (the agent's loop)
MAX_GAP = 1.0  # seconds between two rounds past which health seen before no longer counts as continuous
# An active gateway not yet seen forwarding (no probe through it answered since it became active, or
# since this agent started) is given this long before lost probes count against it: while a site
# comes up, its active gateway's routes and peers arrive a few seconds after its standbys probe.
GRACE = 30.0

ACTIVE_MAX_BYTES = 4096  # a value is ~200 bytes; anything much larger is not one
MAX_EPOCH = 2**53  # JSON's exact integers: any reader gets the same epoch back
_LISTED_SITES = 8  # remote sites a takeover reason names before "and N more"


class GatewayError(ValueError):
    """An active-gateway value that cannot be used; the message names the field and why."""


@dataclass(frozen=True, slots=True)
class ActiveGateway:
    """The value of `/crossmesh/<mesh>/gateways/<site>`."""

    active: str  # the node name of the gateway that carries the site network
    epoch: int  # 1 when the operator creates it, +1 at every change
    since: float  # unix time of the change
    by: str  # the node (or operator) that wrote it
    reason: str  # why, for people reading `status` and the logs

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()


_FIELDS: dict[str, tuple[type, ...]] = {
    "active": (str,),
    "epoch": (int,),
    "since": (float, int),
    "by": (str,),
    "reason": (str,),
}
_MAX_CHARS = {"by": 253, "reason": 1024}


def decode_active(raw: bytes, site: str, gateways: Sequence[str]) -> ActiveGateway:
    """The value etcd holds for `site` → an ActiveGateway naming one of `gateways`, or GatewayError.

    Total: nothing the value holds raises anything else (anyone with write access to the key may
    have put it there)."""
    where = f"active gateway of site {site}"
    try:
        data = json_object(raw, ACTIVE_MAX_BYTES)
    except ValueError as err:
        raise GatewayError(f"{where}: {err}") from None
    missing, unknown = sorted(set(_FIELDS) - set(data)), sorted(set(data) - set(_FIELDS))
    if unknown:
        raise GatewayError(f"{where}: unknown field {', '.join(repr(k[:40]) for k in unknown[:5])}")
    if missing:
        raise GatewayError(f"{where}: missing field {', '.join(missing)}")
    for name, types in _FIELDS.items():
        _check(where, name, data[name], types)
    value = ActiveGateway(**{**data, "since": float(data["since"])})
    if value.active not in gateways:
        raise GatewayError(f"{where}: active {shown(value.active)} is not a gateway of site {site}")
    return value


def _check(where: str, name: str, value: Any, types: tuple[type, ...]) -> None:
    """One field of a value: its JSON type, then its range."""
    if type(value) not in types:  # exact: JSON true is not the integer 1
        want = "a number" if float in types else {str: "a string", int: "an integer"}[types[0]]
        raise GatewayError(f"{where}: {name} is {shown(value)}, not {want}")
    if name == "epoch" and not 1 <= value <= MAX_EPOCH:
        raise GatewayError(f"{where}: epoch {shown(value)} out of range 1..2**53")
    if name == "since" and not (value >= 0 and _finite(value)):
        raise GatewayError(f"{where}: since {shown(value)} is not a time (finite, not negative)")
    if isinstance(value, str):
        if name in _MAX_CHARS and len(value) > _MAX_CHARS[name]:
            raise GatewayError(f"{where}: {name} is {len(value)} characters, over {_MAX_CHARS[name]}")
        if not value.isprintable() or (name != "reason" and not value):
            raise GatewayError(f"{where}: {name} {shown(value)} is empty or holds control characters")


def _finite(value: float) -> bool:
    """A number a float holds exactly enough to be a time: not infinite, not NaN, not an integer
    too large for a float."""
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


@dataclass(frozen=True, slots=True)
class Remote:
    """One probe round's answers about one remote site's active gateway; None: not probed."""

    direct: bool | None  # own tunnel → the remote active's tunnel address
    via: bool | None  # through the local active gateway → the remote active's node address


@dataclass(frozen=True, slots=True)
class Health:
    """One probe round as a gateway sees it."""

    forwarding: bool  # its own ip_forward is on
    device_up: bool  # its WireGuard device is up
    remotes: Mapping[str, Remote] = field(default_factory=dict)  # remote site → answers

    def self_ok(self) -> bool:
        return self.forwarding and self.device_up

    def reached(self) -> list[str]:
        """The remote sites that answered on the direct path, sorted."""
        return sorted(site for site, r in self.remotes.items() if r.direct)

    def active_failing(self) -> bool:
        """Evidence against the local active gateway: this gateway is fine, some remote site answers
        directly, and every one that does was lost through the active."""
        reached = self.reached()
        return self.self_ok() and bool(reached) and all(self.remotes[s].via is False for s in reached)

    def healthy(self) -> bool:
        """Fit to be active: forwarding, device up, and every remote site probed (at least one) answers
        directly — no evidence about its uplink is not health."""
        probed = [r.direct for r in self.remotes.values() if r.direct is not None]
        return self.self_ok() and bool(probed) and all(probed)


class Judge:
    """One gateway agent's decisions for its site: fed every probe round, asked what to write.

    Streaks count rounds since the last value of the key it saw; a new value (another epoch) starts
    them again, since they measured the paths through a gateway that may no longer be active. (The
    rounds before the first value seen count: they were taken through the gateway the node routed by.)"""

    __slots__ = (
        "own", "misses", "hold_down", "max_gap", "grace",
        "_failing", "_healthy_since", "_last", "_lost", "_seen", "_proven", "_first",
    )  # fmt: skip

    def __init__(
        self,
        own: str,
        *,
        misses: int = MISSES,
        hold_down: float = HOLD_DOWN,
        max_gap: float = MAX_GAP,
        grace: float = GRACE,
    ) -> None:
        if misses < 1 or hold_down < 0 or max_gap <= 0:
            raise ValueError(f"misses {misses} must be ≥ 1, hold_down {hold_down} ≥ 0 and max_gap {max_gap} > 0")
        self.own = own
        self.misses = misses
        self.hold_down = hold_down
        self.max_gap = max_gap
        self._failing = 0  # consecutive rounds of evidence against the active
        self._healthy_since: float | None = None  # start of the current run of healthy rounds
        self._lost: list[str] = []  # the remote sites lost through the active in the last round
        self._last: float | None = None  # when the last round was observed
        self._seen: tuple[str, int] | None = None  # (active, epoch) of the value last decided on
        self.grace = grace
        self._proven = False  # a probe through the active answered since it became active (as seen here)
        self._first: float | None = None  # when this agent first saw the current value

    def observe(self, now: float, health: Health) -> None:
        """Count one probe round. Rounds further apart than `max_gap` are not continuous health."""
        if self._last is not None and now - self._last > self.max_gap:
            self._healthy_since = None
        self._last = now
        if any(r.via for r in health.remotes.values()):
            self._proven = True
        if health.active_failing():
            self._failing += 1
            self._lost = health.reached()
        else:
            self._failing, self._lost = 0, []
        if not health.healthy():
            self._healthy_since = None
        elif self._healthy_since is None:
            self._healthy_since = now

    def decide(self, now: float, current: ActiveGateway | None, order: Sequence[str]) -> ActiveGateway | None:
        """The value to write (with a compare on `current`), or None: nothing to do. Asked again
        before its write is seen, it proposes the same epoch again: the compare refuses the repeat."""
        if current is None or self.own not in order or current.active not in order:
            return None  # the operator creates the key, and rewrites it for a gateway gone
        if self._seen not in (None, (current.active, current.epoch)):
            self._failing, self._lost, self._healthy_since = 0, [], None
            self._proven, self._first = False, None
        self._seen = (current.active, current.epoch)
        if self._first is None:
            self._first = now
        if current.active == self.own or current.epoch >= MAX_EPOCH:
            return None
        if self._failing >= self.misses and (self._proven or now - self._first >= self.grace):
            return self._takeover(now, current, self._not_forwarding(current.active))
        preferred = order[0] == self.own
        if preferred and self._healthy_since is not None and now - self._healthy_since >= self.hold_down:
            return self._takeover(now, current, f"preferred gateway back, healthy for {self.hold_down:g} s")
        return None

    def _not_forwarding(self, active: str) -> str:
        shown = self._lost[:_LISTED_SITES]
        more = len(self._lost) - len(shown)
        sites = ", ".join(shown) + (f" and {more} more" if more else "")
        return (
            f"active {active} not forwarding: {self._failing} probes through it to "
            f"site{'s' if len(self._lost) > 1 else ''} {sites} lost while the tunnels answered"
        )

    def _takeover(self, now: float, current: ActiveGateway, reason: str) -> ActiveGateway:
        return ActiveGateway(active=self.own, epoch=current.epoch + 1, since=now, by=self.own, reason=reason)
