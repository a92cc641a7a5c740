"""How long a client may take to send its request, and how much it may send.

A request's head (the request line and headers) must arrive whole within
`read_timeout` seconds of the connection opening, or of the previous answer on it: a
client that sends nothing, or drips a header line every few seconds (slowloris), has
its connection closed instead of holding it for ever (uvicorn's keep-alive timeout
restarts on every byte, so it bounds neither). A body may pause at most
`read_timeout` seconds between pieces: past that the request is answered 408 and its
connection closed. Once the server is stopping (SIGTERM), a body still arriving gets
STOPPING_BODY_SECONDS more, then 503: a stalled upload never holds the shutdown, which
ends well inside Kubernetes' 30 s grace period with the request log flushed (before,
uvicorn waited 30 s, then cancelled the request: a traceback, a text/plain 500, and
the log's flush lost to the SIGKILL).
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from pipeline.serve.protocol import Refused

READ_TIMEOUT = 10.0           # seconds: a head's whole time, a body's longest pause
STOPPING_BODY_SECONDS = 2.0   # what a body still arriving gets once the server stops
_SLICE = 0.25                 # how often a waiting body read looks at the clock


async def read_body(request: Any, limit: int, timeout: float = READ_TIMEOUT,
                    stopping: Callable[[], bool] = lambda: False) -> bytes:
    """The request's body: at most `limit` bytes (413), no pause over `timeout`
    seconds (408), and once `stopping()` at most STOPPING_BODY_SECONDS more (503)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Refused(413, f"the body is {int(declared):,} bytes, over the limit of {limit:,} "
                           "(serve --max-body-mb); send fewer or smaller images per request",
                      "body_too_large")
    loop = asyncio.get_running_loop()
    chunks: list[bytes] = []
    size, more, heard, stop_at = 0, True, loop.time(), None
    while more:
        if stopping():
            stop_at = loop.time() + STOPPING_BODY_SECONDS if stop_at is None else stop_at
            if loop.time() >= stop_at:
                raise Refused(503, f"the server is stopping and the body was still arriving "
                                   f"({size:,} bytes in); send the request again",
                              "stopping")
        try:
            async with asyncio.timeout(_SLICE):
                message = await request.receive()
        except TimeoutError:
            if loop.time() - heard >= timeout:
                total = f" of {int(declared):,}" if declared and declared.isdigit() else ""
                raise Refused(408, f"the body stalled: nothing arrived for {timeout:g}s after "
                                   f"{size:,}{total} bytes; send the whole request without "
                                   "pausing (the server's limit: serve --read-timeout)",
                              "body_timeout") from None
            continue
        if message["type"] == "http.disconnect":
            raise Refused(400, f"the client closed the connection {size:,} bytes into the "
                               "body", "client_disconnected")
        chunk = message.get("body", b"")
        more, heard = message.get("more_body", False), loop.time()
        size += len(chunk)
        if size > limit:
            raise Refused(413, f"the body is over the limit of {limit:,} bytes (serve "
                               "--max-body-mb); send fewer or smaller images per request",
                          "body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def head_deadline(base: type, seconds: float = READ_TIMEOUT) -> type:
    """`base` (a uvicorn HTTP protocol class) whose connections close when a request's
    head has not arrived whole `seconds` after the connection opened or the previous
    answer was sent. A request being read or answered is never cut here (its body has
    read_body's bounds)."""

    class HeadDeadline(base):  # type: ignore[misc, valid-type]
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_head_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            super().connection_lost(exc)

        def _arm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._head_timer = self.loop.call_later(seconds, self._head_late)

        def _head_late(self) -> None:
            self._head_timer = None
            waiting = self.cycle is None or self.cycle.response_complete
            if waiting and not self.transport.is_closing():
                self.transport.close()

    HeadDeadline.__name__ = HeadDeadline.__qualname__ = f"HeadDeadline{base.__name__}"
    return HeadDeadline
