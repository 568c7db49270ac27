"""A loopback TCP proxy that can be switched off: a dependency that goes away and returns.

``down()`` resets every open connection and closes the listening socket, so clients see
exactly what they see when PostgreSQL or Redis stops (connection reset, then connection
refused); ``up()`` listens on the same port again. The service behind it keeps its data,
as a restarted PostgreSQL does and a Redis with an append-only file does.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        # Cleared: what the service sends back is held (not lost) until it is set again.
        self._replies = threading.Event()
        self._replies.set()
        # Cleared: what clients send is left unread (in their sockets) until it is set.
        self._requests = threading.Event()
        self._requests.set()
        self.up()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                # An abortive close (RST), as when the server process is gone.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                # Wakes the pipe threads blocked reading it, which a bare close would not.
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.down()
        self._requests.set()  # a pipe thread left waiting to read finds its socket closed

    def hold_replies(self) -> None:
        """Hold the service's replies: requests reach it, its answers wait in the proxy."""
        self._replies.clear()

    def release_replies(self) -> None:
        self._replies.set()

    def hold_requests(self) -> None:
        """Stop reading what clients send, as a service too busy to read does: once the
        sockets' buffers between are full, a client's writes stay in the client."""
        self._requests.clear()

    def release_requests(self) -> None:
        self._requests.set()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # went down meanwhile
                    client.close()
                    server.close()
                    return
                self._sockets |= {client, server}
            for source, sink, replies in ((client, server, False), (server, client, True)):
                threading.Thread(
                    target=self._pipe, args=(source, sink, replies), daemon=True
                ).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, replies: bool) -> None:
        try:
            while True:
                if not replies:
                    self._requests.wait()
                data = source.recv(65536)
                if not data:
                    break
                if replies:
                    self._replies.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._sockets -= {source, sink}
