"""A TCP proxy on loopback that delivers every byte a fixed time after it arrived, in both
directions: a Redis on another host, for ``bench/run --redis-delay-ms``.

    python bench/delay_proxy.py LISTEN_PORT TARGET_PORT DELAY_MS

Each direction of each connection has a reader thread, which stamps what it reads, and a
writer thread, which sends it when its time comes: pipelined traffic stays pipelined (a
burst is delayed once, not once per command), and ``time.sleep`` keeps sub-millisecond
delays (an event loop's timers round up to whole milliseconds). The proxy's own CPU is
small beside the relay's, and is spent alike in the runs a bench compares.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import sys
import threading
import time


def _reader(source: socket.socket, out: queue.Queue[tuple[float, bytes]], delay: float) -> None:
    try:
        while data := source.recv(65536):
            out.put((time.monotonic() + delay, data))
    except OSError:
        pass
    out.put((0.0, b""))


def _writer(sink: socket.socket, incoming: queue.Queue[tuple[float, bytes]]) -> None:
    try:
        while True:
            due, data = incoming.get()
            if not data:
                break
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            sink.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def _pipe(source: socket.socket, sink: socket.socket, delay: float) -> None:
    lane: queue.Queue[tuple[float, bytes]] = queue.Queue()
    threading.Thread(target=_reader, args=(source, lane, delay), daemon=True).start()
    threading.Thread(target=_writer, args=(sink, lane), daemon=True).start()


def main() -> None:
    listen_port, target_port, delay_ms = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    delay = delay_ms / 1000
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", listen_port))
    listener.listen(256)
    print(f"delaying 127.0.0.1:{listen_port} -> {target_port} by {delay_ms} ms", flush=True)
    while True:
        client, _ = listener.accept()
        server = socket.create_connection(("127.0.0.1", target_port))
        for sock in (client, server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _pipe(client, server, delay)
        _pipe(server, client, delay)


if __name__ == "__main__":
    main()
