"""`crossmesh ui`'s web server (aiohttp): the page, its JSON views and the live flow stream.

Imperative shell around pure views: the picture is `render/graph.py` laid out by Graphviz, the
tunnel and service views `observe/views.py`, the trace `policy/trace.py` — the code behind
`crossmesh graph`, `lab status` and `policy trace`. Lab readings (WireGuard counters, backend
health) are blocking reads and run in a thread; the flow stream is one relay connection
(`relay.FlowHub`) fanned out to every page as Server-Sent Events.

    GET /                 the page (static/index.html: plain ES modules and CSS, no build step)
    GET /api/topology     {"svg", "tunnels", "nodes", "summary", …}; tunnels coloured by health
    GET /api/services     [{"service", "port", "tiers": [[backend, …], …], "serving", …}]
    GET /api/flows        text/event-stream: {"relay"}, then {"flow"} / {"nodes"} / {"relay"} events
    GET /api/trace?from=&to=&port=&proto=   the policy trace of one flow: {"verdict", "lines", "trace"}

The server binds 127.0.0.1 by default: it shows the mesh's layout and traffic to whoever can
reach it, and has no login.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from aiohttp import web

from crossmesh.drivers import graphviz
from crossmesh.errors import CrossmeshError, UsageError
from crossmesh.istio.index import IstioIndex
from crossmesh.model.plan import Plan
from crossmesh.observe import health as healths
from crossmesh.observe import views
from crossmesh.policy import trace as traces
from crossmesh.policy.evaluator import PolicyIndex
from crossmesh.render.graph import dot
from crossmesh.ui.relay import FlowHub
from crossmesh.ui.sources import Readings

STATIC = resources.files("crossmesh.ui") / "static"
CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
KEEPALIVE = 15.0  # seconds between SSE comments, so proxies and browsers keep an idle stream open
# The page's own files only: no inline script or style, no other origin (every string it shows is
# data put in with textContent; this is the second fence).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@dataclass
class Ui:
    plan: Plan
    index: PolicyIndex
    readings: Readings
    hub: FlowHub
    source: str  # what is shown: "lab cm-TAG" or the mesh file
    clock: Callable[[], float] = time.time
    istio: IstioIndex | None = None  # spec.istio: the trace goes on at the destination's proxy, as the CLI's
    _svg: dict[str, str] = field(default_factory=dict)  # DOT text → SVG: the layout only changes with health

    async def svg(self, text: str) -> str:
        if text not in self._svg:
            if len(self._svg) > 32:
                self._svg.clear()
            self._svg[text] = await asyncio.to_thread(graphviz.svg, text)
        return self._svg[text]


UI_KEY = web.AppKey("ui", Ui)


def make_app(ui: Ui) -> web.Application:
    app = web.Application(middlewares=[_headers])
    app[UI_KEY] = ui
    app.router.add_get("/", _index)
    app.router.add_get("/static/{name}", _static)
    app.router.add_get("/api/topology", _topology)
    app.router.add_get("/api/services", _services)
    app.router.add_get("/api/flows", _flows)
    app.router.add_get("/api/trace", _trace)
    app.cleanup_ctx.append(_relay)
    return app


async def _relay(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[UI_KEY].hub.run())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@web.middleware
async def _headers(request: web.Request, handler: Any) -> web.StreamResponse:
    response: web.StreamResponse = await handler(request)
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def _file(name: str) -> web.Response:
    entry = STATIC / name
    suffix = "." + name.rpartition(".")[2]
    if "/" in name or name.startswith(".") or suffix not in CONTENT_TYPES or not entry.is_file():
        raise web.HTTPNotFound(text=f"no such file: {name}")
    return web.Response(body=entry.read_bytes(), content_type=CONTENT_TYPES[suffix], charset="utf-8")


async def _index(request: web.Request) -> web.Response:
    return _file("index.html")


async def _static(request: web.Request) -> web.Response:
    return _file(request.match_info["name"])


async def _topology(request: web.Request) -> web.Response:
    ui = request.app[UI_KEY]
    error = ""
    health: dict[healths.Pair, healths.TunnelHealth] | None = None
    try:
        stats = await asyncio.to_thread(ui.readings.tunnel_stats)
        if stats is not None:
            health = healths.merge(ui.plan, stats, ui.clock())
    except (OSError, CrossmeshError) as err:
        error = f"WireGuard counters not read: {err}"
    data = views.topology(ui.plan, health, read_error=error)
    data["source"] = ui.source
    try:
        data["svg"] = await ui.svg(dot(ui.plan, health))
    except CrossmeshError as err:  # Graphviz missing or failing: the tables still show
        data["svg"] = ""
        data["error"] = (data["error"] + "; " if data["error"] else "") + str(err)
    return web.json_response(data)


async def _services(request: web.Request) -> web.Response:
    ui = request.app[UI_KEY]
    try:
        healthy = await asyncio.to_thread(ui.readings.backend_health)
    except (OSError, CrossmeshError):
        healthy = None
    return web.json_response({"healthRead": healthy is not None, "services": views.services(ui.plan, healthy)})


async def _flows(request: web.Request) -> web.StreamResponse:
    hub = request.app[UI_KEY].hub
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
    await response.prepare(request)
    queue = hub.subscribe()

    async def send(message: dict[str, Any]) -> None:
        await response.write(f"data: {json.dumps(message, separators=(',', ':'))}\n\n".encode())

    try:
        await send({"relay": hub.status()})
        for flow in list(hub.recent):
            await send({"flow": flow})
        while True:
            try:
                message = await asyncio.wait_for(queue.get(), KEEPALIVE)
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            await send(message)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        hub.unsubscribe(queue)
    return response


async def _trace(request: web.Request) -> web.Response:
    ui = request.app[UI_KEY]
    q = request.query
    missing = [k for k in ("from", "to", "port", "proto") if not q.get(k)]
    if missing:
        return _bad(f"missing {', '.join(missing)}: /api/trace?from=SRC&to=DST&port=PORT&proto=TCP")
    try:
        domain = ui.plan.istio.trust_domain if ui.plan.istio is not None else ""
        result = traces.trace(
            ui.plan, ui.index, q["from"], q["to"], f"{q['port']}/{q['proto']}", istio=ui.istio, trust_domain=domain
        )
    except UsageError as err:
        return _bad(str(err))
    return web.json_response(
        {"verdict": result.first.verdict, "lines": result.lines(), "trace": result.as_json(ui.index.by_policy_id)}
    )


def _bad(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port; UsageError naming the fix when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as err:
        sock.close()
        if err.errno == 98:  # EADDRINUSE
            raise UsageError(f"port {port} is in use: pass --port with a free one, e.g. --port {port + 1}") from None
        raise UsageError(f"--host {host} --port {port}: cannot listen there: {err.strerror}") from None
    return sock


async def serve(ui: Ui, sock: socket.socket, announce: Callable[[str], None]) -> None:
    """Serve on `sock` until cancelled (Ctrl-C)."""
    runner = web.AppRunner(make_app(ui), access_log=None)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        announce(f"http://{shown}:{port}/")
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
