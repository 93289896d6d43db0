"""`python -m crossmesh.operator ARGS` = `crossmesh operator ARGS` (how the lab starts its replicas)."""

import sys

from crossmesh.cli.main import app

if __name__ == "__main__":
    app(["operator", *sys.argv[1:]], prog_name="crossmesh")
