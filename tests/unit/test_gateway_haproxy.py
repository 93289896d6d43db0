"""The gateway's HAProxy routes as `match.select` decides: a real HAProxy on loopback, in front of echo
upstreams, answers a few hundred generated requests — hosts, path-element prefix boundaries, methods,
headers — with the backend, the 404, the 500, the redirect and the header changes `select` gives, and
splits weighted backends as the weights say. Every rendered configuration passes `haproxy -c`."""

from __future__ import annotations

import http.client
import itertools
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from haproxy_kit import LOOPBACK, Running, check, free_port, haproxy, leaf_pem, make_ca, send, upstreams, write
from test_gateway_api import EXAMPLES, objects

from crossmesh.gateway import parse
from crossmesh.gateway.haproxy import HaproxyConfig, parse_stats, render
from crossmesh.gateway.match import Request, listener_for, select
from crossmesh.gateway.model import (
    Backend,
    Gateway,
    HeaderMatch,
    HeaderModifier,
    HTTPRoute,
    Listener,
    Match,
    ParentRef,
    PathMatch,
    PathType,
    Protocol,
    Redirect,
    RouteNamespaces,
    Rule,
)

PORT = free_port()


def prefix(value: str) -> Match:
    return Match(PathMatch(PathType.PREFIX, value))


def backends(*refs: tuple[str, int]) -> tuple[Backend, ...]:
    out = []
    for ref, weight in refs:
        ns, name = ref.split("/")
        out.append(Backend(ns, name, 8080, weight))
    return tuple(out)


EDGE = Gateway(
    "web",
    "edge",
    "istio",
    (
        Listener("any", PORT, Protocol.HTTP, None, allowed=RouteNamespaces.ALL),
        Listener("wild", PORT, Protocol.HTTP, "*.example.com"),
        Listener("shop", PORT, Protocol.HTTP, "shop.example.com"),
    ),
)
TO_EDGE = (ParentRef("web", "edge"),)
ROUTES = [
    HTTPRoute(
        "web",
        "shop",
        TO_EDGE,
        ("shop.example.com",),
        (
            Rule(
                (Match(PathMatch(PathType.PREFIX, "/productpage"), (HeaderMatch("X-Version", "beta"),)),),
                backends=backends(("web/v2", 1)),
            ),
            Rule((Match(PathMatch(PathType.PREFIX, "/api/"), method="POST"),), backends=backends(("web/api", 1))),
            Rule(
                (Match(PathMatch(PathType.EXACT, "/login")),),
                redirect=Redirect(scheme="https", status_code=301),
                name="login",
            ),
            Rule((prefix("/productpage"),), backends=backends(("web/v1", 3), ("web/v2", 1))),
            Rule(
                (prefix("/static"),),
                headers=HeaderModifier(
                    set=(("X-Route", "static"),), add=(("X-Extra", "added 100%"),), remove=("X-Debug",)
                ),
                backends=backends(("web/v1", 1)),
            ),
            Rule((prefix("/broken"),), backends=backends(("web/v1", 0), ("web/v2", 0))),
        ),
    ),
    HTTPRoute(
        "web",
        "wild",
        (ParentRef("web", "edge", section="wild"),),
        ("*.example.com",),
        (
            Rule((prefix("/"),), backends=backends(("web/v1", 1))),
            Rule(
                (Match(PathMatch(PathType.EXACT, "/x"), (HeaderMatch("x-a", "1"), HeaderMatch("X-B", "it's"))),),
                backends=backends(("web/api", 1)),
            ),
        ),
    ),
    HTTPRoute(
        "other",
        "any",
        (ParentRef("web", "edge", section="any"),),
        (),
        (Rule((prefix("/productpage/"),), backends=(Backend("other", "api", 8080),)),),
    ),
    HTTPRoute(
        "web",
        "zz-moved",
        TO_EDGE,
        (),
        (
            Rule(
                (prefix("/zz"), Match(PathMatch(PathType.EXACT, "/old"), method="GET")),
                redirect=Redirect(hostname="moved.example.net", port=8080),
                name="moved",
            ),
        ),
    ),
    # on one listener, a route's more specific hostname beats another's longer path
    HTTPRoute(
        "web",
        "org-wild",
        (ParentRef("web", "edge", section="any"),),
        ("*.example.org",),
        (Rule((prefix("/productpage"),), backends=backends(("web/v2", 1))), Rule(backends=backends(("web/v1", 1)))),
    ),
    HTTPRoute(
        "web",
        "org-a",
        (ParentRef("web", "edge", section="any"),),
        ("a.example.org",),
        (Rule(backends=backends(("web/api", 1))),),
    ),
    HTTPRoute(
        "web",
        "org-deep",
        (ParentRef("web", "edge", section="any"),),
        ("*.a.example.org",),
        (Rule(backends=backends(("web/api", 1))),),
    ),
    HTTPRoute(
        "other",
        "refused",
        (ParentRef("web", "edge", section="wild"),),
        (),
        (Rule(backends=(Backend("other", "api", 8080),)),),
    ),  # Same only
]
SERVICES = ["web/v1:8080", "web/v2:8080", "web/api:8080", "other/api:8080"]

