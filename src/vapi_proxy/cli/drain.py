"""The HTTP protocol the workers run: uvicorn's httptools protocol, with a drain that answers
a request already on its way over a kept-alive connection instead of resetting it."""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class DrainingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol; only `shutdown` differs.

    When a worker stops (SIGTERM, or a reload replacing it), uvicorn stops accepting and then closes
    every keep-alive connection that is idle at that instant. A client that has just read a reply
    and is already sending its next request on that connection gets a reset instead of an answer:
    the classic keep-alive race, hit on every reload under steady traffic (`requests` and httpx do
    not retry a POST). Here an idle connection is kept open for a short grace instead; a request
    that arrives in it is served normally by the draining worker, with `Connection: close`, so the
    client's next request opens a new connection, which the listening socket hands to a live
    worker. A connection still idle when the grace ends is closed as before: its client has had
    time to see nothing is pending, and an idle client checks a pooled connection before reuse.
    """

    # Long enough for a client in a request loop (or a browser finishing a page's burst) to
    # send its next request and be told to reconnect; short, because the worker's exit waits
    # for it.
    idle_grace_seconds = 1.0
    _draining = False

    def shutdown(self) -> None:
        self._draining = True
        if self.cycle is None or self.cycle.response_complete:
            # Idle: close after the grace unless a request arrives (`data_received` cancels
            # this timer; the request's cycle then closes the connection when answered).
            self._unset_keepalive_if_required()
            self.timeout_keep_alive_task = self.loop.call_later(
                self.idle_grace_seconds, self.timeout_keep_alive_handler
            )
        else:
            self.cycle.keep_alive = False

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self._draining and self.cycle is not None:
            # The reply carries `Connection: close` and the connection ends after it.
            self.cycle.keep_alive = False
