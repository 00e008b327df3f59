"""A tiny, fast external service for the push figure: answers every POST at once.

`python -m bench.receiver PORT [LIFETIME]` listens on 127.0.0.1:PORT (for LIFETIME
seconds at most, default 3600) and answers each request
with 200 and {"id": "rcv-<n>"}, keeping connections alive. It parses just enough
HTTP/1.1 (request line, headers, Content-Length body) for deskbridge's webhook
connector and the benchmark's own client.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys

_counter = itertools.count(1)


class _Receiver(asyncio.Protocol):
    def __init__(self) -> None:
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self._buffer[:end].decode("latin-1")
            length = 0
            close = False
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value.strip())
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
            if len(self._buffer) < end + 4 + length:
                return
            self._buffer = self._buffer[end + 4 + length:]
            body = b'{"id": "rcv-%d"}' % next(_counter)
            assert self._transport is not None
            self._transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body)
            )
            if close:
                self._transport.close()
                return


async def serve(port: int, lifetime: float) -> None:
    """Serve on 127.0.0.1:port until killed, or for `lifetime` seconds at most."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Receiver, "127.0.0.1", port)
    async with server:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.serve_forever(), timeout=lifetime)


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 3600.0))
