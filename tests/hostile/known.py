"""Cases that fail today, each with the part of issue 18 that fixes it (one place for every mark).

Patterns are fnmatch patterns over case ids. The tests mark a matching case `xfail(strict=True)`:
when the fix merges, the case passes, the XPASS fails the run, and its line here is removed.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

from hostile.corpus import Case

B = "issue 18 part B (files & text)"
C = "issue 18 part C (render output & state)"
D = "issue 18 part D (limits, validate = plan)"
NONE = "issue 18, in no part's scope"
OWN_STATE = (
    f"{NONE}: manifests '.' or '' read the mesh's own .crossmesh/*.json as manifests, so plan passes once "
    "and then every command refuses (validate 0, plan -o json 2)"
)

KNOWN: list[tuple[str, str]] = [
    # part B: files read safely, manifest paths confined, regexes bounded, user text escaped for rich
    ("mesh-file/*/fifo", f"{B}: a FIFO as the mesh file blocks the read forever"),
    ("mesh-file/*/link-to-fifo", f"{B}: a link to a FIFO as the mesh file blocks the read forever"),
    ("mesh-file/*/dev-zero", f"{B}: a mesh file linked to /dev/zero is read until memory runs out (exit 70)"),
    ("mesh-file/*/dev-urandom", f"{B}: a mesh file linked to /dev/urandom is read without a bound (hang)"),
    ("manifest-path/*/absolute-outside", f"{B}: an absolute manifest path outside the project is read and rendered"),
    ("manifest-path/*/dot-dot-*", f"{B}: a ../ manifest path outside the project is read and rendered"),
    ("manifest-path/*/symlink-out", f"{B}: a manifest linked to a file outside the project is read and rendered"),
    ("manifest-path/*/symlinked-folder-out", f"{B}: a manifest folder linked outside the project is read"),
    ("manifest-path/*/root-folder", f"{B}: manifest path / walks the whole file system (exit 70 on /proc)"),
    ("manifest-path/*/nul-in-path", f"{B}: a NUL in a manifest path is an internal error (exit 70)"),
    ("manifest-path/*/huge-path", f"{B}: an overlong manifest path is an internal error (exit 70)"),
    ("k8s/*/http-path-regex-bomb", f"{B}: HTTP rule regexes run in a backtracking engine (policy trace hangs)"),
    ("k8s/*/http-path-regex-nested", f"{B}: HTTP rule regexes run in a backtracking engine (policy trace hangs)"),
    ("k8s/*/cilium-port-name-*", f"{B}: a Cilium port name of 20k characters is accepted (no length check)"),
    *(
        (f"argument/*/{what}-markup", f"{B}: user text printed as rich markup ([/x] raises MarkupError, exit 1)")
        for what in ("from", "to", "port", "http-path", "http-method", "output-dir", "mesh-path")
    ),
    # no part yet: the YAML parser's own work is unbounded (ruamel composes the whole file first)
    ("yaml*/*/deep-lists", f"{NONE}: YAML nested 10,000 lists deep takes minutes to parse (no depth bound)"),
    ("yaml/*/very-deep-lists", f"{NONE}: YAML nested 200,000 lists deep takes minutes to parse (no depth bound)"),
    ("yaml/*/many-nodes", f"{NONE}: a list of a million items is parsed before the node cap applies (hang)"),
    ("manifest-path/hybrid/empty-entry", OWN_STATE),
    ("manifest-path/hybrid/own-folder", OWN_STATE),
    ("manifest-path/golden-*/empty-entry", OWN_STATE),
    ("manifest-path/golden-*/own-folder", OWN_STATE),
    # part C: render removes only what it made, follows no link, sets modes whatever the umask
    ("output/*/planted-index", f"{C}: render deletes the paths its index lists, ../ and absolute ones included"),
    ("output/*/symlinked-nodes", f"{C}: render follows a linked nodes/ folder and writes private keys outside"),
    ("output/*/symlinked-state", f"{C}: a linked .crossmesh/ state folder is followed"),
    ("output/*/symlinked-keys", f"{C}: a linked .crossmesh/keys/ folder is followed"),
    ("output/*/umask-000", f"{C}: under umask 000 rendered folders are 0777"),
    # part D: limits, and every mesh validate accepts is planned (and the reverse)
    ("address/*publicAddress='0.0.0.0'", f"{D}: an unusable public address is accepted"),
    ("address/*publicAddress='255.255.255.255'", f"{D}: an unusable public address is accepted"),
    ("address/*publicAddress='127.0.0.1'", f"{D}: an unusable public address is accepted"),
    ("address/*publicAddress='224.0.0.1'", f"{D}: an unusable public address is accepted"),
    ("yaml/*/binary", f"{D}: a !!binary value is read as text (types coerced)"),
    ("k8s/*/pod-name-over-nft-comment", f"{D}: a pod name too long for the lab's nft comments is accepted"),
    ("k8s/*/cluster-ip-outside-service-cidr", f"{D}: a Service clusterIP outside the service CIDR is accepted"),
    ("k8s/*/cluster-ip-ipv6", f"{D}: validate accepts an IPv6 clusterIP that plan refuses (after writing state)"),
    ("address/*serviceCIDR='255.255.255.255/32'", f"{D}: validate accepts a /32 service CIDR; plan fails on it"),
    ("scale/*", f"{D}: no limit on nodes; validate and plan of the mesh take longer than the time limit"),
    ("k8s/*/policies-5k", f"{D}: 5,000 policies take longer than the time limit (no limit on rules)"),
    ("k8s/*/rules-20k", f"{D}: 20,000 rules take longer than the time limit (no limit on rules)"),
    ("k8s/*/list-of-10k-configmaps", f"{D}: 10,000 objects take longer than the time limit"),
]
COERCED = f"{D}: `true` in an integer field is read as 1 (types coerced)"


def reason(case: Case) -> str | None:
    if case.klass == "type-swap" and case.expect == "reject":
        return COERCED  # corpus._coerced: the only type swaps that must be refused
    return next((why for pattern, why in KNOWN if fnmatchcase(case.id, pattern)), None)


def matching(pattern: str, ids: Iterable[str]) -> list[str]:
    return [i for i in ids if fnmatchcase(i, pattern)]
