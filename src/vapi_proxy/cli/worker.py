"""What a worker process runs to get its app: the config file the supervisor validated, read
again here, and the folder where every worker keeps its metric values."""

from __future__ import annotations

import os
import sys
from typing import Any

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def build_app(config_path: str, metrics_dir: str) -> Any:
    """The app for one worker (a uvicorn factory; the supervisor passes both arguments)."""
    # prometheus_client picks file-backed values at import time, from this variable only (it
    # has no other switch): set in this worker, before the app imports the library.
    if os.environ.get(METRICS_DIR_ENV) != metrics_dir:
        if "prometheus_client" in sys.modules:  # pragma: no cover (a programming error)
            raise RuntimeError("prometheus_client was imported before its folder was set")
        os.environ[METRICS_DIR_ENV] = metrics_dir

    from vapi_proxy.app import create_app
    from vapi_proxy.logs import configure_logging
    from vapi_proxy.settings import load_secrets, load_settings

    settings = load_settings(config_path)
    configure_logging(settings.logging.level, settings.logging.format)
    return create_app(settings, load_secrets())
