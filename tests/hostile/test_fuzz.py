"""Random text where the hybrid example has names, addresses and CIDRs: whatever the value, validate
and plan agree and keep the contract. Derandomized, so CI sees the same examples every run."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostile.contract import check
from hostile.corpus import BASES, Case, _swap_mesh, paths

MESH = yaml.safe_load((BASES["hybrid"].folder / "mesh.yaml").read_text())
FIELDS = [
    p
    for p in paths(MESH)
    if p[-1] in ("name", "site", "address", "publicAddress", "network", "podCIDR", "serviceCIDR", "region")
]
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=80)
ADDRESS_LIKE = st.from_regex(r"\A[0-9a-f.:/ ]{0,24}\Z")
VALUES: st.SearchStrategy[Any] = st.one_of(
    TEXT, ADDRESS_LIKE, st.integers(), st.booleans(), st.none(), st.lists(ADDRESS_LIKE, max_size=3)
)


@settings(derandomize=True, max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(FIELDS), value=VALUES)
def test_any_value_in_any_field(field: tuple[Any, ...], value: Any) -> None:
    case = Case("fuzz/hybrid/value", "hybrid", _swap_mesh(field, value))
    with tempfile.TemporaryDirectory() as root:
        problems, _ = check(case, Path(root), only=("validate", "plan-json"))
    assert not problems, "\n".join(problems)