HOSTS = [
    "shop.example.com",
    f"SHOP.example.com:{PORT}",
    "shop.example.com.",
    "a.example.com",
    "x.y.example.com",
    "example.com",
    "other.org",
    "a.example.org",
    "b.example.org",
    "x.a.example.org",
]
PATHS = [
    "/",
    "/productpage",
    "/productpage/",
    "/productpage/x?y=1",
    "/productpages",
    "/api",
    "/api/v1",
    "/login",
    "/login?next=/a",
    "/login/",
    "/static/a.css",
    "/staticx",
    "/broken/1",
    "/zz",
    "/zzz",
    "/old",
    "/x",
]
HEADERS = [{}, {"X-Version": "beta"}, {"x-version": "Beta"}, {"X-A": "1", "x-b": "it's"}, {"X-A": "1"}]
METHODS = ["GET", "POST"]


def expected_location(rule_name: str | None, host: str, path: str) -> str:
    """The two redirects, written out: `login` changes the scheme (so the port becomes 443, left
    out), `moved` the host and port and keeps the listener's scheme."""
    if rule_name == "login":
        return f"https://{host}{path}"
    assert rule_name == "moved"
    return f"http://moved.example.net:8080{path}"


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HaproxyConfig, Running]]:
    directory = tmp_path_factory.mktemp("edge")
    with upstreams(SERVICES) as addresses:
        config = render(
            EDGE,
            ROUTES,
            upstreams=addresses,
            certificates={},
            stats_socket=str(directory / "stats.sock"),
            crt_list_dir=str(directory),
            address=LOOPBACK,
        )
        cfg = write(config, directory)
        assert check(cfg) == ""
        with haproxy(cfg, directory / "stats.sock", [PORT]) as running:
            yield config, running


