"""The operator: the applied mesh as desired state in etcd, allocated once by an elected leader
and published to the agents as per-node intents; `apply`, `diff` and `status` around it."""
