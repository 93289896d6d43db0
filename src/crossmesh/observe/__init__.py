"""Seeing the mesh: flow records, their filters and ring buffers (pure), read by `crossmesh observe`,
`crossmesh ui` and the checks; the lab's flow daemon produces them (drivers/lab/flowsd.py)."""
