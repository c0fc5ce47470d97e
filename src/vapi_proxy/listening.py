"""Binding the ports the commands serve on, so that a port that cannot be had is one line
naming it, whose it is, and why (uvicorn, binding itself, logs the bare OS error and exits).

Standard library only: `vapi-proxy sandbox` uses it too, and the simulator imports nothing of
the product."""

from __future__ import annotations

import errno
import socket


class CannotListenError(Exception):
    """A port a command must listen on cannot be had: the message says which, and why."""


def cannot_listen(host: str, port: int, what: str, exc: OSError) -> CannotListenError:
    """`what`: whose port, and the option that sets it ("the proxy, --port")."""
    if exc.errno == errno.EADDRINUSE:
        why = "the port is in use (by another vapi-proxy, or another program): stop it, or "
        why += "choose another port"
    elif exc.errno == errno.EACCES:
        why = "permission denied (ports below 1024 need privileges): choose another port"
    elif exc.errno == errno.EADDRNOTAVAIL:
        why = "this machine has no such address"
    else:
        why = exc.strerror or type(exc).__name__
    return CannotListenError(f"cannot listen on {url_host(host)}:{port} ({what}): {why}")


def listen(host: str, port: int, what: str, backlog: int = 2048) -> socket.socket:
    """A TCP socket bound to `host`:`port` and listening, for a server's `sockets=`. uvicorn,
    binding one itself, logs the bare OS error on failure without saying which port; and it
    listens only once its server has started, so a client that saw the start-up line (printed
    once the port is had) and connected at once was refused. Now the kernel queues it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)  # uvicorn's default; its server listens again with its own
    except OSError as exc:
        sock.close()
        raise cannot_listen(host, port, what, exc) from None
    sock.set_inheritable(True)
    return sock


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
