"""Processes the bench starts: free loopback ports, CPU pinning, /proc sampling, clean stops."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


def pinned(cmd: Sequence[str], cpu: int | None) -> list[str]:
    """`cmd` under `taskset -c cpu` when pinning is possible, else unchanged."""
    if cpu is None or cpu_count() < 2 or shutil.which("taskset") is None:
        return list(cmd)
    return ["taskset", "-c", str(cpu), *cmd]


@cache
def _setpriv_pdeathsig() -> str | None:
    """util-linux's `setpriv`, when it can set the parent-death signal (2.33 and later)."""
    setpriv = shutil.which("setpriv")
    if sys.platform != "linux" or setpriv is None:
        return None
    done = subprocess.run([setpriv, "--help"], capture_output=True, text=True, check=False)
    return setpriv if "--pdeathsig" in done.stdout else None


def dies_with_us(cmd: Sequence[str]) -> list[str]:
    """`cmd` set to get SIGTERM when the process that started it dies, however it dies (a
    `timeout`, a kill, the OOM killer): services run in sessions of their own, so that Ctrl-C
    reaches only the bench, which stops them, and nothing else would. Killed benches left their
    nginx stubs running. Unchanged where `setpriv --pdeathsig` is missing.

    The signal follows only a death after `setpriv` armed it: a bench killed in the moment
    between the fork and that `prctl` left an orphan (1 start in 30 here). So a shell, started
    once the signal is armed, runs `cmd` only if its parent is still this process; otherwise the
    orphan exits. The kernel ties the signal to the thread that started the process: call this
    and start the process on a thread that lives as long as the service."""
    setpriv = _setpriv_pdeathsig()
    if setpriv is None:
        return list(cmd)
    still_ours = 'test "$PPID" = "$0" && exec "$@"; echo "its starter $0 has exited" >&2; exit 1'
    return [setpriv, "--pdeathsig", "TERM", "--", "sh", "-c", still_ours, str(os.getpid()), *cmd]


def wait_port(
    port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listened on {HOST}:{port} within {timeout:.0f} s")


@dataclass(frozen=True, slots=True)
class ProcSample:
    cpu_seconds: float  # utime + stime of the process and its live descendants (all threads)
    rss_kb: int  # of the largest process in the tree (a supervised server's worker)
    peak_rss_kb: int  # VmHWM, likewise
    processes: int = 1
    root_rss_kb: int = 0  # of `pid` itself: `serve`'s supervisor when it runs workers
    total_rss_kb: int = 0  # of the whole tree
    # VmRSS = RssAnon (the heap: Python objects, malloc) + RssFile (mapped file pages, e.g.
    # the ledger's SQLite file under its mmap) + RssShmem; of the same (largest) process.
    # A leak shows in RssAnon; RssFile grows with a mapped file and is given back under pressure.
    rss_anon_kb: int = 0
    rss_file_kb: int = 0
    cpu_by_pid: dict[int, float] = field(default_factory=dict)  # the tree's, by process


def busiest_share(before: ProcSample, after: ProcSample) -> float | None:
    """The largest share of the CPU spent between two samples that one process of the tree
    took; None if the tree spent none. About 1/N when N workers share the load evenly, near 1
    when one worker took nearly all connections (the kernel hands each one to whichever worker
    accepts first, and a kept-alive connection stays where it landed)."""
    spent = {pid: cpu - before.cpu_by_pid.get(pid, 0.0) for pid, cpu in after.cpu_by_pid.items()}
    total = sum(spent.values())
    return max(spent.values()) / total if total > 0 else None


@dataclass(frozen=True, slots=True)
class _Mem:
    rss: int = 0  # VmRSS, kB
    peak: int = 0  # VmHWM
    anon: int = 0  # RssAnon
    file: int = 0  # RssFile


def memory(pid: int) -> _Mem:
    """VmRSS, VmHWM, RssAnon and RssFile of one process, kB (/proc/PID/status)."""
    fields = {"VmRSS:": 0, "VmHWM:": 0, "RssAnon:": 0, "RssFile:": 0}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        parts = line.split()  # "VmRSS:\t  2160 kB"
        if len(parts) > 1 and parts[0] in fields:
            fields[parts[0]] = int(parts[1])
    return _Mem(fields["VmRSS:"], fields["VmHWM:"], fields["RssAnon:"], fields["RssFile:"])


def _one(pid: int) -> tuple[float, _Mem, int]:
    """(cpu seconds, memory, parent pid) of one process."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the parenthesised command name; ppid is field 4, utime and stime 14 and 15.
    rest = stat[stat.rindex(")") + 2 :].split()
    ticks = int(rest[11]) + int(rest[12])
    return ticks / CLK_TCK, memory(pid), int(rest[1])


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def sample(pid: int) -> ProcSample:
    """CPU of `pid` and its descendants (a server that runs its workers under a supervisor,
    like `vapi-proxy serve`, is measured whole), memory of its largest process."""
    cpu, largest, _ = _one(pid)
    by_pid = {pid: cpu}
    root = total = largest.rss
    peak = largest.peak
    count = 1
    for child in _descendants(pid):
        try:
            c_cpu, c_mem, _ = _one(child)
        except (OSError, ValueError):
            continue
        cpu += c_cpu
        by_pid[child] = c_cpu
        if c_mem.rss > largest.rss:
            largest = c_mem
        peak = max(peak, c_mem.peak)
        total += c_mem.rss
        count += 1
    return ProcSample(
        cpu, largest.rss, peak, count, root, total, largest.anon, largest.file, by_pid
    )


class Service:
    """One server process: started pinned, output to a log file, always stopped."""

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        *,
        port: int,
        log: Path,
        cpu: int | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self.log = log
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(
            pinned(dies_with_us(cmd), cpu),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,  # Ctrl-C in the terminal reaches the bench, which stops us
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def wait_ready(self, timeout: float = 30.0) -> Service:
        try:
            wait_port(self.port, timeout, self.proc)
        except Exception as exc:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} did not start: {exc}\n{tail}") from exc
        return self

    def sample(self) -> ProcSample:
        return sample(self.proc.pid)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait(5)
        self._log_file.close()


def load_average() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return round(one, 2), round(five, 2), round(fifteen, 2)
