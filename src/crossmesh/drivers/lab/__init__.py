"""The lab: the mesh of a plan built for real on this host with network namespaces,
veth, a bridge per site, VXLAN, nftables NAT and userspace WireGuard (wireguard-go).

`topology` is pure (plan → desired namespaces, links, addresses, routes, rules);
`reconcile` observes a namespace through netlink and changes only the difference.
The lab's lifecycle is split by concern (state, processes, desired, pods, control_plane,
services, teardown, up, membership, faults); `lab.py` re-exports what other code uses
(its docstring maps the modules). pyproject's import-linter contract keeps them in layers.
"""
