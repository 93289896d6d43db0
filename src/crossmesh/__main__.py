"""`python -m crossmesh`: the same as the `crossmesh` command."""

from crossmesh.cli.main import main

main()
