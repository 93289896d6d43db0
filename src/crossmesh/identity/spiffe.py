"""SPIFFE ids as Istio names workloads: `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.

An Istio principal (what AuthorizationPolicy's `principals` match) is the same id without
`spiffe://`. Parsing follows the SPIFFE ID standard (SPIFFE-ID.md, "2. SPIFFE Identity"): lowercase
scheme and trust domain, no port, user info, query or fragment, path segments of letters, digits,
`.`, `-` and `_` that are neither empty nor `.`/`..`; and Istio's shape on top (exactly
`ns/<namespace>/sa/<service account>`). A refusal says which of these the id breaks, because it
ends up in a proxy log or a CLI message that someone reads to find the misconfigured workload.

The trust domain is held to a DNS name (the mesh file says `spec.trustDomain: cluster.local`), a
little stricter than SPIFFE, which also allows `_`: Istio's default and every real deployment's
trust domain is a DNS name, and a typo with an underscore is more likely than an intent."""

from __future__ import annotations

import re
from dataclasses import dataclass

SCHEME = "spiffe://"
MAX_URI = 2048  # SPIFFE-ID.md 2.3: "URIs with a total length longer than 2048 bytes ... SHOULD NOT be used"
MAX_TRUST_DOMAIN = 253  # a DNS name's limit (RFC 1035 2.3.4, written out without the final dot)
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True, slots=True)
class SpiffeId:
    trust_domain: str
    namespace: str
    service_account: str

    @property
    def principal(self) -> str:
        """Istio's principal: `td/ns/N/sa/S` (AuthorizationPolicy `source.principals`)."""
        return f"{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @property
    def uri(self) -> str:
        return SCHEME + self.principal

    def __str__(self) -> str:
        return self.uri

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        """The id `uri` names; ValueError saying what is wrong with it otherwise."""
        if len(uri) > MAX_URI:
            raise ValueError(f"SPIFFE id is {len(uri)} characters long, more than {MAX_URI}")
        if not uri.startswith(SCHEME):
            scheme = uri.split(":", 1)[0] if ":" in uri else ""
            if scheme.lower() == "spiffe":
                raise ValueError(f"SPIFFE id {uri!r} must start with lowercase 'spiffe://'")
            raise ValueError(f"{uri!r} is not a SPIFFE id: it does not start with 'spiffe://'")
        rest = uri[len(SCHEME) :]
        for char, what in (("?", "a query"), ("#", "a fragment")):
            if char in rest:
                raise ValueError(f"SPIFFE id {uri!r} has {what} ('{char}'), which SPIFFE forbids")
        domain, slash, path = rest.partition("/")
        if "@" in domain:
            raise ValueError(f"SPIFFE id {uri!r} has user info ('@'), which SPIFFE forbids")
        if ":" in domain:
            raise ValueError(f"SPIFFE id {uri!r} has a port in its trust domain, which SPIFFE forbids")
        reason = valid_trust_domain(domain)
        if reason:
            raise ValueError(f"SPIFFE id {uri!r}: {reason}")
        if not slash or not path:
            raise ValueError(f"SPIFFE id {uri!r} names no workload: expected {SCHEME}{domain}/ns/<namespace>/sa/<name>")
        segments = path.split("/")
        for seg in segments:
            if seg == "":
                raise ValueError(f"SPIFFE id {uri!r} has an empty path segment ('//' or a trailing '/')")
            if seg in (".", ".."):
                raise ValueError(f"SPIFFE id {uri!r} has a '{seg}' path segment, which SPIFFE forbids")
            if not _SEGMENT.fullmatch(seg):
                raise ValueError(
                    f"SPIFFE id {uri!r}: path segment {seg!r} may hold only letters, digits, '.', '-' and '_'"
                )
        if len(segments) != 4 or segments[0] != "ns" or segments[2] != "sa":
            raise ValueError(
                f"SPIFFE id {uri!r} is not an Istio workload id: expected {SCHEME}{domain}/ns/<namespace>/sa/<name>"
            )
        return cls(domain, segments[1], segments[3])


def valid_trust_domain(name: str) -> str | None:
    """None when `name` can be a trust domain (a lowercase DNS name), else why not."""
    if not name:
        return "the trust domain is empty"
    if len(name) > MAX_TRUST_DOMAIN:
        return f"trust domain is {len(name)} characters long, more than {MAX_TRUST_DOMAIN}"
    for label in name.split("."):
        if not label:
            return f"trust domain {name!r} has an empty label (a leading, trailing or doubled '.')"
        if len(label) > 63:
            return f"trust domain {name!r} has a label longer than 63 characters"
        if not _LABEL.fullmatch(label.lower()):
            return (
                f"trust domain {name!r} is not a DNS name: label {label!r} may hold only a-z, 0-9 and '-', "
                "and neither start nor end with '-'"
            )
    if name != name.lower():
        return f"trust domain {name!r} has uppercase letters: write it in lowercase ({name.lower()!r})"
    return None
