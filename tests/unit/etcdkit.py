"""The test etcd, as the unit tests import it (it ships in the package: crossmesh.kv.testing)."""

from crossmesh.kv.testing import EtcdServer, etcd, free_port, make_cert, write_cert

__all__ = ["EtcdServer", "etcd", "free_port", "make_cert", "write_cert"]
