"""The lab: the mesh of a plan built for real on this host with network namespaces,
veth, a bridge per site, VXLAN, nftables NAT and userspace WireGuard (wireguard-go).

`topology` is pure (plan → desired namespaces, links, addresses, routes, rules);
`reconcile` observes a namespace through netlink and changes only the difference.
"""
