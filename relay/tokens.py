"""Local token counting, used only when an upstream reports no usage.

The o200k_base encoding is counted by tiktoken, built from the copy of OpenAI's
``o200k_base.tiktoken`` that ships inside the bpe-openai wheel (checked against the hash
tiktoken pins), so counting never touches the network. Loaded, tiktoken takes ~90 MB in
all, most of a relay worker's size, for the few requests an upstream leaves without usage
(streams cut short, providers that ignore ``stream_options``). So no relay worker loads
it: they count in one process per host (``relay.token_server``), shared by every worker
of the deployment there, started on first need (from the usage writer's thread or a
thread of ``count_tokens``, never on the event loop) and ended after
``RELAY_TOKEN_COUNTER_IDLE_SECONDS`` without work. Should that process fail, the count is
made in the calling process rather than lost.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import gzip
import hashlib
import hmac
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Per-message framing tokens of the chat format and the reply's priming tokens: the
# figures OpenAI documents for counting chat prompts.
TOKENS_PER_MESSAGE = 3
TOKENS_REPLY_PRIMING = 3
# A picture's cost depends on its size and detail, which the relay does not decode; the
# low-detail cost is a floor, and the result is marked estimated anyway.
TOKENS_PER_IMAGE = 85
# A chat content part that is a picture (``input_image`` is the Responses spelling, which
# some clients send to chat completions too).
IMAGE_PART_TYPES = ("image_url", "input_image")


def estimate_prompt(payload: Mapping[str, Any]) -> int:
    """A quick prompt size for rate limits, without the tokenizer (about 4 chars a token)."""
    return measure_prompt(payload)[0]


def fetched(value: Any) -> bool:
    """Whether an image part's ``image_url`` (an object with ``url``, or the URL itself)
    names a picture the provider fetches, rather than one sent inline (``data:``)."""
    url = value.get("url") if isinstance(value, Mapping) else value
    return isinstance(url, str) and not url.startswith("data:")


def measure_prompt(payload: Mapping[str, Any]) -> tuple[int, int, int]:
    """A quick prompt size (about 4 chars a token), the number of input images, and of
    those the provider fetches by URL, of a chat-shaped request, without the tokenizer.

    Runs on the hot path, so it only walks the messages, once for every figure; the real
    token count replaces the size when the request settles, while the image count is
    what per-image prices bill (no provider reports one).
    """
    total = TOKENS_REPLY_PRIMING
    images = by_url = 0
    for message in payload.get("messages") or ():
        if not isinstance(message, Mapping):
            continue
        total += TOKENS_PER_MESSAGE
        content = message.get("content")
        if isinstance(content, str):
            total += len(content) // 4
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, Mapping):
                    kind = part.get("type")  # read once: this loop sees every part
                    if kind == "text":
                        total += len(str(part.get("text", ""))) // 4
                    elif kind == "image_url" or kind == "input_image":  # IMAGE_PART_TYPES
                        images += 1
                        by_url += fetched(part.get("image_url"))
    return total + images * TOKENS_PER_IMAGE, images, by_url


# Where tiktoken fetches o200k_base from, and the SHA-256 it requires of the file.
O200K_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
_load_lock = threading.Lock()


def _o200k_data() -> bytes:
    """The encoding's ranks file, from the bpe-openai wheel's data directory. Found without
    importing bpe_openai, whose native module alone takes ~70 MB."""
    spec = importlib.util.find_spec("bpe_openai")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("bpe-openai (which ships o200k_base.tiktoken) is not installed")
    packed = Path(next(iter(spec.submodule_search_locations))) / "data/o200k_base.tiktoken.gz"
    data = gzip.decompress(packed.read_bytes())
    if hashlib.sha256(data).hexdigest() != O200K_SHA256:
        raise RuntimeError(f"{packed} is not OpenAI's o200k_base")
    return data


@functools.cache
def _encoding() -> Any:
    """tiktoken's o200k_base, read from a private cache filled with the wheel's copy: tiktoken
    finds its file there (``TIKTOKEN_CACHE_DIR``, the name it derives from the URL, the hash
    it checks) and so never downloads it."""
    import tiktoken

    cache = tempfile.mkdtemp(prefix="tollgate-tiktoken-")
    try:
        name = hashlib.sha1(O200K_URL.encode()).hexdigest()  # noqa: S324 - tiktoken's naming
        Path(cache, name).write_bytes(_o200k_data())
        with _load_lock:
            previous = os.environ.get("TIKTOKEN_CACHE_DIR")
            os.environ["TIKTOKEN_CACHE_DIR"] = cache
            try:
                return tiktoken.get_encoding("o200k_base")
            finally:
                if previous is None:
                    os.environ.pop("TIKTOKEN_CACHE_DIR", None)
                else:
                    os.environ["TIKTOKEN_CACHE_DIR"] = previous
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def count_text(text: str) -> int:
    """Tokens of ``text`` as the model reads it: a special token's spelling in a prompt or an
    answer (``<|endoftext|>``) is ordinary text there. By default the encoder refuses such
    text with ValueError, which made the count fail and the usage go unbilled."""
    if not text:
        return 0
    return len(_encoding().encode(text, disallowed_special=()))


def _content_tokens(content: Any) -> int:
    if isinstance(content, str):
        return count_text(content)
    total = 0
    if isinstance(content, list):
        for part in content:
            if not isinstance(part, Mapping):
                continue
            if part.get("type") == "text":
                total += count_text(str(part.get("text", "")))
            elif part.get("type") in IMAGE_PART_TYPES:
                total += TOKENS_PER_IMAGE
            elif part.get("type") == "refusal":
                total += count_text(str(part.get("refusal", "")))
    return total


def count_prompt(messages: Iterable[Any], tools: Any = None) -> int:
    total = TOKENS_REPLY_PRIMING
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        total += TOKENS_PER_MESSAGE
        total += count_text(str(message.get("role", "")))
        total += _content_tokens(message.get("content"))
        if message.get("name"):
            total += count_text(str(message["name"]))
        calls = message.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():  # a client's body: any shape
            function = call.get("function") if isinstance(call, Mapping) else None
            if isinstance(function, Mapping):
                total += count_text(str(function.get("name", "")))
                total += count_text(str(function.get("arguments", "")))
    if tools:
        import orjson

        total += count_text(orjson.dumps(tools).decode())
    return total


def count_all(messages: Any, tools: Any, completion: str) -> tuple[int, int]:
    """Prompt and completion tokens, counted here."""
    return count_prompt(messages or (), tools), count_text(completion)


def rough_count(messages: Any, tools: Any, completion: str) -> tuple[int, int]:
    """About four characters a token, from whatever the request held: the estimate of last
    resort, for input the tokenizer walk cannot read."""
    import orjson

    def size(value: Any) -> int:
        try:
            return len(orjson.dumps(value, default=str))
        except (TypeError, ValueError):
            return len(str(value))

    prompt = TOKENS_REPLY_PRIMING + (size(messages) + (size(tools) if tools else 0)) // 4
    return prompt, len(completion or "") // 4


class CounterUnavailable(Exception):
    """The shared counting process could not be reached, started or heard from."""


class TokenCounter:
    """Counts in the host's one counting process (``relay.token_server``), started by the
    first relay process that needs it and shared by all of the deployment's processes on
    the host; the connection to it is kept and shared by this process's threads."""

    # The first count of a new server waits for the encoding to load (about a second).
    TIMEOUT_SECONDS = 120
    START_SECONDS = 30

    def __init__(self, var_dir: Path | None = None) -> None:
        # The deployment's data directory names its counter (default: settings.VAR_DIR).
        self._var_dir = var_dir
        self._lock = threading.Lock()
        self._conn: Any = None

    def count(
        self, messages: Any, tools: Any, completion: str, idle_seconds: float
    ) -> tuple[int, int]:
        try:
            status, value = self._ask(("count", messages, tools, completion), idle_seconds)
        except CounterUnavailable:
            # No server, or it died or hung: count here rather than lose the count.
            logger.warning("the token counter process failed; counting here", exc_info=True)
            return count_all(messages, tools, completion)
        except Exception:  # what could not even be sent (pickled): nothing left the process
            status, value = "error", "the request could not be sent"
        if status == "ok":
            return int(value[0]), int(value[1])
        # The count itself failed on this input: the server is fine, and counting here
        # would fail the same way (and load the encoding into this process). A usage
        # record that cannot be counted must not stop the batch it is written with.
        logger.error("the token counter could not count a request; estimating (%s)", value)
        return rough_count(messages, tools, completion)

    def server_pid(self) -> int | None:
        """The pid of the server that answers now, or None; never starts one."""
        try:
            conn = self._open()
        except CounterUnavailable:
            return None
        with conn:
            try:
                conn.send(("pid",))
                return int(conn.recv()[1]) if conn.poll(self.TIMEOUT_SECONDS) else None
            except (OSError, EOFError):  # it stopped meanwhile
                return None

    def stop(self) -> None:
        """Close this process's connection, and end the server (for tests)."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is None:
            with contextlib.suppress(CounterUnavailable):
                conn = self._open()
        if conn is not None:
            with contextlib.suppress(OSError, ValueError):
                conn.send(("stop",))
            conn.close()

    def _ask(self, request: tuple[Any, ...], idle_seconds: float) -> tuple[str, Any]:
        if sys.platform != "linux":  # abstract sockets are Linux's: count in this process
            raise CounterUnavailable("no shared counter on this platform")
        with self._lock:
            for reused in (True, False):
                conn = self._conn
                if conn is None:
                    reused = False
                    conn = self._conn = self._connect(idle_seconds)
                try:
                    conn.send(request)
                    if not conn.poll(self.TIMEOUT_SECONDS):
                        raise CounterUnavailable("the token counter did not answer in time")
                    reply = conn.recv()
                except (OSError, EOFError, CounterUnavailable) as exc:
                    self._conn = None
                    conn.close()
                    # A kept connection to a server that has since stopped (idle): once more,
                    # starting a new one.
                    if reused and not isinstance(exc, CounterUnavailable):
                        continue
                    raise CounterUnavailable(str(exc)) from exc
                return reply
        raise CounterUnavailable("unreachable")

    def _connect(self, idle_seconds: float) -> Any:
        try:
            return self._open()
        except CounterUnavailable:
            pass
        # One starter at a time (an advisory lock the system drops with its holder).
        lock_path = self._dir() / "token-counter.lock"
        try:
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            lock = open(lock_path, "a+b")  # noqa: SIM115 - held across the start below
        except OSError as exc:  # a read-only data directory: no shared counter
            raise CounterUnavailable(str(exc)) from exc
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                return self._open()
            except CounterUnavailable:
                self._start(idle_seconds)
            return self._open()

    def _open(self) -> Any:
        from multiprocessing import AuthenticationError
        from multiprocessing.connection import Client

        try:
            return Client(self._address(), family="AF_UNIX", authkey=_authkey())
        except (OSError, EOFError, AuthenticationError) as exc:
            raise CounterUnavailable(str(exc)) from exc

    def _dir(self) -> Path:
        return self._var_dir or Path(_settings().VAR_DIR)

    def _address(self) -> str:
        """The counter's abstract socket: one per deployment (its data directory and key)
        on a host, so that two deployments, or a test run beside a server, never share."""
        seed = str(self._dir().resolve()).encode() + _authkey()
        return "\0tollgate-token-counter-" + hashlib.sha256(seed).hexdigest()[:24]

    def _start(self, idle_seconds: float) -> None:
        """Start the server and wait until its address answers (the launcher's exit)."""
        import subprocess

        command = [
            sys.executable,
            "-m",
            "relay.token_server",
            "@" + self._address()[1:],
            str(idle_seconds),
        ]
        try:
            launcher = subprocess.Popen(  # noqa: S603 - this interpreter, our own module
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,  # the server lets go of it: it outlives the starter
                cwd=Path(__file__).resolve().parents[1],
                start_new_session=True,
            )
        except OSError as exc:
            raise CounterUnavailable(str(exc)) from exc
        try:
            _, err = launcher.communicate(_authkey(), timeout=self.START_SECONDS)
        except subprocess.TimeoutExpired as exc:
            launcher.kill()
            launcher.wait()
            raise CounterUnavailable("the token counter did not start in time") from exc
        if launcher.returncode != 0:
            raise CounterUnavailable(
                f"the token counter exited with {launcher.returncode}: {err[-1000:]!r}"
            )


def _settings() -> Any:
    from django.conf import settings

    return settings


def _authkey() -> bytes:
    """The key every connection to the deployment's counter proves it holds."""
    secret = str(_settings().SECRET_KEY).encode()
    return hmac.new(secret, b"tollgate token counter", hashlib.sha256).digest()


counter = TokenCounter()
