"""Kubernetes objects that crossmesh reads from a cluster's manifests.

Only the parts crossmesh acts on are typed (workload labels, replicas, container
ports, services and their Cilium annotations, policies); everything else in an
object is kept as it was written so that `render` passes it through unchanged.
Small leaf objects (ports) reject unknown fields as `kubectl apply` with strict
field validation would; large ones (pod specs) allow fields crossmesh does not model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
IANA_SVC_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

ANNOTATION_GLOBAL = "service.cilium.io/global"
ANNOTATION_SHARED = "service.cilium.io/shared"
ANNOTATION_AFFINITY = "service.cilium.io/affinity"


def _cluster_ip(value: str | None) -> str | None:
    """`None` (headless), empty (allocate one) or an IPv4 address, as the API server accepts."""
    if value in (None, "", "None"):
        return value
    try:
        IPv4Address(value)
    except ValueError as err:
        raise ValueError("not an IPv4 address — write it as 10.96.0.10, or None for a headless Service") from err
    return value


def _subdomain(value: str) -> str:
    if len(value) > 253:
        raise ValueError(f"a name of {len(value)} characters is too long for Kubernetes (at most 253)")
    if not DNS1123_SUBDOMAIN.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid Kubernetes name (DNS-1123 subdomain: lower-case, digits, '-', '.')")
    return value


K8sName = Annotated[str, AfterValidator(_subdomain)]


class Protocol(StrEnum):
    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)


class ObjectMeta(_Open):
    name: K8sName
    namespace: K8sName | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class ContainerPort(_Strict):
    container_port: int = Field(alias="containerPort", ge=1, le=65535)
    protocol: Protocol = Protocol.TCP
    name: str | None = None
    host_port: int | None = Field(default=None, alias="hostPort", ge=1, le=65535)
    host_ip: str | None = Field(default=None, alias="hostIP")

    @field_validator("name")
    @classmethod
    def _port_name(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 15 or not IANA_SVC_NAME.fullmatch(value)):
            raise ValueError(f"port name {value!r} must be an IANA service name: ≤15 lower-case letters, digits, '-'")
        return value


class Container(_Open):
    name: str
    image: str | None = None
    ports: list[ContainerPort] = Field(default_factory=list)


class PodSpec(_Open):
    containers: list[Container] = Field(min_length=1)
    service_account_name: str | None = Field(default=None, alias="serviceAccountName")


class PodTemplateMeta(_Open):
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class PodTemplate(_Open):
    metadata: PodTemplateMeta = Field(default_factory=PodTemplateMeta)
    spec: PodSpec


class LabelSelector(_Open):
    match_labels: dict[str, str] = Field(default_factory=dict, alias="matchLabels")
    match_expressions: list[dict[str, Any]] = Field(default_factory=list, alias="matchExpressions")


class WorkloadSpec(_Open):
    replicas: int = Field(default=1, ge=0, le=1000)
    selector: LabelSelector | None = None
    template: PodTemplate


class Namespace(_Open):
    api_version: Literal["v1"] = Field(alias="apiVersion")
    kind: Literal["Namespace"]
    metadata: ObjectMeta


class Workload(_Open):
    """Deployment or StatefulSet."""

    api_version: Literal["apps/v1"] = Field(alias="apiVersion")
    kind: Literal["Deployment", "StatefulSet"]
    metadata: ObjectMeta
    spec: WorkloadSpec


class Pod(_Open):
    api_version: Literal["v1"] = Field(alias="apiVersion")
    kind: Literal["Pod"]
    metadata: ObjectMeta
    spec: PodSpec


class ServicePort(_Strict):
    port: int = Field(ge=1, le=65535)
    target_port: int | str | None = Field(default=None, alias="targetPort")
    protocol: Protocol = Protocol.TCP
    name: str | None = None
    node_port: int | None = Field(default=None, alias="nodePort", ge=1, le=65535)
    app_protocol: str | None = Field(default=None, alias="appProtocol")


class ServiceSpec(_Open):
    selector: dict[str, str] = Field(default_factory=dict)
    ports: list[ServicePort] = Field(min_length=1)
    type: Literal["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"] = "ClusterIP"
    cluster_ip: Annotated[str | None, AfterValidator(_cluster_ip)] = Field(default=None, alias="clusterIP")


CILIUM_ANNOTATION_VALUES = {
    ANNOTATION_GLOBAL: ("true", "false"),
    ANNOTATION_SHARED: ("true", "false"),
    ANNOTATION_AFFINITY: ("local", "remote", "none"),
}


def _one_of(words: tuple[str, ...]) -> str:
    return ", ".join(words[:-1]) + " or " + words[-1]


class ServiceMeta(ObjectMeta):
    @field_validator("annotations")
    @classmethod
    def _cilium_annotations(cls, ann: dict[str, str]) -> dict[str, str]:
        # Raised as a ValidationError located at the annotation's own key, so that the problem
        # points at that line rather than at the whole metadata block.
        bad = [
            InitErrorDetails(
                type=PydanticCustomError("cilium_annotation", "must be {allowed}", {"allowed": _one_of(allowed)}),
                loc=(key,),
                input=ann[key],
            )
            for key, allowed in CILIUM_ANNOTATION_VALUES.items()
            if key in ann and ann[key] not in allowed
        ]
        if bad:
            raise ValidationError.from_exception_data("annotations", bad)
        return ann


class Service(_Open):
    api_version: Literal["v1"] = Field(alias="apiVersion")
    kind: Literal["Service"]
    metadata: ServiceMeta
    spec: ServiceSpec

    @property
    def is_global(self) -> bool:
        return self.metadata.annotations.get(ANNOTATION_GLOBAL) == "true"

    @property
    def is_shared(self) -> bool:
        return self.metadata.annotations.get(ANNOTATION_SHARED, "true") == "true"

    @property
    def affinity(self) -> str:
        return self.metadata.annotations.get(ANNOTATION_AFFINITY, "none")


class NetworkPolicy(_Open):
    api_version: Literal["networking.k8s.io/v1"] = Field(alias="apiVersion")
    kind: Literal["NetworkPolicy"]
    metadata: ObjectMeta
    spec: dict[str, Any]


class CiliumNetworkPolicy(_Open):
    api_version: Literal["cilium.io/v2"] = Field(alias="apiVersion")
    kind: Literal["CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy"]
    metadata: ObjectMeta
    spec: dict[str, Any] | None = None
    specs: list[dict[str, Any]] | None = None


class IstioSecurityPolicy(_Open):
    """PeerAuthentication and AuthorizationPolicy: the spec is read by `istio.parse`, which reports
    problems at their field (as `policy.parse` does for NetworkPolicy)."""

    api_version: Literal["security.istio.io/v1", "security.istio.io/v1beta1"] = Field(alias="apiVersion")
    kind: Literal["PeerAuthentication", "AuthorizationPolicy"]
    metadata: ObjectMeta
    spec: dict[str, Any] = Field(default_factory=dict)


class GatewayAPIObject(_Open):
    """Gateway and HTTPRoute: the spec is read by `gateway.parse`, which reports problems at their
    field and refuses what crossmesh cannot run."""

    api_version: Literal["gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1"] = Field(
        alias="apiVersion"
    )
    kind: Literal["Gateway", "HTTPRoute"]
    metadata: ObjectMeta
    spec: dict[str, Any] = Field(default_factory=dict)


MODELS: dict[str, type[_Open]] = {
    "Namespace": Namespace,
    "Deployment": Workload,
    "StatefulSet": Workload,
    "Pod": Pod,
    "Service": Service,
    "NetworkPolicy": NetworkPolicy,
    "CiliumNetworkPolicy": CiliumNetworkPolicy,
    "CiliumClusterwideNetworkPolicy": CiliumNetworkPolicy,
    "PeerAuthentication": IstioSecurityPolicy,
    "AuthorizationPolicy": IstioSecurityPolicy,
    "Gateway": GatewayAPIObject,
    "HTTPRoute": GatewayAPIObject,
}


# Kinds whose name other API groups use too (Istio's networking.istio.io Gateway): only this group's
# objects are modelled; another group's pass through unchanged, as any kind crossmesh does not model.
GROUPS = {"Gateway": "gateway.networking.k8s.io", "HTTPRoute": "gateway.networking.k8s.io"}


def model_for(kind: str, api_version: object) -> type[_Open] | None:
    """The model of an object of `kind` and `api_version`, or None when crossmesh does not model it."""
    group = GROUPS.get(kind)
    if group is not None and not str(api_version).startswith(f"{group}/"):
        return None
    return MODELS.get(kind)


@dataclass(frozen=True, slots=True)
class Manifest:
    """One object from a manifest file, typed when crossmesh models its kind."""

    file: str
    line: int
    kind: str
    name: str
    namespace: str
    raw: dict[str, Any]
    obj: BaseModel | None
    # Where each field of the object is in its file (the whole document's positions and the
    # object's path in it), so a check across objects can point at a field, not just the object.
    positions: Mapping[tuple[str | int, ...], tuple[int, int]] = field(default_factory=dict, compare=False, repr=False)
    base: tuple[str | int, ...] = field(default=(), compare=False, repr=False)

    def where(self, path: tuple[str | int, ...]) -> tuple[int, int]:
        """(line, column) of `path` in the object, or of its nearest ancestor the file places."""
        probe = (*self.base, *path)
        while len(probe) > len(self.base):
            pos = self.positions.get(probe)
            if pos is not None:
                return pos
            probe = probe[:-1]
        return self.positions.get(probe, (self.line, 1))


@dataclass(frozen=True, slots=True)
class PortSpec:
    port: int
    protocol: Protocol
    name: str | None


@dataclass(frozen=True, slots=True)
class PodInstance:
    """A pod as crossmesh runs it: expanded from its workload, placed on a node."""

    cluster: str
    namespace: str
    name: str
    workload: str
    labels: tuple[tuple[str, str], ...]
    service_account: str
    ports: tuple[PortSpec, ...]

    @property
    def ref(self) -> str:
        return f"{self.cluster}/{self.namespace}/{self.name}"

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)
