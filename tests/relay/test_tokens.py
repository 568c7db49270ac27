"""The token counter: counts in a child process that stops when idle, and still counts
when that process dies."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay import tokens

MESSAGES = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": [{"type": "text", "text": "Count to five, please."}]},
]
TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
ANSWER = "one, two, three, four, five"


def _pid() -> int:
    return os.getpid()


@pytest.fixture
def counter() -> Iterator[tokens.TokenCounter]:
    made = tokens.TokenCounter()
    yield made
    made.stop()


def test_counts_in_a_child_process_what_counting_here_gives(
    counter: tokens.TokenCounter,
) -> None:
    counted = counter.count(MESSAGES, TOOLS, ANSWER, idle_seconds=30)

    assert counted == tokens.count_all(MESSAGES, TOOLS, ANSWER)
    assert counted[0] > tokens.count_all(MESSAGES, None, ANSWER)[0] > 3 + 2 * 3
    assert counted[1] >= 5
    assert counter.running()
    pool = counter._pool
    assert pool is not None
    child = pool.submit(_pid).result(timeout=30)
    assert child != os.getpid()


def test_the_child_stops_when_idle(counter: tokens.TokenCounter) -> None:
    counter.count(MESSAGES, None, ANSWER, idle_seconds=0.3)
    assert counter.running()
    deadline = time.monotonic() + 10
    while counter.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not counter.running()
    # and the next count starts it again
    assert counter.count(MESSAGES, None, ANSWER, idle_seconds=30)[1] >= 5
    assert counter.running()


def test_a_killed_child_costs_no_count(
    counter: tokens.TokenCounter, caplog: pytest.LogCaptureFixture
) -> None:
    counter.count(MESSAGES, None, ANSWER, idle_seconds=30)
    pool = counter._pool
    assert pool is not None
    os.kill(pool.submit(_pid).result(timeout=30), signal.SIGKILL)
    time.sleep(0.2)

    assert counter.count(MESSAGES, None, ANSWER, idle_seconds=30) == tokens.count_all(
        MESSAGES, None, ANSWER
    )
    assert "token counter process failed" in caplog.text
    # a fresh child serves the next one
    assert counter.count(MESSAGES, None, "six", idle_seconds=30)[1] >= 1
    assert counter.running()


def test_text_that_spells_a_special_token_is_counted_as_text(
    counter: tokens.TokenCounter, caplog: pytest.LogCaptureFixture
) -> None:
    """A prompt about tokenizers may contain ``<|endoftext|>``; the encoder refused it by
    default, so the child failed, the worker loaded the encoding (~150 MB) to retry, failed
    again, and the usage was not billed."""
    spelled = [{"role": "user", "content": "What does <|endoftext|> mean in a prompt?"}]
    answer = "It ends a text: <|endoftext|>"
    counted = counter.count(spelled, None, answer, 30)
    assert caplog.text == ""  # counted by the child, the first time
    assert counted == tokens.count_all(spelled, None, answer)
    assert counted[1] > tokens.count_text("It ends a text: ") + 1  # its characters count


def _corpus() -> list[str]:
    """Varied text: scripts, digits, whitespace runs, code, emoji, special-token spellings."""
    rng = random.Random(18)
    pieces = [
        "toll", " road", "Straße", " 中文", "日本語", " 한국어", " العربية", " русский",
        "🙂", "🚀", "  ", "\n\n", "\t", "1234567", " 3.14159", "'s", "'LL", " don't",
        "def f(x):\n    return x ** 2\n", "<|endoftext|>", "<|endofprompt|>", "ñ", "é",
        "https://example.test/a?b=c", "    ", "!!!", " ...", "\r\n", "ﬁ", "\u200b",
    ]  # fmt: skip
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 60))) for _ in range(600)]
    return [*texts, Path(tokens.__file__).read_text(), "a" * 5000, " " * 300]


def test_counts_match_the_previous_tokenizer_exactly() -> None:
    """Counting moved from bpe-openai's tokenizer to tiktoken (90 MB instead of 155): both
    are exact o200k_base, so no count changes."""
    import bpe_openai

    previous = bpe_openai.get_encoding("o200k_base")
    for text in _corpus():
        assert tokens.count_text(text) == len(previous.encode(text, disallowed_special=())), text


def test_the_encoding_loads_without_the_network(tmp_path: Path) -> None:
    """tiktoken fetches o200k_base from OpenAI unless it finds the file: it must find the
    wheel's copy, with every proxy refusing and an empty cache of its own."""
    script = "from relay import tokens; print(tokens.count_text('hello world'))"
    refused = "http://127.0.0.1:9"
    env = {**os.environ, "HTTPS_PROXY": refused, "HTTP_PROXY": refused, "TMPDIR": str(tmp_path)}
    env.pop("TIKTOKEN_CACHE_DIR", None)
    done = subprocess.run(  # noqa: S603 - this interpreter, our own one-liner
        [sys.executable, "-c", script],
        cwd=Path(tokens.__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "2"
    assert list(tmp_path.iterdir()) == []  # the private cache is gone


def test_tool_calls_of_any_shape_are_counted_not_fatal() -> None:
    """The prompt is the client's body as sent: a tool_calls of the wrong shape is no call."""
    plain = [{"role": "assistant", "content": "hello"}]
    for calls in (5, "x", [7, {"function": "f"}, {"function": None}], {"function": {}}):
        odd = [{"role": "assistant", "content": "hello", "tool_calls": calls}]
        assert tokens.count_all(odd, None, "") == tokens.count_all(plain, None, "")


def test_a_count_that_fails_is_estimated_and_the_child_kept(
    counter: tokens.TokenCounter, caplog: pytest.LogCaptureFixture
) -> None:
    """A record the tokenizer walk cannot read must not raise into the usage writer, where it
    would fail the whole batch of other tenants' events with it."""
    counter.count(MESSAGES, None, ANSWER, idle_seconds=30)
    pool = counter._pool
    unreadable = [{"type": "function", "function": {"name": "add", "tags": {"a", "b"}}}]

    prompt, completion = counter.count(MESSAGES, unreadable, ANSWER, idle_seconds=30)

    assert "could not count a request; estimating" in caplog.text
    assert (prompt, completion) == tokens.rough_count(MESSAGES, unreadable, ANSWER)
    assert prompt > tokens.TOKENS_REPLY_PRIMING and completion == len(ANSWER) // 4
    assert counter._pool is pool  # the child was fine, and still serves
    assert counter.count(MESSAGES, None, ANSWER, idle_seconds=30) == tokens.count_all(
        MESSAGES, None, ANSWER
    )
