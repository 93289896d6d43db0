"""The Istio layer of one flow, as `policy trace` shows it beside the Cilium/Kubernetes layer.

A flow crosses two independent gates in a mesh with Istio: the network policy (Cilium or
Kubernetes, on the node) and the destination's proxy (mTLS mode, then AuthorizationPolicy). The
flow passes only when both let it through, so the trace states each verdict and what decided it.

The client's side, as Istio's auto mTLS does it: a mesh pod's proxy sends mTLS with the pod's
SVID unless the destination's port is DISABLE, where it sends plaintext; a node or an outside
address has no proxy and always sends plaintext. A STRICT port refuses plaintext before any
AuthorizationPolicy is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crossmesh.istio.index import AuthzVerdict, IstioIndex, Mode, ModeDecision, Request, principal
from crossmesh.policy.model import Endpoint, EndpointKind, HttpRequest


@dataclass(frozen=True, slots=True)
class IstioLayer:
    mode: ModeDecision
    principal: str | None  # what the client presents; None: plaintext
    authz: AuthzVerdict | None  # None: refused by mTLS before authorization
    needs_http: bool  # some policy on this port reads methods or paths
    http: bool  # the traced request is HTTP

    @property
    def allowed(self) -> bool:
        return self.authz is not None and self.authz.allowed

    @property
    def verdict(self) -> str:
        return "allowed" if self.allowed else "denied"

    @property
    def reason(self) -> str:
        if self.authz is None:
            return f"{self.mode.mode} mTLS refuses the plaintext connection (a reset)"
        return self.authz.reason

    def as_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "mtls": {"mode": self.mode.mode.value, "source": self.mode.source},
            "principal": self.principal,
            "authorization": None
            if self.authz is None
            else {
                "allowed": self.authz.allowed,
                "policy": self.authz.policy or None,
                "rule": self.authz.rule,
                "reason": self.authz.reason,
            },
            "reason": self.reason,
        }

    def lines(self, dst: Endpoint, port: int) -> list[str]:
        out = [f"  istio at {dst.ref} port {port}: {self.verdict}"]
        out.append(f"    mTLS mode: {self.mode.mode} ({self.mode.source})")
        shown = self.principal if self.principal is not None else "none (plaintext)"
        out.append(f"    client principal: {shown}")
        if self.authz is None:
            out.append(f"    {self.reason}")
        else:
            out.append(f"    authorization: {self.authz.reason}")
        if self.needs_http and not self.http:
            out.append(
                "    note: policies on this port read HTTP methods or paths; traced as a TCP connection "
                "(give --http-method/--http-path to trace a request)"
            )
        return out


def istio_layer(  # noqa: PLR0913 - the parts of a flow
    index: IstioIndex,
    src: Endpoint,
    dst: Endpoint,
    port: int,
    request: HttpRequest | None,
    *,
    trust_domain: str,
) -> IstioLayer:
    """The Istio verdict of `src` → `dst` on `port` (the pod's port, after any Service DNAT)."""
    mode = index.mode(dst, port)
    who = principal(src, trust_domain) if src.kind is EndpointKind.POD and mode.mode is not Mode.DISABLE else None
    needs_http = index.needs_http(dst, port)
    http = request is not None
    if who is None and mode.mode is Mode.STRICT and dst.kind is EndpointKind.POD:
        return IstioLayer(mode, None, None, needs_http, http)
    req = Request(
        principal=who,
        source_namespace=src.namespace if who is not None else None,
        source_ip=src.addresses[0],
        port=port,
        method=request.method if request else None,
        path=request.path if request else None,
    )
    return IstioLayer(mode, who, index.authorize(dst, req), needs_http, http)
