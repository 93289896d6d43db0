"""Semantic rules over a loaded mesh → positioned problems (SPEC §1)."""
