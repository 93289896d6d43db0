"""Scheduled key rotation (`spec.wireguard.keyRotation`): when an agent makes its next key.

The key's age is taken from the key file's modification time, which the one writer of keys sets
when it writes the file (`disk.write_private`): it survives the agent's restarts, so a restarted
agent neither starts the period again (a node restarted every day would never rotate) nor
rotates at once because it forgot when it last did. A key file dated in the future (the clock set
back) counts as made now.

A due rotation goes through the same path as SIGUSR1 (`Agent.rotate_key`): the new key waits as
`pending` until the session publishes it. It is not even started while etcd is unreachable or a
rotation is still pending, so a schedule that falls due during an outage rotates once etcd answers
again, not before. Pure apart from `born`, which reads the file's time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Schedule:
    born: float  # unix time the key in use was made
    period: float  # this node's jittered period in seconds (NodeIntent.rotation_period); 0: off

    @property
    def next_at(self) -> float | None:
        """Unix time of the next scheduled rotation; None when rotation is off."""
        return self.born + self.period if self.period > 0 else None

    def due(self, now: float, *, reachable: bool, pending: bool) -> bool:
        """Whether to rotate now: the key is at least a period old, etcd answers (the new public
        key can be published at once) and no earlier rotation is still waiting to be published."""
        at = self.next_at
        return at is not None and now >= at and reachable and not pending


def born(path: Path, now: float) -> float:
    """When the key file at `path` was written (its mtime), at the latest `now`; `now` when it
    cannot be read (the agent read the key a moment ago: a vanished file is not an old key)."""
    try:
        return min(os.stat(path).st_mtime, now)
    except OSError:
        return now
