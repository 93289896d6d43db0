"""Serving a prometheus-client registry over HTTP from a socket the caller opened.

The caller opens the socket because where it is opened matters: the lab's daemons serve inside
node namespaces, and a listening socket belongs to the namespace of the thread that created it
(`netns.run_in`), wherever it is served from afterwards. prometheus-client's own
`start_http_server` binds where the calling thread is, so it is not used.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Sequence
from http.server import ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import MetricsHandler

from crossmesh.observe.metrics import Metric

# No `*_created` series beside every counter and histogram: Cilium and Hubble serve none, and
# the catalogue (observe/metrics.py) and the dashboard know only the series crossmesh means.
disable_created_metrics()  # type: ignore[no-untyped-call]


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a slow scraper never holds the process up at exit


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on `host` ("" for every address) and `port` (0: any free one),
    in the calling thread's network namespace."""
    return socket.create_server((host, port), backlog=64)  # SO_REUSEADDR: restarts rebind at once


class MetricsServer:
    """`/metrics` of `registry` served on `sock` by a daemon thread until `close`."""

    def __init__(self, registry: CollectorRegistry, sock: socket.socket) -> None:
        self.server = _Server(sock.getsockname(), MetricsHandler.factory(registry), bind_and_activate=False)
        self.server.socket.close()
        self.server.socket = sock
        self.server.server_address = sock.getsockname()
        self.thread = threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True)
        self.thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# prometheus-client objects from the catalogue (crossmesh.observe.metrics): names, help and labels in one place
def counter(m: Metric, registry: CollectorRegistry) -> Counter:
    return Counter(m.name, m.help, m.labels, registry=registry)


def histogram(m: Metric, registry: CollectorRegistry) -> Histogram:
    return Histogram(m.name, m.help, m.labels, registry=registry, buckets=m.buckets)


def gauge_family(m: Metric, samples: Sequence[tuple[tuple[str, ...], float]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(m.name, m.help, labels=m.labels)
    for labels, value in samples:
        family.add_metric(labels, value)
    return family


def counter_family(m: Metric, samples: Sequence[tuple[tuple[str, ...], float]]) -> CounterMetricFamily:
    family = CounterMetricFamily(m.name, m.help, labels=m.labels)
    for labels, value in samples:
        family.add_metric(labels, value)
    return family
