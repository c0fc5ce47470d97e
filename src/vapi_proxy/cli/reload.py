"""`vapi-proxy reload`, and the status file through which the supervisor reports each reload's
outcome to it (beside the pid file)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from vapi_proxy.cli.common import EXIT_CONFIG, config_path, print_problems
from vapi_proxy.settings import ConfigError, load_settings

logger = logging.getLogger("vapi_proxy.cli")


def reload_status_path(pid_file: str) -> Path:
    """Where the supervisor reports each reload's outcome, beside its pid file."""
    return Path(f"{pid_file}.reload.json")


def write_reload_status(path: Path | None, problems: list[str]) -> None:
    """Record a reload's outcome for `vapi-proxy reload`, which waits for the sequence to move."""
    if path is None:
        return
    previous = read_reload_status(path)
    status = {"seq": int(previous.get("seq", 0)) + 1, "ok": not problems, "problems": problems}
    scratch = path.with_name(path.name + ".tmp")
    try:
        scratch.write_text(json.dumps(status), encoding="utf-8")
        os.replace(scratch, path)
    except OSError as exc:
        logger.warning("cannot write the reload status", extra={"fields": {"error": str(exc)}})


def read_reload_status(path: Path) -> dict[str, Any]:
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return status if isinstance(status, dict) else {}


def cmd_reload(args: argparse.Namespace) -> int:
    """Validate the config, ask the running proxy (by its pid file) to reload it, and wait for
    the outcome: exit 0 once new workers serve it, 2 if the proxy refused it, 1 without an
    answer in time."""
    path = config_path(args)
    if path is not None:
        try:
            # The file only: the key lives in the server's environment, which the supervisor
            # checks itself before it replaces any worker.
            load_settings(path)
        except ConfigError as exc:
            print_problems(exc)
            return EXIT_CONFIG
    try:
        pid = int(Path(args.pid_file).read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        print(f"vapi-proxy reload: cannot read a pid from {args.pid_file}", file=sys.stderr)
        return 1
    status_file = reload_status_path(args.pid_file)
    before = int(read_reload_status(status_file).get("seq", 0))
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        print(f"vapi-proxy reload: no process {pid} (is the proxy running?)", file=sys.stderr)
        return 1
    print(f"sent SIGHUP to {pid}; waiting for the new workers (up to {args.wait:g} s)", flush=True)
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        status = read_reload_status(status_file)
        if int(status.get("seq", 0)) > before:
            if status.get("ok"):
                print("reloaded: the proxy now serves the new configuration")
                return 0
            print(
                "vapi-proxy reload: refused; the proxy keeps serving the old configuration:",
                file=sys.stderr,
            )
            for problem in status.get("problems") or []:
                print(f"  {problem}", file=sys.stderr)
            return EXIT_CONFIG
        time.sleep(0.1)
    print(
        f"vapi-proxy reload: no outcome from {pid} within {args.wait:g} s; see the proxy's log",
        file=sys.stderr,
    )
    return 1
