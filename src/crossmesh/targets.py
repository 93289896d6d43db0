"""The upstream versions crossmesh renders for and was tested against: one place, printed by
`crossmesh version` and checked by the tests against the schemas kept in tests/reference."""

from __future__ import annotations

TARGETS: dict[str, str] = {
    "cilium": "1.20.0",  # Helm values schema and values.yaml in tests/reference/cilium/v1.20.0
    "talos": "1.13.9",  # config schema in tests/reference/talos/v1.13.9
    "mcs-api": "0.5.2",  # ServiceExport / ServiceImport CRDs in tests/reference/mcs-api/v0.5.2
    "wireguard": "wg-quick / wireguard-go (any: the configuration format is stable)",
    "etcd": "3.4+ (v3 API)",
}
