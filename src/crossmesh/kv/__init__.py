"""The control plane\x27s key-value store: a protocol, etcd behind it, and an in-memory fake."""
