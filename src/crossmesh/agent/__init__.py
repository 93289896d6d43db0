"""Per-node agents sharing state through etcd, as Cilium ClusterMesh does with its kvstore:
each agent publishes its node's record under a lease and reconciles its node from the
records of all the others."""
