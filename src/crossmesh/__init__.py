"""crossmesh: one network for Kubernetes clusters across clouds.

The core (model → load → validate → ipam → plan → render) is pure; drivers and
the command line are the imperative shell around it.
"""

__version__ = "0.1.0"
