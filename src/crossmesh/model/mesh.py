"""The mesh file as pydantic models.

Unknown fields are rejected everywhere (`extra="forbid"`): a typo in a mesh file
must be an error with a position, not a silently ignored setting.
"""

from __future__ import annotations

import re
from datetime import timedelta
from enum import StrEnum
from ipaddress import AddressValueError, IPv4Address, IPv4Network, NetmaskValueError
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from pydantic.alias_generators import to_camel

from crossmesh.identity.spiffe import valid_trust_domain
from crossmesh.model.durations import parse_go

# Cilium's cluster ids run 1..255, or 1..511 with `clustermesh.maxConnectedClusters: 511` (Cilium
# 1.15+, which halves the cluster-local identities); crossmesh sets that when an id passes 255.
MAX_CLUSTER_ID = 511
CILIUM_DEFAULT_MAX_CLUSTER_ID = 255

# The documented limits (README, "Limits"): validate and plan are measured fast up to them
# (benchmarks/bench_scale.py); past them validate refuses the file before any other work.
MAX_NODES = 10_000
MAX_SITES = 500
MAX_CLUSTERS = MAX_CLUSTER_ID

DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _dns1123(value: str) -> str:
    if len(value) > 63 or not DNS1123.fullmatch(value):
        shown = repr(value) if len(value) <= 63 else f"a name of {len(value)} characters"
        raise ValueError(
            f"{shown} is not a DNS-1123 label: use lower-case letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters"
        )
    return value


Name = Annotated[str, AfterValidator(_dns1123)]


def _cidr(value: Any) -> Any:
    """Only text like 10.0.0.0/16, with a message that says what is wrong: pydantic alone would
    take `10` (0.0.0.10/32) or a bare address (a /32) and answer "not a valid IPv4 network"."""
    if isinstance(value, IPv4Network):
        return value
    if not isinstance(value, str):
        raise ValueError("expected an IPv4 CIDR as text, such as 10.0.0.0/16")
    if ":" in value:
        raise ValueError("crossmesh supports IPv4 only — use an IPv4 CIDR such as 10.0.0.0/16")
    if "/" not in value:
        raise ValueError(f"no prefix length — write it as {value}/N, such as {value}/16")
    try:
        return IPv4Network(value)
    except AddressValueError as err:
        raise ValueError("not an IPv4 CIDR: bad address — write it as ADDRESS/PREFIX, such as 10.0.0.0/16") from err
    except NetmaskValueError as err:
        raise ValueError("not an IPv4 CIDR: the prefix length must be 0..32") from err
    except ValueError as err:  # the only other failure: bits set past the prefix
        raise ValueError(f"host bits set — did you mean {IPv4Network(value, strict=False)}?") from err


def _address(value: Any) -> Any:
    """Only text like 10.0.1.5: pydantic alone would also take the integer 167838021."""
    if isinstance(value, IPv4Address):
        return value
    if not isinstance(value, str):
        raise ValueError("expected an IPv4 address as text, such as 10.0.1.5")
    try:
        return IPv4Address(value)
    except AddressValueError as err:
        raise ValueError("not an IPv4 address — write four numbers 0..255, such as 10.0.1.5") from err


Cidr = Annotated[IPv4Network, BeforeValidator(_cidr)]
Address = Annotated[IPv4Address, BeforeValidator(_address)]

_DURATION = re.compile(r"([1-9][0-9]{0,5})(m|h|d)")
_UNIT = {"m": 60, "h": 3600, "d": 86400}


def duration_seconds(text: str) -> int:
    m = _DURATION.fullmatch(text)
    assert m is not None  # noqa: S101 - validated by _duration
    return int(m.group(1)) * _UNIT[m.group(2)]


def _duration(value: str) -> str:
    if not _DURATION.fullmatch(value):
        raise ValueError(
            f"{value[:20]!r} is not a duration — write a whole number of minutes, hours or days: 30m, 24h, 7d"
        )
    if not 60 <= duration_seconds(value) <= 365 * 86400:
        raise ValueError(f"{value} is out of range: between 1m and 365d")
    return value


