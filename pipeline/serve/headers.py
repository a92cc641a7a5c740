"""A bound on a request's head: the request line and headers together may take at most
`limit` bytes (64 KiB, as h11 and TF Serving's own front ends bound them); past it the
connection is answered `431 Request Header Fields Too Large` and closed, so a client
streaming an endless header holds no more than the bound in memory.

uvicorn's httptools parser (the C one `imgpipe serve` uses) has no bound of its own:
it gathers a header until its end, however long (a 400 MB header was answered 200 and
the memory stayed taken). The protocol below counts what arrives while a head is
incomplete and refuses it once the count passes the bound.
"""

from __future__ import annotations

import json
from typing import Callable

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024
LINGER_SECONDS = 1.0


def bounded_protocol(limit: int = MAX_HEAD_BYTES,
                     on_refused: Callable[[], None] | None = None) -> type:
    """uvicorn's httptools protocol with the head bounded to `limit` bytes;
    `on_refused` is called once per refused head (the metrics count it)."""
    message = json.dumps({"error": f"the request line and headers are over the limit of "
                                   f"{limit:,} bytes; send fewer or shorter headers (images "
                                   "go in the JSON body)"}).encode()

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        _head_bytes = 0            # what arrived for the head being read
        _in_head = True            # bytes arriving now belong to a request's head
        _completed = 0             # requests read whole on this connection
        _refused = False

        def on_headers_complete(self) -> None:
            self._in_head, self._head_bytes = False, 0
            # a head that arrived whole within a chunk: its own size
            size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
            if size > limit:
                self._refuse()
                return
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if not self._refused:
                super().on_body(body)

        def on_message_complete(self) -> None:
            if self._refused:
                return
            super().on_message_complete()
            self._in_head, self._head_bytes = True, 0
            self._completed += 1

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            in_head, completed = self._in_head, self._completed
            super().data_received(data)
            if not self._in_head or self.parser is None or self.transport.is_closing():
                return
            # a head begun before this chunk and still incomplete after it: the whole
            # chunk was head. (One that began inside it, after another request's end,
            # is counted from the next chunk: at most one chunk uncounted.)
            if in_head and self._completed == completed:
                self._head_bytes += len(data)
            if self._head_bytes > limit:
                self._refuse()

        def _refuse(self) -> None:
            self._refused = True
            if on_refused is not None:
                on_refused()
            transport = self.transport
            if transport.is_closing():
                return
            if self.cycle is not None and not self.cycle.response_complete:
                transport.close()           # an answer is being written: no 431 here
                return
            transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                            b"content-type: application/json\r\n"
                            b"content-length: " + str(len(message)).encode() + b"\r\n"
                            b"connection: close\r\n\r\n" + message)
            # a lingering close: what the client still sends is read and dropped for a
            # moment, so it reads the 431 instead of a reset
            if transport.can_write_eof():
                transport.write_eof()
            self.loop.call_later(LINGER_SECONDS, transport.close)

    return BoundedHttpToolsProtocol
