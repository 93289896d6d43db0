"""Typed data: the mesh file (pydantic, user input) and the plan (frozen dataclasses)."""
