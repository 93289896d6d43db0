"""The `crossmesh` command line (typer): rich tables for people, `-o json` for tools."""
