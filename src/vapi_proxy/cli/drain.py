"""The HTTP protocol the workers run: uvicorn's httptools protocol, with a drain that answers
a request already on its way over a kept-alive connection instead of resetting it, and the JSON
error envelope for a request too malformed to reach the app."""

from __future__ import annotations

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from vapi_proxy.errors import envelope

MALFORMED = "The request is not valid HTTP/1.1 (its request line, headers or chunked body)."


class DrainingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol; `shutdown` and the answer to a malformed request differ.

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

    def send_400_response(self, msg: str) -> None:
        """A request the parser refuses (a control character in a header, a bad chunk size, a
        broken request line) gets the envelope every other error has, with a request id, as
        JSON, instead of uvicorn's plain-text "Invalid HTTP request received.". The connection
        closes after it, as before: nothing after a parse error can be trusted."""
        # Here, not at the top: the edge imports prometheus_client, which must not be imported
        # before the worker has set its metrics folder; a request comes after that.
        from vapi_proxy.edge.middleware import next_request_id

        request_id = next_request_id()
        body = orjson.dumps(envelope(400, MALFORMED, request_id))
        head = [STATUS_LINE[400]]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"x-request-id: " + request_id.encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(head))
        self.transport.close()
