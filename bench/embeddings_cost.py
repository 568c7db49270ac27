"""The relay's work on an embeddings answer, by its size, timed directly in one process.

What ``relay.forward`` does with a complete embeddings answer once its bytes are in: parse
it (``orjson.loads``), then ``EmbeddingLeg.answer_body``: read its usage and, when the
channel names the model otherwise than the client did, write the answer out again with
the public name. An answer that already names the public model goes out as it came. Both
cases are timed on answers of 1,536-dimension vectors (a common size), for 1, 16 and 128
inputs; the minimum of several rounds, CPU time, microseconds per answer.

    python bench/embeddings_cost.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

import orjson  # noqa: E402

from bench.translation_cost import _record  # noqa: E402
from relay.dialects.legacy import EmbeddingsDialect  # noqa: E402

DIMENSIONS = 1536
PUBLIC = "text-embedding-3-small"


def _answer(inputs: int, model: str) -> bytes:
    rng = random.Random(inputs)
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": [rng.uniform(-0.1, 0.1) for _ in range(DIMENSIONS)],
        }
        for i in range(inputs)
    ]
    usage = {"prompt_tokens": 8 * inputs, "total_tokens": 8 * inputs}
    return json.dumps({"object": "list", "data": data, "model": model, "usage": usage}).encode()


def _time(body: bytes, rounds: int) -> float:
    dialect = EmbeddingsDialect()
    payload = {"model": PUBLIC, "input": "x"}
    repeat = max(1, 2_000_000 // len(body))
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(repeat):
            leg = dialect.begin(dict(payload), None).leg(None, _record(False), PUBLIC)  # type: ignore[arg-type]
            out = leg.answer_body(body, orjson.loads(body))
            assert out is not None and leg.record.usage is not None
        best = min(best, (time.process_time() - started) / repeat)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print(f"{'inputs':>6}  {'bytes':>10}  {'as it came':>12}  {'renamed':>12}")
    for inputs in (1, 16, 128):
        same = _time(_answer(inputs, PUBLIC), args.rounds)
        renamed = _time(_answer(inputs, "upstream-name"), args.rounds)
        size = len(_answer(inputs, PUBLIC))
        print(f"{inputs:>6}  {size:>10,}  {same:>9.0f} us  {renamed:>9.0f} us")


if __name__ == "__main__":
    main()