Duration = Annotated[str, AfterValidator(_duration)]

# Istio's workload certificate lifetime: its MAX_WORKLOAD_CERT_TTL default is 90 days; under ten
# minutes a rotation at half-life (SECRET_GRACE_PERIOD_RATIO 0.5) would re-sign every five.
MIN_CERT_TTL, MAX_CERT_TTL = timedelta(minutes=10), timedelta(days=90)


def _cert_ttl(value: str) -> str:
    ttl = parse_go(value)
    if not MIN_CERT_TTL <= ttl <= MAX_CERT_TTL:
        raise ValueError(
            f"{value} is out of range: write a lifetime between 10m and 2160h "
            "(90 days, Istio's MAX_WORKLOAD_CERT_TTL), such as 24h"
        )
    return value


def _trust_domain(value: str) -> str:
    reason = valid_trust_domain(value)
    if reason is not None:
        raise ValueError(f"{reason} — a trust domain is a DNS name such as cluster.local or mesh.example.com")
    return value


CertTTL = Annotated[StrictStr, AfterValidator(_cert_ttl)]
TrustDomain = Annotated[StrictStr, AfterValidator(_trust_domain)]


class _Model(BaseModel):
    """Numbers, booleans and text are strict (StrictInt, StrictBool, StrictStr): YAML gives them their
    type, and pydantic's lax mode would read `listenPort: true` as port 1 or `mtu: "1500"` as a number."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
    )


class Topology(StrEnum):
    FULL_MESH = "full-mesh"
    GATEWAYS = "gateways"


class Provider(StrEnum):
    AWS = "aws"
    AZURE = "azure"
    GCP = "gcp"
    OPENSTACK = "openstack"
    BAREMETAL = "baremetal"


class Distribution(StrEnum):
    TALOS = "talos"
    K3S = "k3s"
    KUBEADM = "kubeadm"
    EKS = "eks"
    AKS = "aks"
    GKE = "gke"


class Cni(StrEnum):
    CILIUM = "cilium"
    FLANNEL = "flannel"
    CALICO = "calico"


class Metadata(_Model):
    name: Name


class WireGuard(_Model):
    topology: Topology = Topology.FULL_MESH
    listen_port: StrictInt = Field(default=51820, ge=1, le=65535)
    persistent_keepalive: StrictInt = Field(default=25, ge=0, le=65535)
    # Each agent makes a new key this often (jittered ±10 % per node so the mesh never re-keys at once),
    # with the zero-loss procedure of `lab rotate-keys`. None: only when asked.
    key_rotation: Duration | None = None


class Ipam(_Model):
    pod_pool: Cidr = IPv4Network("10.240.0.0/12")
    cluster_prefix: StrictInt = Field(default=16, ge=8, le=28)
    node_prefix: StrictInt = Field(default=24, ge=16, le=30)
    tunnel_pool: Cidr = IPv4Network("100.64.0.0/16")


class Probe(StrEnum):
    TCP = "tcp"
    HTTP = "http"


class HealthCheck(_Model):
    """How the lab decides that a service backend is healthy (defaults favour fast failover)."""

    probe: Probe = Probe.TCP  # tcp: connect; http: GET `path` answered 200 (UDP ports: an echo)
    path: StrictStr = "/"
    interval_ms: StrictInt = Field(default=200, ge=50, le=60_000)
    timeout_ms: StrictInt = Field(default=500, ge=10, le=60_000)
    failure_threshold: StrictInt = Field(default=2, ge=1, le=100)
    success_threshold: StrictInt = Field(default=1, ge=1, le=100)


class Site(_Model):
    name: Name
    provider: Provider
    region: StrictStr = ""
    network: Cidr
    mtu: StrictInt = Field(default=1500, ge=1280, le=9216)


class Node(_Model):
    name: Name
    site: Name
    address: Address
    public_address: Address | None = None
    gateway: StrictBool = False
    preferred: StrictBool = False  # topology gateways: the site's preferred gateway (one per site at most)
    pod_cidr: Cidr | None = Field(default=None, alias="podCIDR")
    labels: dict[StrictStr, StrictStr] = Field(default_factory=dict)


class Cluster(_Model):
    name: Name
    id: StrictInt | None = Field(default=None, ge=1, le=MAX_CLUSTER_ID)
    distribution: Distribution = Distribution.KUBEADM
    cni: Cni = Cni.CILIUM
    pod_cidr: Cidr | None = Field(default=None, alias="podCIDR")
    service_cidr: Cidr = Field(default=IPv4Network("10.96.0.0/16"), alias="serviceCIDR")
    nodes: list[Node] = Field(min_length=1)
    manifests: list[StrictStr] = Field(default_factory=list)


class Istio(_Model):
    """The service mesh (Istio's model: SPIFFE identities, mTLS, PeerAuthentication and
    AuthorizationPolicy); absent, the mesh has none and nothing about it is planned."""

    # SVID lifetime (Istio's workload certificate TTL); proxies renew at half of it
    workload_cert_ttl: CertTTL = Field(default="24h", alias="workloadCertTTL")

    @property
    def cert_ttl(self) -> timedelta:
        return parse_go(self.workload_cert_ttl)


# --- site-to-site VPN through a hub (AWS Transit Gateway) ------------------------------------------
# The values below are AWS's, from the EC2 API reference (VpnTunnelOptionsSpecification,
# TransitGatewayRequestOptions, CreateCustomerGateway): a file crossmesh accepts is one AWS accepts.

# TransitGatewayRequestOptions.AmazonSideAsn: "A private ASN ... 64512 to 65534 for 16-bit ASNs and
# 4200000000 to 4294967294 for 32-bit ASNs. The default is 64512."
AMAZON_ASN_RANGES = ((64512, 65534), (4200000000, 4294967294))
DEFAULT_AMAZON_ASN = 64512
# CreateCustomerGateway.BgpAsn: "Default: 65000. Valid values: 1 to 2,147,483,647" (larger ones go in
# BgpAsnExtended, which crossmesh does not write). The private ranges (RFC 6996) are AWS's own advice.
CUSTOMER_ASN_RANGE = (1, 2147483647)
DEFAULT_CUSTOMER_ASN = 65000
PRIVATE_ASN_RANGES = AMAZON_ASN_RANGES
# VpnTunnelOptionsSpecification.TunnelInsideCidr: "A size /30 CIDR block from the 169.254.0.0/16 range.
# The following CIDR blocks are reserved and cannot be used: 169.254.0.0/30, 169.254.1.0/30,
# 169.254.2.0/30, 169.254.3.0/30, 169.254.4.0/30, 169.254.5.0/30, 169.254.169.252/30".
INSIDE_RANGE = IPv4Network("169.254.0.0/16")
RESERVED_INSIDE = tuple(
    IPv4Network(n)
    for n in (
        "169.254.0.0/30",
        "169.254.1.0/30",
        "169.254.2.0/30",
        "169.254.3.0/30",
        "169.254.4.0/30",
        "169.254.5.0/30",
        "169.254.169.252/30",
    )
)
# Phase1/Phase2DhGroupNumbers "Valid values": phase 1 2, 14..24; phase 2 also 5.
PHASE1_DH_GROUPS = frozenset({2, *range(14, 25)})
PHASE2_DH_GROUPS = frozenset({2, 5, *range(14, 25)})
# Phase1/Phase2LifetimeSeconds: phase 1 900..28800 (default 28800), phase 2 900..3600 (default 3600).
PHASE1_LIFETIME = (900, 28800)
PHASE2_LIFETIME = (900, 3600)


def asn_ranges_text(ranges: tuple[tuple[int, int], ...]) -> str:
    return " or ".join(f"{low}..{high}" for low, high in ranges)


def _amazon_asn(value: int) -> int:
    if not any(low <= value <= high for low, high in AMAZON_ASN_RANGES):
        raise ValueError(
            f"{value} is outside the private ranges AWS takes for a transit gateway's Amazon-side ASN: "
            f"{asn_ranges_text(AMAZON_ASN_RANGES)} (16-bit or 32-bit private ASNs) — choose one there, "
            f"or leave it out for AWS's default {DEFAULT_AMAZON_ASN}"
        )
    return value


def _customer_asn(value: int) -> int:
    low, high = CUSTOMER_ASN_RANGE
    if not low <= value <= high:
        raise ValueError(
            f"{value} is outside the range AWS takes for a customer gateway's BGP ASN, {low}..{high} — "
            f"use your network's own ASN, or a private one in {PRIVATE_ASN_RANGES[0][0]}..{PRIVATE_ASN_RANGES[0][1]}"
            f" (AWS's default {DEFAULT_CUSTOMER_ASN})"
        )
    return value


def _inside_cidr(value: IPv4Network) -> IPv4Network:
    if value.prefixlen != 30 or not value.subnet_of(INSIDE_RANGE):
        raise ValueError(
            f"{value} is not a /30 inside {INSIDE_RANGE}: AWS takes a tunnel's inside CIDR only from there — "
            "write one such as 169.254.10.0/30"
        )
    if value in RESERVED_INSIDE:
        raise ValueError(
            f"{value} is reserved by AWS ({', '.join(map(str, RESERVED_INSIDE))}) — choose another /30 "
            "in 169.254.0.0/16, such as 169.254.10.0/30"
        )
    return value


def _ike_version(value: str) -> str:
    if value != "ikev2":
        raise ValueError(
            f"{value[:20]!r}: crossmesh speaks IKEv2 only (AWS's best practice: use IKEv2 unless the device "
            "cannot) — write ikev2"
        )
    return value


def _dh_groups(allowed: frozenset[int], phase: int) -> Any:
    def check(value: list[int]) -> list[int]:
        bad = [g for g in value if g not in allowed]
        if bad:
            raise ValueError(
                f"Diffie-Hellman group {bad[0]} is not one AWS permits in phase {phase} — use "
                f"{', '.join(map(str, sorted(allowed)))} (20, ECP-384, is crossmesh's default)"
            )
        if len(set(value)) != len(value):
            raise ValueError("a group is listed twice — list each once")
        return value

    return check


AmazonAsn = Annotated[StrictInt, AfterValidator(_amazon_asn)]
CustomerAsn = Annotated[StrictInt, AfterValidator(_customer_asn)]
InsideCidr = Annotated[IPv4Network, BeforeValidator(_cidr), AfterValidator(_inside_cidr)]


class Encryption(StrEnum):
    """Phase1/Phase2EncryptionAlgorithms "Valid values: AES128 | AES256 | AES128-GCM-16 | AES256-GCM-16"."""

    AES128 = "AES128"
    AES256 = "AES256"
    AES128_GCM_16 = "AES128-GCM-16"
    AES256_GCM_16 = "AES256-GCM-16"


class Integrity(StrEnum):
    """Phase1/Phase2IntegrityAlgorithms "Valid values: SHA1 | SHA2-256 | SHA2-384 | SHA2-512"."""

    SHA1 = "SHA1"
    SHA2_256 = "SHA2-256"
    SHA2_384 = "SHA2-384"
    SHA2_512 = "SHA2-512"


class Routing(StrEnum):
    BGP = "bgp"  # each tunnel carries an eBGP session; the prefixes are learned
    STATIC = "static"  # the connection's staticRoutes, on both sides


class _Algorithms(_Model):
    """The algorithms both phases offer (crossmesh's defaults: seed 001's AES-256-GCM)."""

    encryption: list[Encryption] = Field(default_factory=lambda: [Encryption.AES256_GCM_16], min_length=1)
    integrity: list[Integrity] = Field(default_factory=lambda: [Integrity.SHA2_256], min_length=1)


class Phase1(_Algorithms):
    """IKE SA proposals; DH group 20 (ECP-384) by default."""

    dh_groups: Annotated[list[StrictInt], AfterValidator(_dh_groups(PHASE1_DH_GROUPS, 1))] = Field(
        default_factory=lambda: [20], min_length=1
    )
    lifetime_seconds: StrictInt = Field(default=PHASE1_LIFETIME[1], ge=PHASE1_LIFETIME[0], le=PHASE1_LIFETIME[1])


class Phase2(_Algorithms):
    """ESP (child SA) proposals, with PFS group 20 by default; with a GCM cipher ESP uses no integrity."""

    dh_groups: Annotated[list[StrictInt], AfterValidator(_dh_groups(PHASE2_DH_GROUPS, 2))] = Field(
        default_factory=lambda: [20], min_length=1
    )
    lifetime_seconds: StrictInt = Field(default=PHASE2_LIFETIME[1], ge=PHASE2_LIFETIME[0], le=PHASE2_LIFETIME[1])


class VpnTunnel(_Model):
    inside_cidr: InsideCidr = Field(alias="insideCIDR")
    ike_version: Annotated[StrictStr, AfterValidator(_ike_version)] = "ikev2"
    phase1: Phase1 = Field(default_factory=Phase1)
    phase2: Phase2 = Field(default_factory=Phase2)
    # A file (relative to the mesh file, inside its folder) holding this tunnel's pre-shared key, e.g.
    # the one AWS generated; absent: crossmesh generates one into the state directory (0600).
    pre_shared_key_file: StrictStr | None = None


class CustomerGateway(_Model):
    asn: CustomerAsn = DEFAULT_CUSTOMER_ASN
    public_address: Address  # the device's static outside address (AWS: CustomerGateway.IpAddress)


class VpnConnection(_Model):
    """A Site-to-Site VPN connection: site `site`'s customer gateway to hub `hub`, two tunnels."""

    name: Name
    hub: Name
    site: Name
    customer_gateway: CustomerGateway
    routing: Routing = Routing.BGP
    static_routes: list[Cidr] = Field(default_factory=list)  # routing: static — the customer side's prefixes
    tunnels: list[VpnTunnel]


