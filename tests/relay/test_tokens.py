"""The token counter: counts in one process shared by a deployment's relay processes,
which stops when idle, and still counts when that process dies or cannot start."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from relay import tokens

MESSAGES = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": [{"type": "text", "text": "Count to five, please."}]},
]
TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
ANSWER = "one, two, three, four, five"


@pytest.fixture
def counter(tmp_path: Path) -> Iterator[tokens.TokenCounter]:
    """A counter of its own deployment (data directory): its own server, whatever else runs."""
    made = tokens.TokenCounter(var_dir=tmp_path)
    yield made
    made.stop()


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _peak_rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0])


def test_counts_in_the_shared_process_what_counting_here_gives(
    counter: tokens.TokenCounter,
) -> None:
    before = _peak_rss_kb(os.getpid())
    counted = counter.count(MESSAGES, TOOLS, ANSWER, idle_seconds=30)
    grown = _peak_rss_kb(os.getpid()) - before  # before counting here, to compare

    assert counted == tokens.count_all(MESSAGES, TOOLS, ANSWER)
    assert counted[0] > tokens.count_all(MESSAGES, None, ANSWER)[0] > 3 + 2 * 3
    assert counted[1] >= 5
    server = counter.server_pid()
    assert server is not None and server != os.getpid()
    # Not this process's child: it serves every relay process of the deployment, and
    # outlives the one that started it.
    assert Path(f"/proc/{server}/stat").read_text().split()[3] != str(os.getpid())
    assert _peak_rss_kb(server) > 40_000  # the tokenizer is there, not here
    assert grown < 20_000


def test_two_processes_of_one_deployment_share_one_server(
    counter: tokens.TokenCounter, tmp_path: Path
) -> None:
    counted = counter.count(MESSAGES, None, ANSWER, idle_seconds=30)
    script = (
        "import django, json, sys; from pathlib import Path; django.setup();"
        "from relay import tokens;"
        "c = tokens.TokenCounter(var_dir=Path(sys.argv[1]));"
        f"print(json.dumps([c.count({MESSAGES!r}, None, {ANSWER!r}, 30), c.server_pid()]))"
    )
    done = subprocess.run(  # noqa: S603 - this interpreter, our own one-liner
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=Path(tokens.__file__).resolve().parents[1],
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    theirs, their_server = json.loads(done.stdout.strip().splitlines()[-1])
    assert tuple(theirs) == counted
    assert their_server == counter.server_pid()


def test_another_deployment_cannot_use_the_server(
    counter: tokens.TokenCounter, settings: Any
) -> None:
    from multiprocessing import AuthenticationError
    from multiprocessing.connection import Client

    counter.count(MESSAGES, None, ANSWER, idle_seconds=30)
    address = counter._address()
    with pytest.raises(AuthenticationError):
        Client(address, family="AF_UNIX", authkey=b"another deployment's key")
    # A deployment with another secret has its own address, hence its own server.
    settings.SECRET_KEY = "another deployment's secret key, as long as a real one is"
    assert counter._address() != address


def test_the_server_stops_when_idle(counter: tokens.TokenCounter) -> None:
    counter.count(MESSAGES, None, ANSWER, idle_seconds=0.5)
    first = counter.server_pid()
    assert first is not None
    _wait_for(lambda: counter.server_pid() is None, "the idle server did not stop")
    # and the next count starts another
    assert counter.count(MESSAGES, None, ANSWER, idle_seconds=30)[1] >= 5
    second = counter.server_pid()
    assert second is not None and second != first


def test_a_killed_server_costs_no_count(
    counter: tokens.TokenCounter, caplog: pytest.LogCaptureFixture
) -> None:
    counter.count(MESSAGES, None, ANSWER, idle_seconds=30)
    killed = counter.server_pid()
    assert killed is not None
    os.kill(killed, signal.SIGKILL)
    _wait_for(lambda: counter.server_pid() is None, "the killed server still answers")

    # The kept connection is dead: a new server counts, and nothing was counted here.
    assert counter.count(MESSAGES, None, ANSWER, idle_seconds=30) == tokens.count_all(
        MESSAGES, None, ANSWER
    )
    assert counter.server_pid() not in (None, killed)
    assert "failed; counting here" not in caplog.text


def test_a_server_that_cannot_start_costs_no_count(
    counter: tokens.TokenCounter, caplog: pytest.LogCaptureFixture, monkeypatch: Any
) -> None:
    monkeypatch.setattr(sys, "executable", "/bin/false")  # the launcher fails at once

    assert counter.count(MESSAGES, None, ANSWER, idle_seconds=30) == tokens.count_all(
        MESSAGES, None, ANSWER
    )
    assert "token counter process failed; counting here" in caplog.text
    assert counter.server_pid() is None


def test_text_that_spells_a_special_token_is_counted_as_text(
    counter: tokens.TokenCounter, caplog: pytest.LogCaptureFixture
) -> None:
    """A prompt about tokenizers may contain ``<|endoftext|>``; the encoder refused it by
    default, so the child failed, the worker loaded the encoding (~150 MB) to retry, failed
    again, and the usage was not billed."""
    spelled = [{"role": "user", "content": "What does <|endoftext|> mean in a prompt?"}]
    answer = "It ends a text: <|endoftext|>"
    counted = counter.count(spelled, None, answer, 30)
    assert caplog.text == ""  # counted by the server, the first time
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


def test_a_count_that_fails_is_estimated_and_the_server_kept(
    counter: tokens.TokenCounter, caplog: pytest.LogCaptureFixture
) -> None:
    """A record the tokenizer walk cannot read must not raise into the usage writer, where it
    would fail the whole batch of other tenants' events with it."""
    counter.count(MESSAGES, None, ANSWER, idle_seconds=30)
    server = counter.server_pid()
    unreadable = [{"type": "function", "function": {"name": "add", "tags": {"a", "b"}}}]

    prompt, completion = counter.count(MESSAGES, unreadable, ANSWER, idle_seconds=30)

    assert "could not count a request; estimating" in caplog.text
    assert (prompt, completion) == tokens.rough_count(MESSAGES, unreadable, ANSWER)
    assert prompt > tokens.TOKENS_REPLY_PRIMING and completion == len(ANSWER) // 4
    assert counter.server_pid() == server  # the server was fine, and still serves
    assert counter.count(MESSAGES, None, ANSWER, idle_seconds=30) == tokens.count_all(
        MESSAGES, None, ANSWER
    )


def test_a_data_directory_it_cannot_write_costs_no_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A read-only deployment cannot hold the starters' lock: counting stays in-process."""
    blocked = tmp_path / "a file"
    blocked.write_text("")
    counter = tokens.TokenCounter(var_dir=blocked / "var")

    assert counter.count(MESSAGES, None, ANSWER, idle_seconds=30) == tokens.count_all(
        MESSAGES, None, ANSWER
    )
    assert "token counter process failed; counting here" in caplog.text
    assert counter.server_pid() is None
