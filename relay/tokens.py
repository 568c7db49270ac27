"""Local token counting, used only when an upstream reports no usage.

The o200k_base encoding is counted by tiktoken, built from the copy of OpenAI's
``o200k_base.tiktoken`` that ships inside the bpe-openai wheel (checked against the hash
tiktoken pins), so counting never touches the network. Loaded, tiktoken takes ~90 MB in
all (bpe-openai's own tokenizer took ~155 MB), still most of a relay worker's size, for
the few requests an upstream leaves without usage (streams cut short, providers that
ignore ``stream_options``). So relay processes count in a child process
(``count_usage``), started on first need by the usage writer's thread, never on the event
loop, and stopped after ``RELAY_TOKEN_COUNTER_IDLE_SECONDS`` without work. Should the
child fail, the count is made in the calling process rather than lost.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import logging
import multiprocessing
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
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


def measure_prompt(payload: Mapping[str, Any]) -> tuple[int, int]:
    """A quick prompt size (about 4 chars a token) and the number of input images, of a
    chat-shaped request, without the tokenizer.

    Runs on the hot path, so it only walks the messages, once for both figures; the real
    token count replaces the size when the request settles, while the image count is
    what per-image prices bill (no provider reports one).
    """
    total = TOKENS_REPLY_PRIMING
    images = 0
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
    return total + images * TOKENS_PER_IMAGE, images


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


class TokenCounter:
    """Counts in one child process, shared by the threads of this process."""

    # The first count starts the child and loads the encoding (about a second).
    TIMEOUT_SECONDS = 120

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._busy = 0
        self._timer: threading.Timer | None = None

    def count(
        self, messages: Any, tools: Any, completion: str, idle_seconds: float
    ) -> tuple[int, int]:
        with self._lock:
            if self._pool is None:
                context = multiprocessing.get_context("spawn")  # this process has threads
                self._pool = ProcessPoolExecutor(max_workers=1, mp_context=context)
            pool = self._pool
            self._busy += 1
        try:
            future = pool.submit(count_all, messages, tools, completion)
            return future.result(timeout=self.TIMEOUT_SECONDS)
        except (BrokenProcessPool, TimeoutError, OSError):
            # The child died, hung or could not start: count here rather than lose the count.
            logger.warning("the token counter process failed; counting here", exc_info=True)
            self._discard(pool)
            return count_all(messages, tools, completion)
        except Exception:
            # The count itself failed on this input: the child is fine, and counting here
            # would fail the same way (and load the encoding into this process). A usage
            # record that cannot be counted must not stop the batch it is written with.
            logger.exception("the token counter could not count a request; estimating")
            return rough_count(messages, tools, completion)
        finally:
            with self._lock:
                self._busy -= 1
                self._arm(idle_seconds)

    def running(self) -> bool:
        with self._lock:
            return self._pool is not None

    def stop(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def _arm(self, idle_seconds: float) -> None:
        """(Re)start the idle timer; the lock is held."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = threading.Timer(idle_seconds, self._stop_if_idle)
        self._timer.daemon = True
        self._timer.start()

    def _stop_if_idle(self) -> None:
        with self._lock:
            if self._busy or self._pool is None:
                return
            pool, self._pool, self._timer = self._pool, None, None
        pool.shutdown(wait=False)

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)


counter = TokenCounter()
