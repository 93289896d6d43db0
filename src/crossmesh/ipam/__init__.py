"""Allocation of what the mesh file leaves out: cluster ids, pod CIDRs, tunnel addresses."""
