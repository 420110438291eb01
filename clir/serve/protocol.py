"""The HTTP connection layer of ``clir serve``: uvicorn's HTTP protocol with what it lacks before a request
reaches the app (and :class:`clir.serve.guard.Guard`).

uvicorn keeps a connection that never finishes its request open for ever, and accepts connections without
bound: 20,000 idle or half-sent ones exhausted the process's file descriptors. Here a request must arrive
whole, headers and body, within ``request_timeout`` seconds of its first byte (or of the connection, for a
connection's first request); otherwise the client gets 408 (or, when it sent nothing, only the close).
Beyond ``max_connections`` open connections a new one gets 503 and is closed at once. A connection idle
between requests is left to uvicorn's keep-alive timeout (5 s).

A request uvicorn's parser refuses (a negative Content-Length, Content-Length beside Transfer-Encoding, a
malformed request line) never reaches the app: uvicorn answers it with a text/plain 400 of its own. That
answer is replaced here by the JSON every other error has."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from clir.serve.config import ServeSettings
from clir.serve.guard import access_log, loggable
from clir.serve.schemas import error_body

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _UvicornProtocol
except ImportError:  # httptools is optional: uvicorn then parses with h11, as here
    from uvicorn.protocols.http.h11_impl import H11Protocol as _UvicornProtocol  # type: ignore[assignment]

log = logging.getLogger(__name__)

#: open connections when ``max_connections`` is None, and the open files kept for everything else (models,
#: indexes, logs, the listening socket) when the process's limit is lower
DEFAULT_MAX_CONNECTIONS = 1000
FILES_RESERVED = 128
#: the least time between two "connection cap reached" warnings (a flood would otherwise flood the log)
CAP_WARNING_EVERY_S = 60.0
#: how long a connection answered here is still read from (and what comes dropped) before it is closed
LINGER_S = 1.0

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 503: b"Service Unavailable"}


def connection_cap(setting: int | None) -> int:
    """The connection cap for ``max_connections``: None gives :data:`DEFAULT_MAX_CONNECTIONS`, lowered so
    that the connections fit the open-file limit; a value the limit cannot hold is kept, with a warning."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # no such limit here (Windows)
        return setting or DEFAULT_MAX_CONNECTIONS
    room = soft - FILES_RESERVED if soft != resource.RLIM_INFINITY else None
    if setting is None:
        return max(1, min(DEFAULT_MAX_CONNECTIONS, room)) if room is not None else DEFAULT_MAX_CONNECTIONS
    if room is not None and setting > room:
        log.warning(
            "max_connections %d does not fit the open-file limit (%d, ulimit -n): raise the limit or lower "
            "--max-connections, or connections fail once files run out",
            setting,
            soft,
        )
    return setting


def configure(settings: ServeSettings) -> type[GuardedProtocol]:
    """The protocol class, its limits set from ``settings``. Class attributes, since uvicorn makes the
    protocol per connection; a server process of ``--processes N`` calls this itself (clir.serve.app)."""
    GuardedProtocol.max_connections = connection_cap(settings.max_connections)
    GuardedProtocol.request_timeout = settings.request_timeout
    return GuardedProtocol


class GuardedProtocol(_UvicornProtocol):
    """uvicorn's HTTP protocol with a request deadline, a connection cap and JSON protocol errors."""

    max_connections = DEFAULT_MAX_CONNECTIONS
    request_timeout = ServeSettings.request_timeout
    _cap_warned = 0.0  # when the cap was last logged (class-wide)
    _deadline: asyncio.TimerHandle | None = None
    _sent_bytes = False  # some of the request the deadline is for has come
    _answered = False  # answered here: what comes next is dropped

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._refuse_over_cap()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._answered:
            return
        if self._deadline is None and not self._busy():
            self._arm()  # the first byte of a request after an idle keep-alive pause
        self._sent_bytes = True
        super().data_received(data)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._disarm()
        self._sent_bytes = False
        if self._busy():  # a pipelined request started at once
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's parser refused the request: the same 400 as uvicorn's, in JSON."""
        self._answer(400, msg)

    # ------------------------------------------------------------------ internals
    def _busy(self) -> bool:
        """A request is in progress: its headers came, its response is not complete."""
        return self.cycle is not None and not self.cycle.response_complete

    def _arm(self) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self._deadline = self.loop.call_later(self.request_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and not cycle.more_body:
            return  # the request came whole: the app works on it, however long that takes
        if not self._sent_bytes:
            self.transport.close()  # nothing asked: nothing to answer
            return
        self._answer(408, f"the request did not arrive whole within {self.request_timeout:g} s")

    def _refuse_over_cap(self) -> None:
        now = time.monotonic()
        if now - GuardedProtocol._cap_warned >= CAP_WARNING_EVERY_S:
            GuardedProtocol._cap_warned = now
            log.warning(
                "%d connections open, the cap (max_connections): new ones get 503 and are closed",
                self.max_connections,
            )
        self._answer(
            503, f"the server holds its maximum of {self.max_connections} connections; retry shortly"
        )

    def _answer(self, status: int, detail: str) -> None:
        """Write a JSON error (unless the app already started a response) and close the connection.

        Closing a socket with request bytes still unread makes the kernel reset the connection, and the
        client may lose the answer with it (a refused connection is answered before its request is read).
        So the connection is half-closed (the client reads the answer, then the end), and what the client
        still sends is read and dropped, until it closes or :data:`LINGER_S` pass."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            body = json.dumps(error_body(status, detail)).encode()
            head = [
                b"HTTP/1.1 %d %s" % (status, _REASONS[status]),
                b"content-type: application/json",
                b"content-length: %d" % len(body),
                b"connection: close",
            ]
            if status == 503:
                head.append(b"retry-after: 1")
            self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self._answered = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()
        if status != 503:  # refused connections are counted by the cap warning, not logged one by one
            client = self.client or ("-", 0)
            access_log.info('%s "- -" %d 0.0ms rid=-', loggable(str(client[0])), status)