def test_every_answer_is_the_one_select_gives(edge: tuple[HaproxyConfig, Running]) -> None:
    config, running = edge
    conn = http.client.HTTPConnection(LOOPBACK, PORT, timeout=5)
    seen: Counter[str] = Counter()
    before = running.stats()
    for host, path, headers, method in itertools.product(HOSTS, PATHS, HEADERS, METHODS):
        bare = host.split(":")[0]
        listener = listener_for(EDGE, port=PORT, host=bare)
        request = Request(bare, path, method, headers)
        decision = select(request, gateway=EDGE, listener=listener, routes=ROUTES) if listener else None
        got = send(conn, host=host, path=path, method=method, headers=headers)
        after = running.stats()
        took = {be for be in config.backends if after[(be, "BACKEND")].sessions > before[(be, "BACKEND")].sessions}
        before = after
        what = f"{method} {host}{path} {headers}: {decision.why if decision else 'no rule'}"
        if decision is None:
            assert (got.status, took) == (404, set()), what
            seen["404"] += 1
        elif decision.redirect is not None:
            assert got.status == decision.redirect.status_code and not took, what
            assert got.location == expected_location(decision.rule.name, bare.lower(), path), what
            seen["redirect"] += 1
        elif not any(b.weight for b in decision.backends):
            assert (got.status, took) == (500, set()), what
            seen["500"] += 1
        else:
            allowed = {b.ref for b in decision.backends if b.weight}
            assert got.status == 200 and got.name in allowed, what
            assert took == {
                be for be, (ref, i) in config.backends.items() if (ref, i) == (decision.route.ref, decision.rule_index)
            }, what
            assert ("x-forwarded-for", "127.0.0.1") in got.headers, what
            seen[f"{decision.route.ref}#{decision.rule_index}"] += 1
    conn.close()
    # every behaviour and every forwarding rule was exercised
    assert {"404", "redirect", "500"} <= set(seen)
    forwarding = {
        f"{r.ref}#{i}" for r in ROUTES for i, rule in enumerate(r.rules) if any(b.weight for b in rule.backends)
    }
    assert forwarding - {"other/refused#0"} <= set(seen), forwarding - set(seen)
    assert "other/refused#0" not in seen  # a route of another namespace does not attach to a Same listener


def test_the_header_modifier_removes_sets_and_adds(edge: tuple[HaproxyConfig, Running]) -> None:
    conn = http.client.HTTPConnection(LOOPBACK, PORT, timeout=5)
    sent = {"X-Debug": "1", "X-Route": "client's", "X-Extra": "mine"}
    got = send(conn, host="shop.example.com", path="/static/a.css", method="GET", headers=sent)
    names = [k.lower() for k, _ in got.headers]
    assert got.name == "web/v1:8080" and "x-debug" not in names
    assert [v for k, v in got.headers if k.lower() == "x-route"] == ["static"]
    assert [v for k, v in got.headers if k.lower() == "x-extra"] == ["mine", "added 100%"]
    # another rule leaves the headers alone
    other = send(conn, host="shop.example.com", path="/productpage", method="GET", headers=sent)
    assert ("x-debug", "1") in other.headers
    conn.close()


SPLIT_PORT = free_port()
WEIGHTED = Gateway("web", "split", "istio", (Listener("http", SPLIT_PORT, Protocol.HTTP),))


def test_weights_split_a_thousand_requests_within_three_points(tmp_path: Path) -> None:
    weights = {"web/a": 90, "web/b": 10, "web/c": 0}
    route = HTTPRoute("web", "canary", (ParentRef("web", "split"),), (), (Rule(backends=backends(*weights.items())),))
    with upstreams([f"{r}:8080" for r in weights]) as addresses:
        config = render(
            WEIGHTED,
            [route],
            upstreams=addresses,
            certificates={},
            stats_socket=str(tmp_path / "s.sock"),
            crt_list_dir=str(tmp_path),
            address=LOOPBACK,
        )
        with haproxy(write(config, tmp_path), tmp_path / "s.sock", [SPLIT_PORT]) as running:
            conn = http.client.HTTPConnection(LOOPBACK, SPLIT_PORT, timeout=5)
            names = Counter(send(conn, host="any", path="/", method="GET", headers={}).name for _ in range(1000))
            conn.close()
            stats = running.stats()
    assert set(names) == {"web/a:8080", "web/b:8080"}
    for ref, weight in weights.items():
        assert abs(names[f"{ref}:8080"] / 10 - weight) <= 3, names
    counted = {config.servers[(be, s)].ref: c.sessions for (be, s), c in stats.items() if (be, s) in config.servers}
    assert counted == {f"{r}:8080": names[f"{r}:8080"] for r in weights}


