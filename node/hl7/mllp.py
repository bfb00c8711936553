"""MLLP (HL7 v2.5 Appendix C, Minimal Lower Layer Protocol): framing and the listener.

A frame is <VT> message <FS><CR>. The listener runs its own asyncio loop in a thread, so it
lives beside uvicorn without sharing its loop; messages are processed in a small thread pool
(the handler does blocking database work), one at a time per connection so each sender gets
its ACKs in order. Framing errors never stop the listener: bytes outside a frame are dropped
(counted in the log, never quoted), a frame that grows past the size limit closes that
connection, and a start byte inside a frame restarts the frame (the sender lost its place).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("pacsmesh.hl7.mllp")

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\x0d"
MAX_MESSAGE_BYTES = 4 << 20


def frame(payload: bytes) -> bytes:
    """Wrap one message in MLLP framing."""
    return START_BLOCK + payload + END_BLOCK + CARRIAGE_RETURN


class FrameReader:
    """Splits a byte stream into MLLP frames."""

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.buffer = bytearray()
        self.max_message_bytes = max_message_bytes
        self.discarded = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; returns the complete frames' payloads. Raises ValueError when too big."""
        self.buffer += data
        frames: list[bytes] = []
        while True:
            start = self.buffer.find(START_BLOCK)
            if start < 0:
                self._discard(len(self.buffer))
                return frames
            if start:
                self._discard(start)
            end = self.buffer.find(END_BLOCK, 1)
            if end < 0:
                if len(self.buffer) > self.max_message_bytes:
                    raise ValueError("MLLP frame exceeds the size limit")
                return frames
            payload = bytes(self.buffer[1:end])
            cut = end + 1
            if self.buffer[cut : cut + 1] == CARRIAGE_RETURN:
                cut += 1
            del self.buffer[:cut]
            restart = payload.rfind(START_BLOCK)
            if restart >= 0:
                self.discarded += restart + 1
                payload = payload[restart + 1 :]
            frames.append(payload)

    def _discard(self, n: int) -> None:
        # A lone CR/LF after <FS> (or a keep-alive newline) is not worth a warning.
        junk = bytes(self.buffer[:n])
        if junk.strip(b"\r\n\x00 "):
            self.discarded += n
        del self.buffer[:n]


class MLLPServer:
    """An MLLP listener calling `handle(message bytes) -> ACK bytes` for every frame."""

    def __init__(
        self,
        host: str,
        port: int,
        handle: Callable[[bytes], bytes],
        workers: int = 4,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.host = host
        self.port = port
        self.handle = handle
        self.max_message_bytes = max_message_bytes
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hl7-worker")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[asyncio.Task[None]] = set()

    def start(self) -> int:
        """Bind and serve in a background thread; returns the bound port."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._serve, self.host, self.port, reuse_address=True)
                )
                sock: socket.socket = self._server.sockets[0]
                self.port = int(sock.getsockname()[1])
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="hl7-mllp", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self.port

    def stop(self) -> None:
        """Stop accepting, close open connections, wait for the thread."""
        loop = self._loop
        if loop is None or self._thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(timeout=10)
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._loop = None

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        frames = FrameReader(self.max_message_bytes)
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                try:
                    payloads = frames.feed(data)
                except ValueError:
                    log.warning(
                        "closing an MLLP connection: frame over %d bytes", self.max_message_bytes
                    )
                    break
                for payload in payloads:
                    reply = await loop.run_in_executor(self._pool, self.handle, payload)
                    writer.write(frame(reply))
                    await writer.drain()
        except (ConnectionError, OSError):
            pass  # the sender went away; its unanswered message will be resent by it
        except asyncio.CancelledError:
            pass
        finally:
            if frames.discarded:
                log.warning("dropped %d bytes received outside MLLP frames", frames.discarded)
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
                await writer.wait_closed()
