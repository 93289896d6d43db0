"""Gateway API objects as crossmesh reads and routes them: what it accepts passes the Gateway API
CRDs and becomes the IR, and a request gets the rule Gateway API's precedence gives it, with the
reasons, and a backend by weight."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from gateway_crd import schema_problems
from hypothesis import given
from hypothesis import strategies as st

from crossmesh.gateway import parse
from crossmesh.gateway.match import Request, listener_for, pick, select
from crossmesh.gateway.model import Backend, Gateway, HTTPRoute, Match, ParentRef, PathMatch, PathType, Rule
from crossmesh.load.fields import dotted
from crossmesh.model import k8s

EXAMPLES = Path(__file__).with_name("gateway_examples.yaml")


def objects(text: str) -> list[k8s.Manifest]:
    out = []
    for raw in yaml.safe_load_all(text):
        obj = k8s.MODELS[raw["kind"]].model_validate(raw)
        ns = str(raw["metadata"].get("namespace") or "default")
        out.append(k8s.Manifest("g.yaml", 1, raw["kind"], raw["metadata"]["name"], ns, raw, obj))
    return out


def route_problems(spec: dict[str, Any]) -> list[tuple[str, str]]:
    raw = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "r"}, "spec": spec}
    (m,) = objects(yaml.safe_dump(raw))
    return [(dotted(i.path), i.message) for i in parse.check_manifest(m) if i.severity == "error"]


def test_every_accepted_object_passes_the_gateway_api_crds() -> None:
    for m in objects(EXAMPLES.read_text()):
        assert parse.check_manifest(m) == [], m.name
        assert schema_problems(m.raw) == [], m.name


def test_examples_become_the_ir_with_gateway_api_defaults() -> None:
    gateways, routes = parse.cluster_objects(objects(EXAMPLES.read_text()))
    assert [g.ref for g in gateways] == ["default/mesh-cert", "default/shop"]
    assert all(li.tls is not None and li.tls.mesh for li in gateways[0].listeners)
    catch_all = routes[0]
    assert catch_all.rules[0].matches == (Match(PathMatch(PathType.PREFIX, "/")),)
    assert catch_all.rules[0].backends == (Backend("default", "productpage", 9080, 1),)


def test_unsupported_fields_are_refused_naming_what_is_supported() -> None:
    base = {"parentRefs": [{"name": "shop"}]}
    got = route_problems(base | {"rules": [{"matches": [{"queryParams": [{"name": "a", "value": "b"}]}]}]})
    assert got[0][0] == "spec.rules[0].matches[0].queryParams" and "headers (Exact)" in got[0][1]
    got = route_problems(base | {"rules": [{"matches": [{"path": {"type": "RegularExpression", "value": "/a"}}]}]})
    assert "Exact and PathPrefix" in got[0][1]
    got = route_problems(base | {"rules": [{"backendRefs": [{"name": "a", "port": 80, "namespace": "other"}]}]})
    assert "ReferenceGrant" in got[0][1]
    redirect = {"type": "RequestRedirect", "requestRedirect": {"scheme": "https"}}
    got = route_problems(base | {"rules": [{"filters": [redirect], "backendRefs": [{"name": "a", "port": 80}]}]})
    assert got[0][0] == "spec.rules[0].backendRefs" and "RequestRedirect" in got[0][1]
    assert route_problems(base | {"hostnames": ["192.0.2.1"]})[0][1].startswith("hostname '192.0.2.1' is an IP")


SHOP = yaml.safe_load(EXAMPLES.read_text().split("---")[0])


def gateway() -> Gateway:
    (m,) = objects(yaml.safe_dump(SHOP))
    got, _ = parse.parse_manifest(m)
    assert isinstance(got, Gateway)
    return got


def routes() -> list[HTTPRoute]:
    return parse.cluster_objects(objects(EXAMPLES.read_text()))[1]


def test_the_header_matched_rule_wins_and_says_why() -> None:
    g = gateway()
    listener = listener_for(g, port=443, host="shop.example.com")
    assert listener is not None and listener.name == "https"
    req = Request("shop.example.com", "/productpage/x", "GET", {"x-version": "beta"})
    d = select(req, gateway=g, listener=listener, routes=routes())
    assert d is not None and d.route.ref == "default/productpage" and d.rule_index == 0
    assert "header X-Version: beta" in d.why
    assert d.why[-1] == "chosen over default/productpage rule 1: it matches the method (GET) and the other does not"
    assert d.headers is not None and d.headers.set == (("X-Route", "beta"),)
    plain = select(Request("shop.example.com", "/productpage"), gateway=g, listener=listener, routes=routes())
    assert plain is not None and plain.rule_index == 1 and [b.weight for b in plain.backends] == [90, 10]


def test_a_longer_prefix_beats_the_catch_all_and_a_prefix_is_by_path_element() -> None:
    g = gateway()
    listener = listener_for(g, port=80, host="shop.example.com")
    assert listener is not None
    d = select(Request("shop.example.com", "/productpage"), gateway=g, listener=listener, routes=routes())
    assert d is not None and d.route.ref == "default/productpage"
    assert d.why[-1] == "chosen over default/catch-all rule 0: exact hostname shop.example.com over any host"
    other = select(Request("shop.example.com", "/productpages"), gateway=g, listener=listener, routes=routes())
    assert other is not None and other.route.ref == "default/catch-all"
    login = select(Request("shop.example.com", "/login?next=/"), gateway=g, listener=listener, routes=routes())
    assert login is not None and login.redirect is not None and login.redirect.status_code == 301


def test_no_listener_for_a_host_outside_its_wildcard() -> None:
    assert listener_for(gateway(), port=443, host="example.com") is None
    assert listener_for(gateway(), port=443, host="a.b.example.com") is not None


# --- properties -----------------------------------------------------------------------------

PATHS = st.lists(st.sampled_from(["a", "b", "ab"]), max_size=3).map(lambda p: "/" + "/".join(p))
MATCHES = st.builds(
    Match,
    path=st.builds(PathMatch, st.sampled_from(list(PathType)), PATHS),
    method=st.sampled_from([None, "GET", "POST"]),
)


def _rank(m: Match) -> tuple[int, int, int, int]:
    exact = m.path.type is PathType.EXACT
    return (int(exact), 0 if exact else len(m.path.value), int(m.method is not None), len(m.headers))


@given(st.lists(MATCHES, min_size=1, max_size=6), PATHS, st.sampled_from(["GET", "POST"]))
def test_a_matching_rule_is_never_beaten_by_one_of_lower_precedence(
    matches: list[Match], path: str, method: str
) -> None:
    g = gateway()
    listener = g.listeners[0]
    route = HTTPRoute("default", "r", (ParentRef("default", "shop"),), (), tuple(Rule((m,)) for m in matches))
    req = Request("any.example.com", path, method)
    d = select(req, gateway=g, listener=listener, routes=[route])
    matching = [m for m in matches if m.path.matches(path) and m.method in (None, method)]
    if not matching:
        assert d is None
        return
    assert d is not None
    assert _rank(d.match) == max(_rank(m) for m in matching)
    assert d.rule_index == next(i for i, m in enumerate(matches) if m in matching and _rank(m) == _rank(d.match))


WEIGHTS = st.lists(st.integers(0, 5), min_size=1, max_size=5)


@given(WEIGHTS, st.floats(0, 1, exclude_max=True))
def test_zero_weight_backends_are_never_chosen(weights: list[int], draw: float) -> None:
    backends = [Backend("default", f"b{i}", 80, w) for i, w in enumerate(weights)]
    got = pick(backends, draw)
    assert (got is None) == (sum(weights) == 0)
    assert got is None or got.weight > 0


@given(WEIGHTS.filter(lambda w: sum(w) > 0))
def test_over_many_draws_the_split_follows_the_weights(weights: list[int]) -> None:
    backends = [Backend("default", f"b{i}", 80, w) for i, w in enumerate(weights)]
    n = 1000
    tally = dict.fromkeys((b.name for b in backends), 0)
    for k in range(n):
        chosen = pick(backends, k / n)
        assert chosen is not None
        tally[chosen.name] += 1
    total = sum(weights)
    for b in backends:
        assert abs(tally[b.name] / n - b.weight / total) <= 0.002
