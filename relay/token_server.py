"""The one token-counting process of a deployment on a host, shared by its relay processes.

``relay.tokens.TokenCounter`` starts it on first need: ``python -m relay.token_server
ADDRESS IDLE_SECONDS``, with the connection key on standard input. It binds ADDRESS (a
Linux abstract socket, so nothing is left on disk when it ends), then forks: the parent
exits at once, telling the starter the address answers, and the child, no longer the
starter's child, serves every relay process until nobody has asked for ``IDLE_SECONDS``.

Only ``relay.tokens`` (stdlib, orjson, tiktoken) is loaded here: no Django. Every
connection must prove it holds the key (``multiprocessing.connection``'s challenge, the
one ``Client(authkey=...)`` answers), which only the deployment's own processes derive
from its ``SECRET_KEY``.

Requests, one per message: ``("count", messages, tools, completion)`` answers
``("ok", (prompt, completion))`` or ``("error", text)`` for input the count cannot read;
``("pid",)`` answers ``("ok", pid)``; ``("stop",)`` ends the process.
"""

from __future__ import annotations

import errno
import os
import sys
import threading
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import (
    Connection,
    Listener,
    answer_challenge,
    deliver_challenge,
)
from typing import Any

from relay import tokens


def reply_counts(request: Any) -> bool:
    return isinstance(request, tuple) and bool(request) and request[0] == "count"


class Server:
    def __init__(self, listener: Listener, authkey: bytes, idle_seconds: float) -> None:
        self.listener = listener
        self.authkey = authkey
        self.idle_seconds = idle_seconds
        self.last_used = time.monotonic()
        self.busy = 0
        self.lock = threading.Lock()

    def serve(self) -> None:
        # The tokenizer loads once, before any request: two requests arriving at once
        # would otherwise each load it (~75 MB more at the peak). Clients wait meanwhile.
        tokens.count_text("warm")
        self.last_used = time.monotonic()  # idle from now, not from before the load
        threading.Thread(target=self._watch, name="idle-watch", daemon=True).start()
        while True:
            try:
                conn = self.listener.accept()
            except OSError:
                continue  # a client that went away while connecting
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: Connection) -> None:
        with conn:
            # The key's challenge, both ways, here rather than in accept(): a client that
            # stalls in it holds up only its own thread.
            try:
                deliver_challenge(conn, self.authkey)
                answer_challenge(conn, self.authkey)
            except (AuthenticationError, EOFError, OSError):
                return
            while True:
                try:
                    request = conn.recv()
                except (EOFError, OSError):
                    return
                except Exception:
                    return  # not one of our messages: drop the connection
                with self.lock:
                    self.busy += 1
                try:
                    reply = self._answer(request)
                finally:
                    with self.lock:
                        self.busy -= 1
                        if reply_counts(request):  # asking for the pid keeps nothing alive
                            self.last_used = time.monotonic()
                try:
                    conn.send(reply)
                except (OSError, ValueError):
                    return

    def _answer(self, request: Any) -> tuple[str, Any]:
        kind = request[0] if isinstance(request, tuple) and request else None
        if kind == "count" and len(request) == 4:
            try:
                return "ok", tokens.count_all(request[1], request[2], request[3])
            except Exception as exc:  # input the walk cannot read: the caller estimates
                return "error", f"{type(exc).__name__}: {exc}"[:500]
        if kind == "pid":
            return "ok", os.getpid()
        if kind == "stop":
            os._exit(0)
        return "error", "unknown request"

    def _watch(self) -> None:
        while True:
            time.sleep(min(self.idle_seconds / 4, 5.0))
            with self.lock:
                idle = not self.busy and time.monotonic() - self.last_used >= self.idle_seconds
            if idle:
                os._exit(0)  # the abstract socket goes with the process


def main(argv: list[str]) -> int:
    address, idle_seconds = argv[0], float(argv[1])
    authkey = sys.stdin.buffer.read()
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract address, spelled as ss(8) shows it
    try:
        listener = Listener(address, family="AF_UNIX")
    except OSError as exc:
        # Another starter won the race: its server answers at the address.
        return 0 if exc.errno == errno.EADDRINUSE else 1
    if os.fork():
        return 0  # the starter waits for this exit: the address answers from now on
    os.setsid()
    # Let go of the starter's pipes: it reads its launcher's output until they close.
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    Server(listener, authkey, idle_seconds).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