def test_weights_beyond_haproxys_range_keep_their_ratio() -> None:
    route = HTTPRoute(
        "web",
        "r",
        (ParentRef("web", "split"),),
        (),
        (Rule(backends=backends(("web/a", 600000), ("web/b", 300000), ("web/c", 1), ("web/d", 0))),),
    )
    ups = {f"web/{n}:8080": ("10.0.0.1", 80) for n in "abcd"}
    text = render(WEIGHTED, [route], upstreams=ups, certificates={}, stats_socket="/s", crt_list_dir="/d").text
    assert [line.split()[-1] for line in text.splitlines() if line.strip().startswith("server ")] == [
        "256",
        "128",
        "1",
        "0",
    ]
    small = HTTPRoute(
        "web", "r", (ParentRef("web", "split"),), (), (Rule(backends=backends(("web/a", 900), ("web/b", 100))),)
    )
    text = render(WEIGHTED, [small], upstreams=ups, certificates={}, stats_socket="/s", crt_list_dir="/d").text
    assert [line.split()[-1] for line in text.splitlines() if line.strip().startswith("server ")] == ["9", "1"]


def test_haproxy_accepts_the_examples_configs(tmp_path: Path) -> None:
    manifests = objects(EXAMPLES.read_text())
    gateways, routes = parse.cluster_objects(manifests)
    pem = tmp_path / "cert.pem"
    pem.write_bytes(leaf_pem(make_ca(), "shop.example.com", ["shop.example.com"]))
    refs = {b.ref for r in routes for rule in r.rules for b in rule.backends}
    for g in gateways:
        config = render(
            g,
            routes,
            upstreams={ref: ("10.96.0.10", 9080) for ref in refs},
            certificates={li.name: str(pem) for li in g.listeners},
            stats_socket=str(tmp_path / "s.sock"),
            crt_list_dir=str(tmp_path),
        )
        assert check(write(config, tmp_path)) == "", g.ref
        assert all("/" not in name for name in config.backends)


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="route other/any rule 0: no upstream address for other/api:8080"):
        render(EDGE, ROUTES, upstreams={}, certificates={}, stats_socket="/s", crt_list_dir="/d")
    tls = Gateway("web", "t", "istio", (Listener("secure", 443, Protocol.HTTPS, "a.example.com"),))
    with pytest.raises(ValueError, match="no certificate for HTTPS listener.s. secure"):
        render(tls, [], upstreams={}, certificates={}, stats_socket="/s", crt_list_dir="/d")
    mixed = Gateway(
        "web", "m", "istio", (Listener("a", 80, Protocol.HTTP), Listener("b", 80, Protocol.HTTPS, "b.example.com"))
    )
    with pytest.raises(ValueError, match="port 80: listeners mix HTTP and HTTPS"):
        render(mixed, [], upstreams={}, certificates={"b": "/c.pem"}, stats_socket="/s", crt_list_dir="/d")


def test_parse_stats_reads_show_stat() -> None:
    text = (
        "# pxname,svname,qcur,stot,hrsp_1xx,hrsp_2xx,hrsp_4xx,hrsp_5xx,\n"
        "port-80,FRONTEND,,12,0,9,3,0,\n"
        "web:r:0,a:8080,0,7,0,7,,,\n"
        "\n"
    )
    got = parse_stats(text)
    assert got[("port-80", "FRONTEND")].sessions == 12 and got[("port-80", "FRONTEND")].responses["4xx"] == 3
    assert got[("web:r:0", "a:8080")].sessions == 7 and "4xx" not in got[("web:r:0", "a:8080")].responses


def test_render_is_deterministic() -> None:
    ups = {s: ("10.0.0.1", 8080) for s in SERVICES}
    a = render(EDGE, ROUTES, upstreams=ups, certificates={}, stats_socket="/s", crt_list_dir="/d")
    b = render(
        EDGE,
        list(reversed(ROUTES)),
        upstreams=dict(reversed(ups.items())),
        certificates={},
        stats_socket="/s",
        crt_list_dir="/d",
    )
    assert a == b
