"""Metrics across workers: the folder every worker writes its values to, and the separate
metrics port (`metrics.port`) the supervisor serves, every worker's values summed."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vapi_proxy.listening import cannot_listen


@dataclass(frozen=True)
class MetricsDirectory:
    path: str
    created: bool
    """True when `serve` made it (and removes it on exit); False when the operator named it."""


def metrics_directory() -> MetricsDirectory:
    """Where every worker keeps its metric values (`PROMETHEUS_MULTIPROC_DIR`), for any number
    of workers: a scrape sums the files of all workers, those a reload or a crash replaced
    included, so no event is lost with its worker. Even one worker is replaced on SIGHUP, and
    its in-memory counters would go with it. An operator's own folder is used as it is."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        return MetricsDirectory(given, created=False)
    made = tempfile.mkdtemp(prefix="vapi-proxy-metrics-")
    return MetricsDirectory(made, created=True)


def serve_metrics_port(host: str, port: int, directory: str) -> Any:
    """Serve every worker's metrics, summed, on their own port from the supervisor."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client import multiprocess as prometheus_multiprocess

    registry = CollectorRegistry()
    prometheus_multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise cannot_listen(host, port, "the metrics, metrics.port", exc) from None
    return server
