"""What an agent follows: the plan of every node (what records are bound against) and its own
intent (its record's planned fields, the tunnel MTU, the keepalive, the revision), from one of the
three sources of config.py — the mesh file (inline), the lab's intent file, or the operator's
intents in etcd.

Apart from the daemon because it is the one part that differs between the sources; the daemon
asks it what changed and acts (publish again, judge every record again, apply). No etcd call is
made here: the session hands it what it read and what the watch delivered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from crossmesh.agent import intents, records
from crossmesh.agent.config import AgentConfig, ConfigError, IntentSource
from crossmesh.agent.log import log
from crossmesh.kv.api import Entry, Event
from crossmesh.kv.layout import Layout


@dataclass
class Following:
    node: str
    source: IntentSource
    layout: Layout
    path: Path | None = None  # the lab's intent file
    nodes: dict[str, records.PlannedNode] = field(default_factory=dict)  # every node's plan
    mine: intents.NodeIntent | None = None  # this node's own intent (etcd; a mesh file's: revision 0)
    error: str | None = None  # why this node has no intent to follow, or follows an older one
    told: dict[str, intents.NodeIntent] = field(default_factory=dict)  # etcd: each node's last good intent
    refused: dict[str, str] = field(default_factory=dict)  # etcd: intents refused, with the reason
    seen: tuple[int, int] | None = None  # the intent file's mtime and size when read

    @classmethod
    def of(cls, cfg: AgentConfig) -> Following:
        """The start: a mesh file's plan (inline, or the intent file read once), or nothing yet
        (etcd: the session reads the intents)."""
        out = cls(cfg.node, cfg.intent_source, cfg.layout, cfg.intent_path)
        if cfg.intent_source == "inline":
            try:
                out.nodes = {n: records.planned_from(p) for n, p in (cfg.intent or {}).items()}
            except (TypeError, ValueError) as err:
                raise ConfigError(f"agent configuration: intent is not the mesh's ({err})") from None
        elif cfg.intent_source == "file":
            out.reload()
        else:
            out.settle()
        return out

    @property
    def revision(self) -> int:
        return 0 if self.mine is None else self.mine.revision

    # --- the lab's intent file --------------------------------------------------------------
    def reload(self) -> bool:
        """Read the intent file again if it changed since the last read (the lab rewrites it before
        a node joins or after one leaves). Whether it changed."""
        if self.path is None:
            return False
        try:
            st = self.path.stat()
            seen = (st.st_mtime_ns, st.st_size)
            if seen == self.seen:
                return False
            nodes = records.decode_intent(self.path.read_text())
        except (OSError, ValueError) as err:
            if self.seen is None:
                raise SystemExit(f"cannot read the mesh intent {self.path}: {err}") from None
            log(f"cannot read the mesh intent {self.path}: {err}; keeping the last one")
            return False
        first, self.seen, self.nodes = self.seen is None, seen, nodes
        if not first:
            log(f"mesh intent reloaded: {len(nodes)} nodes")
        return not first

    # --- the operator's intents in etcd -----------------------------------------------------
    def load(self, entries: list[Entry]) -> None:
        """A full read of `intents/`: every node's intent judged again."""
        told, refused = {}, {}
        for e in entries:
            name = self._name(e.key)
            got, why = intents.judge(name, e.value, self.told.get(name))
            if got is not None:
                told[name] = got
            if why is not None:
                refused[name] = why
        self.told, self.refused = told, refused
        self.settle()

    def events(self, batch: list[Event]) -> None:
        for ev in batch:
            name = self._name(ev.entry.key)
            got, why = intents.judge(name, None if ev.kind == "delete" else ev.entry.value, self.told.get(name))
            if got is None:
                self.told.pop(name, None)
            else:
                self.told[name] = got
            if why is None:
                self.refused.pop(name, None)
            else:
                if self.refused.get(name) != why:
                    log(f"refused the intent of {name[:64]!r}: {why}")
                self.refused[name] = why
        self.settle()

    def settle(self) -> None:
        """Every node's plan and this node's own intent from the intents held; the reason, logged
        once, when this node has none (it waits) or its latest is refused (it keeps the last good)."""
        self.nodes = {n: i.node for n, i in self.told.items()}
        mine, why = self.told.get(self.node), self.refused.get(self.node)
        if mine is None:
            why = why or f"waiting for intent: nothing under {self.layout.intent(self.node).decode()}"
        if why is not None and why != self.error:
            log(why if mine is None else f"this node's intent is refused: {why}")
        if mine is not None and mine.revision != self.revision:
            log(f"following intent revision {mine.revision}")
        self.mine, self.error = mine, why

    def _name(self, key: bytes) -> str:
        return key[len(self.layout.intents) :].decode(errors="replace")
