"""Istio's security policies (PeerAuthentication, AuthorizationPolicy) read and evaluated as Istio does.

Pure: `parse` turns manifests into `model` values with positioned problems, `index` answers what
mode a workload's port accepts and whether a request is authorized, for `policy trace` and the
lab's proxy alike.
"""
