"""The lab's stand-in for the cloud: it follows `crossmesh apply`.

On real nodes a new node's machine is booted by whoever runs the cloud (Terraform, an autoscaler),
and its agent joins from the operator's intents. In the lab, this process plays that part: it
watches the lab's applied revision, and when one arrives that the lab has not built (someone ran
`crossmesh apply` against the lab's etcd), it brings the lab to it — namespaces of new nodes,
their devices and agents, policies and services — with `lab up` on the revision's own files, under
the lab's lock. The operator and the agents do the rest, as on real nodes.

    python -m crossmesh.drivers.lab.provisioner /run/crossmesh/cm-<tag>
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from crossmesh.drivers import etcd
from crossmesh.drivers.lab.desired import APPLIED
from crossmesh.drivers.lab.state import LabError, LabState, lab_lock
from crossmesh.drivers.lab.up import up
from crossmesh.errors import CrossmeshError
from crossmesh.kv.api import KvError
from crossmesh.kv.layout import ADMIN_USER, Layout
from crossmesh.operator import desired as desired_mod


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def build(state: LabState, wanted: desired_mod.Desired) -> None:
    """Bring the lab to revision `wanted` (its own files, written under the lab's folder)."""
    applied = state.dir / APPLIED
    applied.mkdir(mode=0o700, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"r{wanted.revision}-", dir=applied))
    path = desired_mod.materialize(wanted, folder)
    log(f"revision {wanted.revision} ({wanted.digest[:19]}…) by {wanted.applied_by}: bringing the lab to it")
    started = time.monotonic()
    try:
        result = up(
            Path(state.mesh),
            Path(state.state_dir),
            overlay={},
            changed_only=True,
            source=path,
            applied=(wanted.revision, wanted.digest),
            progress=log,
        )
        log(f"revision {wanted.revision} built: {len(result.changes)} changes in {time.monotonic() - started:.1f} s")
    except CrossmeshError as err:
        log(f"revision {wanted.revision} cannot be built: {err}")
    finally:
        _keep_only_built(state.tag, applied)


def _keep_only_built(tag: str, applied: Path) -> None:
    """Remove the revisions' folders but the one the lab was last built from: the service daemon, the
    faults and the checks read that one (a failed build may have recorded it, or left it unused)."""
    try:
        now = LabState.load(tag)
    except LabError:
        return
    keep = Path(now.built_from).parent if now is not None and now.built_from else None
    for folder in applied.iterdir():
        if folder != keep:
            shutil.rmtree(folder, ignore_errors=True)


async def follow(lab_dir: Path) -> None:
    from crossmesh.kv.etcd import Tls, connect

    tag = lab_dir.name.removeprefix("cm-")
    me = etcd.identity(etcd.pki_dir(lab_dir), ADMIN_USER)
    while True:
        try:
            state = LabState.load(tag)
        except LabError as err:
            log(f"cannot follow the lab: {err}")
            return
        if state is None:
            return  # the lab is gone
        layout = Layout(state.mesh_name)
        try:
            kv = await connect(etcd.endpoints(tag), Tls(me.ca, me.cert, me.key))
        except KvError as err:
            log(f"etcd: {err}; retrying")
            await asyncio.sleep(1.0)
            continue
        try:
            await _watch(kv, layout, tag)
        except KvError as err:
            log(f"etcd: {err}; reconnecting")
            await asyncio.sleep(0.5)
        finally:
            await kv.close()


async def _watch(kv: Any, layout: Layout, tag: str) -> None:
    """Build the newest applied revision, then wait for another: revisions applied while a build ran
    are skipped for the newest (building each in turn would lag behind, and build stale ones)."""
    while True:
        snap = await kv.range(layout.desired)
        current = next((e.value for e in snap.entries if e.key == layout.desired), None)
        if current is not None:
            await asyncio.to_thread(_consider, tag, current)
            latest = await kv.get(layout.desired)
            if latest is not None and latest.value != current:
                continue  # applied again meanwhile: build that one now
        async for batch in kv.watch(layout.desired, snap.revision + 1):
            if any(e.kind == "put" and e.entry.key == layout.desired for e in batch):
                break


def _consider(tag: str, raw: bytes) -> None:
    try:
        wanted = desired_mod.decode(raw)
    except desired_mod.DesiredError as err:
        log(f"the applied revision is unreadable: {err}")
        return
    with lab_lock(tag):  # a `lab up` under way may be building this very revision: wait for it
        try:
            state = LabState.load(tag)
        except LabError as err:
            log(f"revision {wanted.revision} cannot be built: {err}")
            return
    if state is None or state.built_digest == wanted.digest:
        return
    build(state, wanted)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m crossmesh.drivers.lab.provisioner LAB_DIR", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(follow(Path(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