class HubRoute(_Model):
    destination: Cidr
    attachment: Name


class RouteTable(_Model):
    """A transit gateway route table. Attachments are named: the hub's `site` (its VPC attachment) or a
    VPN connection's name."""

    name: Name
    associations: list[Name] = Field(default_factory=list)
    propagations: list[Name] = Field(default_factory=list)
    routes: list[HubRoute] = Field(default_factory=list)


class Hub(_Model):
    """An AWS Transit Gateway: site `site`'s VPC attaches to it, VPN connections attach to it. Without
    `routeTables`, AWS's default: one table that every attachment is associated with and propagates to."""

    name: Name
    site: Name
    amazon_side_asn: AmazonAsn = Field(default=DEFAULT_AMAZON_ASN, alias="amazonSideASN")
    route_tables: list[RouteTable] | None = None


class MeshSpec(_Model):
    trust_domain: TrustDomain = "cluster.local"
    istio: Istio | None = None
    wireguard: WireGuard = Field(default_factory=WireGuard)
    ipam: Ipam = Field(default_factory=Ipam)
    health_check: HealthCheck = Field(default_factory=HealthCheck)
    sites: list[Site] = Field(min_length=1)
    clusters: list[Cluster] = Field(min_length=1)
    manifests: list[StrictStr] = Field(default_factory=list)
    hubs: list[Hub] = Field(default_factory=list)
    vpn_connections: list[VpnConnection] = Field(default_factory=list)


class Mesh(_Model):
    api_version: Literal["crossmesh.io/v1alpha1"]
    kind: Literal["Mesh"]
    metadata: Metadata
    spec: MeshSpec

    def site(self, name: str) -> Site:
        return next(s for s in self.spec.sites if s.name == name)
