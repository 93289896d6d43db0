# The image of `crossmesh agent`, run by the DaemonSet that `crossmesh render` writes per cluster
# (clusters/<cluster>/crossmesh-agent.yaml, image ghcr.io/crossmesh/agent:<crossmesh version>):
#
#   docker build -t ghcr.io/crossmesh/agent:0.1.0 .
#
# What the agent runs on its node, and so what the image holds: `wg` (wireguard-tools) to configure a
# kernel WireGuard device, `ip` (iproute2) for the device's address, MTU and the agent's routes, and
# `sh`/`find` (Debian's essential set) for the DaemonSet's init container and liveness probe. Not
# wireguard-go: a real node has kernel WireGuard (Linux 5.6+, Talos), and a node that runs wireguard-go
# instead runs it on the host, where the agent reaches its control socket through /var/run/wireguard.
# Not nftables: the agent writes no firewall rules (the lab's nftables are the lab's).
#
# Root, on purpose: the agent must hold CAP_NET_ADMIN, and Kubernetes gives a non-root container's
# added capabilities no effective or ambient bit (the process would start without them), while
# wireguard-go's control socket is root's alone. The DaemonSet drops every other capability, mounts
# the root filesystem read-only and forbids privilege escalation.

# Debian's package versions are not pinned (DL3008): bookworm's archive keeps only the newest of each,
# with its security fixes, so a pinned version stops building at the next point release.
FROM debian:bookworm-slim AS build
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
# The `agent` extra is the etcd client (gRPC). A virtual environment: bookworm's Python is
# externally managed (PEP 668), and the final stage copies the environment alone.
RUN python3 -m venv /opt/crossmesh \
    && /opt/crossmesh/bin/pip install --no-cache-dir --disable-pip-version-check '.[agent]'

FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 wireguard-tools iproute2 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/crossmesh /opt/crossmesh
# No bytecode written at run time: the DaemonSet's root filesystem is read-only.
ENV PATH=/opt/crossmesh/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
LABEL org.opencontainers.image.title="crossmesh agent" \
      org.opencontainers.image.description="Keeps a node's wg-crossmesh WireGuard peers and routes equal to the mesh's records in etcd" \
      org.opencontainers.image.licenses="Apache-2.0"
# Root, with NET_ADMIN alone in the DaemonSet (see the top of this file).
# hadolint ignore=DL3002
USER 0
ENTRYPOINT ["crossmesh", "agent"]
