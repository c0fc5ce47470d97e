"""The process that runs the workers: uvicorn's supervisor, with a validated reload and metrics
kept across replaced workers. It stays small: the app is imported by the workers, never here."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from vapi_proxy.cli.common import validate_for_serve
from vapi_proxy.cli.metrics import MetricsDirectory
from vapi_proxy.cli.reload import write_reload_status
from vapi_proxy.settings import ConfigError

logger = logging.getLogger("vapi_proxy.cli")


class Supervisor(Multiprocess):
    """uvicorn's worker supervisor, with a reload (SIGHUP) that validates the config first.

    uvicorn brings each replacement worker into service before retiring the old one and keeps
    the old one when the new one does not get ready, so a reload drops no request; checking
    the config here first means a bad edit is refused with a log line instead of tried.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        sockets: list[socket.socket],
        path: str,
        status_file: Path | None = None,
        metrics_dir: MetricsDirectory | None = None,
    ) -> None:
        super().__init__(config, sockets)
        self.path = path
        self.status_file = status_file
        self.metrics_dir = metrics_dir
        self._worker_pids: set[int] = set()

    def handle_hup(self) -> None:
        try:
            validate_for_serve(self.path)
        except ConfigError as exc:
            logger.error(
                "reload refused: the new configuration is invalid; the old one keeps serving",
                extra={"fields": {"problems": exc.problems}},
            )
            write_reload_status(self.status_file, exc.problems)
            return
        logger.info("reloading: starting workers with the new configuration")
        before = list(self.processes)
        super().handle_hup()
        stuck = sum(old is new for old, new in zip(before, self.processes, strict=False))
        write_reload_status(
            self.status_file,
            [f"{stuck} new worker(s) did not get ready; the old ones keep serving (see the log)"]
            if stuck
            else [],
        )

    def keep_subprocess_alive(self) -> None:
        super().keep_subprocess_alive()
        self._forget_gone_workers()

    def _forget_gone_workers(self) -> None:
        """Tell prometheus_client about workers that are gone (replaced by a reload, or died):
        their counters and histograms stay in the sum, their `live*` gauges must not."""
        from prometheus_client import multiprocess as prometheus_multiprocess

        current = {p.pid for p in self.processes if p.pid is not None}
        gone, self._worker_pids = self._worker_pids - current, current
        if self.metrics_dir is not None:
            for pid in gone:
                prometheus_multiprocess.mark_process_dead(pid, self.metrics_dir.path)  # type: ignore[no-untyped-call]

    def startup_failed(self) -> bool:
        return any(p.exitcode == STARTUP_FAILURE for p in self.processes)
