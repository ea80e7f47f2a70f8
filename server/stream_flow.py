"""Flow control of one ``TranslateStream`` call, tied to responses actually sent.

A batch holds one of ``window`` slots from the moment its message is read until its response has
been handed to gRPC, which waits for the client's HTTP/2 flow-control window; and no message is
read while ``max_unsent_bytes`` or more of responses wait to be sent. A client that stops reading
therefore stops the server from reading (and working) for it, and at most ``window`` responses stay
un-sent: no new batch starts once ``max_unsent_bytes`` are waiting, so the bytes held are below that
limit plus what the batches already running return.
"""

from __future__ import annotations

import asyncio

from ferry.proto.v1 import translation_pb2 as pb

from .errors import RpcFailure

END = object()
"""The client closed its side and every batch was answered."""
DRAIN = object()
"""The server is draining: every batch read was answered, no further message is read."""

Item = pb.TranslateStreamResponse | RpcFailure | object


class StreamFlow:
    """Slots and un-sent bytes of one stream; one reader task, one sender (the RPC's generator)."""

    def __init__(self, window: int, max_unsent_bytes: int) -> None:
        self._slots = asyncio.Semaphore(window)
        self._max_unsent_bytes = max_unsent_bytes
        self.unsent_bytes = 0
        """Bytes of finished responses not yet handed to gRPC."""
        self._room = asyncio.Event()
        self._room.set()
        self._out: asyncio.Queue[tuple[Item, int]] = asyncio.Queue()

    async def admit(self) -> None:
        """Before reading a message: wait for a free slot and for un-sent bytes below the limit."""
        await self._slots.acquire()
        while self.unsent_bytes >= self._max_unsent_bytes:
            self._room.clear()
            await self._room.wait()

    def unadmit(self) -> None:
        """Give back the slot taken by ``admit`` when no batch came of it."""
        self._slots.release()

    def put(self, response: pb.TranslateStreamResponse) -> None:
        """A batch's answer (translations or its in-band error), ready to send."""
        size = response.ByteSize()
        self.unsent_bytes += size
        self._out.put_nowait((response, size))

    def finish(self, how: RpcFailure | object) -> None:
        """No more responses: ``END``, ``DRAIN`` or the failure that ends the call at once."""
        self._out.put_nowait((how, 0))

    async def next(self) -> tuple[Item, int]:
        """The next response (with its size) or end marker, in the order they finished."""
        return await self._out.get()

    def sent(self, size: int) -> None:
        """A response of ``size`` bytes was handed to gRPC: free its slot and bytes."""
        self.unsent_bytes -= size
        self._slots.release()
        if self.unsent_bytes < self._max_unsent_bytes:
            self._room.set()
