"""One session of an agent with etcd, over any `crossmesh.kv.api.Kv` (etcd's gRPC API, or the
in-memory store of the unit tests): read, apply, publish under a lease, then follow.

- The mesh first, then the record: the session reads the intents (etcd-fed) and every node's record,
  applies them, and only then takes its lease and publishes — once peers learn of this node, it has
  them all and each can initiate its handshake at once. (The lease comes after that apply, which on
  a loaded host can take longer than the TTL.)
- Each watch starts at the revision its read saw, so nothing between the two is missed. A watch whose
  stream breaks resumes from the revision after the last event it delivered, on the same member if
  it still answers; one whose history was compacted reads everything under its prefix again.
- The lease is refreshed every third of its TTL; a record deleted or overwritten by someone else, or
  a key rotated, is published at once. A failed refresh or read ends the session: the daemon keeps the
  data plane as it is, connects again (to whichever member answers) and starts over with a full read.
- Etcd-fed, the node reports `status/<node>` (intents.NodeStatus) when what it reports changes (an
  apply, an intent, an error) and otherwise with its lease refreshes at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from crossmesh.agent.log import log
from crossmesh.kv.api import Entry, Event, Kv, KvCompacted, KvDenied, KvUnavailable

if TYPE_CHECKING:
    from crossmesh.agent.daemon import Agent

RESUME_AFTER = 0.2  # seconds before a broken watch is resumed (a member that keeps ending it is not spun on)


async def run(agent: Agent, kv: Kv) -> None:
    layout = agent.layout
    agent.metrics.etcd_session()
    told = None
    if agent.cfg.intent_source == "etcd":
        told = await kv.range(layout.intents)
        agent.load_intents(told.entries)
    got = await kv.range(layout.nodes)
    agent.load(got.entries)
    active = await kv.range(layout.gateways)  # topology gateways: each site's active gateway
    agent.failover.load(active.entries)
    agent.dirty.clear()
    with contextlib.suppress(Exception):  # logged and reported; the apply loop tries again
        await asyncio.to_thread(agent.apply)
    agent.report.set()
    lease = await kv.grant(agent.ttl)
    granted_at = time.monotonic()  # refreshes count from here, however long the put takes
    agent.metrics.lease_granted(lease.ttl)
    await publish(agent, kv, lease.id)
    agent.lease_refreshed = time.time()
    granted = f"ttl {lease.ttl}s"
    if lease.ttl != agent.ttl:  # etcd raises a TTL below its minimum (1.5 election timeouts)
        granted += f": etcd's minimum, not {agent.ttl}s"
    what = "published" if agent.own is not None else "connected, no record to publish yet:"
    log(f"{what} {agent.node} (lease {lease.id:x}, {granted}) via {kv.endpoint}")
    watched = agent.metrics.watched  # each batch's arrival noted: the watch lag ends with the apply
    work = [
        keep(agent, kv, lease.id, granted_at),
        follow(kv, layout.nodes, got.revision + 1, watched(agent.record_events), agent.load),
        agent.stop.wait(),
        follow(kv, layout.gateways, active.revision + 1, watched(agent.failover.events), agent.failover.load),
        agent.failover.run(kv),
    ]
    if told is not None:
        intents = follow(kv, layout.intents, told.revision + 1, watched(agent.intent_events), agent.load_intents)
        work += [intents, report(agent, kv)]
    tasks = [asyncio.ensure_future(w) for w in work]
    stopper = tasks[2]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for t in done:
        if t is not stopper and not t.cancelled() and t.exception() is not None:
            raise t.exception()  # type: ignore[misc]
    if agent.stop.is_set():
        await kv.revoke(lease.id)  # a clean stop withdraws the node at once


async def keep(agent: Agent, kv: Kv, lease: int, granted_at: float) -> None:
    due = granted_at + agent.refresh_every
    while True:
        # A rotated key (or our record deleted) is published at once, not at the next refresh:
        # until peers have the new public key, this node's sessions are down.
        # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation that comes
        # as its timeout fires, and the session would never end.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, due - time.monotonic())):
                await agent.put_needed.wait()
        if agent.put_needed.is_set():
            await publish(agent, kv, lease)
        if time.monotonic() >= due:
            sent = time.monotonic()
            async with asyncio.timeout(agent.ttl):
                await kv.refresh(lease)
            agent.lease_refreshed = time.time()
            agent.metrics.lease_renewed(sent)
            agent.write_status()
            agent.report.set()
            due = sent + agent.refresh_every


async def publish(agent: Agent, kv: Kv, lease: int) -> None:
    """Put our record (or withdraw it, without an intent). A rotated key goes onto the device just
    before: a peer that learns it from etcd and initiates a handshake at once finds this end ready."""
    agent.put_needed.clear()
    previous = None
    try:
        if agent.pending is not None:
            previous, agent.private, agent.pending = agent.private, agent.pending, None
            with contextlib.suppress(Exception):  # logged; the record goes out all the same
                await asyncio.to_thread(agent.apply)
        key = agent.layout.node(agent.node)
        if agent.own is None:
            if agent.announced or await kv.get(key) is not None:
                await kv.delete(key)
                log(f"withdrew the record of {agent.node}")
            agent.announced = False
            return
        await kv.put(key, agent.own.encode(), lease=lease)
    except BaseException:  # the session ending (etcd gone) cancels this too
        if previous is not None:
            # The rotated key was not published: the device goes back to the key its peers know
            # (the apply loop sets it), and the new one waits for the next session to publish it.
            # Had the put landed after all, that session's publish puts the new key on at once.
            agent.private, agent.pending = previous, agent.private
            agent.dirty.set()
            log("the rotated key could not be published: the device keeps the previous one")
        raise
    agent.announced = True


async def follow(
    kv: Kv,
    prefix: bytes,
    start: int,
    events: Callable[[list[Event]], None],
    reread: Callable[[list[Entry]], None],
) -> None:
    revision = start
    while True:
        try:
            async for batch in kv.watch(prefix, revision):
                events(batch)
                revision = batch[-1].entry.mod_revision + 1
        except KvCompacted as err:
            log(f"watch of {prefix.decode(errors='replace')}: {err}; reading it again")
            snapshot = await kv.range(prefix)
            reread(snapshot.entries)
            revision = snapshot.revision + 1
        except KvUnavailable as err:
            await asyncio.sleep(RESUME_AFTER)
            await kv.get(prefix)  # the member gone too: this raises, and the session ends
            log(f"watch of {prefix.decode(errors='replace')} broke ({err}); resumed from revision {revision}")


async def report(agent: Agent, kv: Kv) -> None:
    key = agent.layout.status(agent.node)
    last, sent_at, denied = None, 0.0, False
    while True:
        await agent.report.wait()
        agent.report.clear()
        status = agent.node_status()
        same = replace(status, at=0.0)
        if same == last and time.monotonic() - sent_at < 0.9 * agent.refresh_every:
            continue
        try:
            await kv.put(key, status.encode())
        except KvDenied as err:  # etcd roles without the status key: the agent runs all the same
            if not denied:
                log(f"cannot report this node's status: {err}")
            denied = True
            continue
        last, sent_at = same, time.monotonic()
