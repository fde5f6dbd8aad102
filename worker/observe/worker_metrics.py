"""GET /metrics on a worker host (METRICS_PORT): that host's Dramatiq processes, on their own.

A host that runs `dunning worker` without a web process has nobody to read its metrics folder;
with METRICS_PORT set, `dunning worker` serves it itself, so every host is scraped separately
and a worker-only host is visible. Before each scrape, files of processes that have died
(a crash, a restarted pool) are marked dead, so live gauges (messages in progress) count only
living processes while counters keep what the dead ones counted.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_PID = re.compile(r"_(\d+)\.db$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_dead_processes(directory: Path) -> list[int]:
    """mark_process_dead for every process whose files are here but which no longer runs."""
    from prometheus_client import multiprocess
    dead = sorted({int(m.group(1)) for f in directory.glob("*.db") if (m := _PID.search(f.name))
                   and not _alive(int(m.group(1)))})
    for pid in dead:
        multiprocess.mark_process_dead(pid, str(directory))
    return dead


class HostCollector:
    """This host's metric files, the dead processes' live gauges dropped first."""

    def __init__(self, directory: Path):
        self.directory = directory

    def collect(self):
        from prometheus_client import multiprocess
        reap_dead_processes(self.directory)
        yield from multiprocess.MultiProcessCollector(None, path=str(self.directory)).collect()


def serve(port: int, directory: Path, host: str = "0.0.0.0", broker_kind: str = "redis"):
    """Start the exposition server in a daemon thread; returns (server, thread)."""
    import prometheus_client as prom
    registry = prom.CollectorRegistry(auto_describe=False)
    registry.register(HostCollector(directory))
    from worker.observe.metrics_ops import BuildInfoCollector
    registry.register(BuildInfoCollector(broker_kind))
    return prom.start_http_server(port, addr=host, registry=registry)
