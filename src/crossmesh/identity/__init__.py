"""Workload identities of the service mesh, pure: SPIFFE ids and the X.509 SVIDs that carry them
(`spiffe`, `svid`). The clock, the keys and the certificates come in as arguments; what is kept on
disk is `crossmesh.state.meshpki`'s business."""
