"""Issue 18's targets as bench/run prints them, judged on made-up measurements."""

from __future__ import annotations

import pytest

from bench import issue18
from bench.report import Check, Measurement, format_acceptance
from bench.targets import ALL_MODES

LIMITED, UNLIMITED = "tollgate+limits", "tollgate"


def measurement(
    target: str, mode: str, concurrency: int, *, rps: float, p50: float, cpu: float, errors: int = 0
) -> Measurement:
    ok = int(rps * 5)
    return Measurement(
        target=target,
        mode=mode,
        concurrency=concurrency,
        rps=rps,
        p50_ms=p50,
        p99_ms=p50 * 3,
        cpu_ms_per_request=cpu,
        peak_rss_mb=113 if target.startswith("tollgate") else 60,
        requests=ok + errors,
        ok=ok,
        errors=errors,
    )


def run(
    mode: str,
    *,
    tollgate_rps: float = 2800,
    own_cpu: float = 0.2,
    added_p50: float = 0.3,
    limits_share: float = 0.97,
    litellm_rps: float | None = 100,
    concurrencies: tuple[int, ...] = (1, 8, 64),
    limits: bool = True,
) -> list[Measurement]:
    """One mode's cells as a run records them: the floors, Tollgate with and without
    limits, and LiteLLM unless ``litellm_rps`` is None."""
    out = []
    for c in concurrencies:
        out += [
            measurement("bare-aiohttp", mode, c, rps=6000, p50=0.3, cpu=0.1),
            measurement("bare", mode, c, rps=2000, p50=0.6, cpu=0.8),
            measurement(UNLIMITED, mode, c, rps=tollgate_rps, p50=0.3 + added_p50, cpu=0.3),
        ]
        if limits:
            out.append(
                measurement(
                    LIMITED,
                    mode,
                    c,
                    rps=tollgate_rps * limits_share,
                    p50=0.3 + added_p50,
                    cpu=0.1 + own_cpu,
                )
            )
        if litellm_rps is not None:
            out.append(measurement("litellm", mode, c, rps=litellm_rps, p50=12, cpu=10))
    return out


def judge(
    measurements: list[Measurement],
    *,
    limits: bool = True,
    rival: str | None = "litellm",
    translation: dict[str, float] | None = None,
) -> dict[str, tuple[str, bool | None]]:
    checks = issue18.acceptance(
        measurements,
        limited=LIMITED if limits else UNLIMITED,
        unlimited=UNLIMITED,
        rival=rival,
        translation=translation,
    )
    return {name: (value, ok) for name, value, ok in checks}


def test_plain_and_stream_print_as_before() -> None:
    """The lines for chat completions are worded and judged as they were before other
    surfaces had issue 18's targets."""
    measurements = [
        measurement(target, mode, c, rps=rps / k, p50=p50 * k, cpu=cpu * k)
        for mode, k in (("plain", 1.0), ("stream", 2.0))
        for c in (1, 8, 64)
        for target, rps, p50, cpu in (
            ("bare-aiohttp", 9000, 0.3, 0.11),
            ("bare", 3000, 0.6, 0.8),
            (UNLIMITED, 2900, 0.7, 0.4),
            (LIMITED, 2800, 0.75, 0.42),
            ("litellm", 290, 12, 10),
        )
    ]
    checks = issue18.acceptance(
        measurements, limited=LIMITED, unlimited=UNLIMITED, rival="litellm", translation=None
    )
    printed = format_acceptance([c for c in checks if c[0][3:].startswith(("plain", "stream"))])
    assert printed.splitlines() == [
        "  [FAIL] 1. plain c64 >= 40% of bare-aiohttp req/s: 31%",
        "  [FAIL] 1. plain c64 passes the httpx bare proxy: 93%",
        "  [FAIL] 2. plain c64 >= 20x LiteLLM: 9.7x",
        "  [FAIL] 3. plain c64 own CPU (Tollgate - floor) <= 0.3 ms: 0.42 - 0.11 = 0.31 ms",
        "  [info] 3. plain c64 own CPU in the floor's (the target on the issue's machine, "
        "floor 0.14 ms: 2.1x): 2.82x",
        "  [PASS] 4. plain c1 adds <= 0.5 ms p50 over the floor: +0.45 ms",
        "  [PASS] 5. plain c1 limits within noise of none (>= 90% req/s): 97%",
        "  [PASS] 5. plain c8 limits within noise of none (>= 90% req/s): 97%",
        "  [PASS] 5. plain c64 limits within noise of none (>= 90% req/s): 97%",
        "  [FAIL] 1. stream c64 >= 40% of bare-aiohttp req/s: 31%",
        "  [FAIL] 1. stream c64 passes the httpx bare proxy: 93%",
        "  [FAIL] 2. stream c64 >= 20x LiteLLM: 9.7x",
        "  [FAIL] 3. stream c64 own CPU (Tollgate - floor) <= 0.5 ms: 0.84 - 0.22 = 0.62 ms",
        "  [info] 3. stream c64 own CPU in the floor's (the target on the issue's machine, "
        "floor 0.23 ms: 2.2x): 2.82x",
        "  [FAIL] 4. stream c1 adds <= 0.5 ms p50 over the floor: +0.90 ms",
        "  [PASS] 5. stream c1 limits within noise of none (>= 90% req/s): 97%",
        "  [PASS] 5. stream c8 limits within noise of none (>= 90% req/s): 97%",
        "  [PASS] 5. stream c64 limits within noise of none (>= 90% req/s): 97%",
    ]


def test_every_mode_run_gets_targets_1_to_5() -> None:
    checks = judge(
        run("embeddings")
        + run("responses-translated-stream", own_cpu=0.45, added_p50=0.6, limits_share=0.8)
    )
    assert checks["1. embeddings c64 >= 40% of bare-aiohttp req/s"] == ("45%", True)
    assert checks["1. embeddings c64 passes the httpx bare proxy"] == ("136%", True)
    assert checks["2. embeddings c64 >= 20x LiteLLM"] == ("27.2x", True)
    # Embeddings are never streamed: the non-streaming allowance applies.
    assert checks["3. embeddings c64 own CPU (Tollgate - floor) <= 0.3 ms"] == (
        "0.30 - 0.10 = 0.20 ms",
        True,
    )
    assert checks["4. embeddings c1 adds <= 0.5 ms p50 over the floor"] == ("+0.30 ms", True)
    for c in (1, 8, 64):
        assert checks[f"5. embeddings c{c} limits within noise of none (>= 90% req/s)"] == (
            "97%",
            True,
        )
    stream = "responses-translated-stream"
    assert checks[f"3. {stream} c64 own CPU (Tollgate - floor) <= 0.5 ms"] == (
        "0.55 - 0.10 = 0.45 ms",
        True,
    )
    assert checks[f"4. {stream} c1 adds <= 0.5 ms p50 over the floor"] == ("+0.60 ms", False)
    assert checks[f"5. {stream} c64 limits within noise of none (>= 90% req/s)"] == (
        "80%",
        False,
    )
    assert checks[f"1. {stream} c64 >= 40% of bare-aiohttp req/s"] == ("37%", False)


def test_litellm_not_run_for_a_mode_is_not_measured_never_passed() -> None:
    checks = judge(run("plain") + run("responses", litellm_rps=None))
    assert checks["2. plain c64 >= 20x LiteLLM"] == ("27.2x", True)
    value, ok = checks["2. responses c64 >= 20x LiteLLM"]
    assert (value, ok) == ("not measured (LiteLLM not run for responses)", None)
    assert format_acceptance([("2. responses c64 >= 20x LiteLLM", value, ok)]).startswith(
        "  [info]"
    )
    without = judge(run("embeddings", litellm_rps=None), rival=None)
    assert without["2. embeddings c64 >= 20x LiteLLM"] == ("not measured (LiteLLM not run)", None)


def test_litellm_answering_errors_is_not_measured() -> None:
    measurements = [
        m
        if m.target != "litellm"
        else measurement("litellm", m.mode, m.concurrency, rps=50, p50=12, cpu=10, errors=400)
        for m in run("embeddings")
    ]
    assert judge(measurements)["2. embeddings c64 >= 20x LiteLLM"] == (
        "not measured (LiteLLM answered errors)",
        None,
    )


def test_limits_need_a_run_with_and_without_at_each_concurrency() -> None:
    checks = judge(run("messages", concurrencies=(1, 64)))
    assert checks["5. messages c1 limits within noise of none (>= 90% req/s)"] == ("97%", True)
    assert checks["5. messages c8 limits within noise of none (>= 90% req/s)"] == (
        "not measured (c8 not run)",
        None,
    )
    # No concurrency 64 either: targets 1 to 3 are measured there.
    only_c1 = judge(run("messages", concurrencies=(1,)))
    assert only_c1["1. messages c64 >= 40% of bare-aiohttp req/s"] == (
        "not measured (c64 not run)",
        None,
    )
    assert only_c1["3. messages c64 own CPU (Tollgate - floor) <= 0.3 ms"][1] is None
    no_limits = judge(run("messages", limits=False), limits=False)
    assert no_limits["5. messages limits within noise of none"] == (
        "not measured (no run with limits)",
        None,
    )
    assert not [name for name in no_limits if name.startswith("5. messages c")]


def test_surfaces_pass_fail_or_not_measured() -> None:
    responses = [
        mode for mode in issue18.SURFACES["Responses"] if mode != "responses-translated-stream"
    ]
    measurements = run("embeddings")
    for mode in responses:
        measurements += run(mode, litellm_rps=None)
    measurements += run("responses-translated-stream", litellm_rps=None, own_cpu=0.6)
    measurements += run("messages", litellm_rps=None)
    checks = judge(measurements)
    assert checks["6. embeddings meets 1 to 5"] == ("every mode passes", True)
    assert checks["6. Responses meets 1 to 5"] == (
        "fails 3 (responses-translated-stream); not measured: 2 (responses, responses-stream, "
        "responses-translated, responses-translated-stream)",
        False,
    )
    assert checks["6. Messages meets 1 to 5"] == (
        "not measured: 2 (messages); not run: messages-stream, messages-translated, "
        "messages-translated-stream",
        None,
    )
    assert checks["6. chat completions meets 1 to 5"] == (
        "not measured (not run: plain, stream, chat-anthropic, chat-anthropic-stream)",
        None,
    )
    assert checks["6. every surface meets 1 to 5"] == (
        "fails: Responses; not measured: chat completions, Messages",
        False,
    )


def test_every_surface_passes_only_when_all_modes_ran_and_passed() -> None:
    measurements = [m for mode in ALL_MODES for m in run(mode)]
    checks = judge(measurements)
    assert checks["6. every surface meets 1 to 5"] == ("all pass", True)
    assert all(ok for name, (_, ok) in checks.items() if name.startswith(("1.", "2.", "6.")))
    slower = [m for m in measurements if m.mode != "chat-anthropic-stream"]
    slower += run("chat-anthropic-stream", added_p50=0.7)
    checks = judge(slower)
    assert checks["6. chat completions meets 1 to 5"] == (
        "fails 4 (chat-anthropic-stream)",
        False,
    )
    assert checks["6. every surface meets 1 to 5"] == ("fails: chat completions", False)


@pytest.mark.parametrize(
    ("translated", "extra", "ok"), [(48 + 250, "+0.250 ms", True), (48 + 301, "+0.301 ms", False)]
)
def test_translated_over_pass_through_timed_directly(
    translated: float, extra: str, ok: bool
) -> None:
    checks = judge(run("plain"), translation={"responses-translated": translated, "responses": 48})
    assert checks["6. responses-translated over responses: <= +0.3 ms CPU"] == (extra, ok)


def check_names(checks: list[Check]) -> list[str]:
    return [name for name, _, _ in checks]


def test_chat_completions_come_first_then_modes_in_run_order() -> None:
    checks = issue18.acceptance(
        run("embeddings") + run("stream") + run("messages") + run("plain"),
        limited=LIMITED,
        unlimited=UNLIMITED,
        rival="litellm",
        translation=None,
    )
    firsts = [name.split()[1] for name in check_names(checks) if name.startswith("1. ")][::2]
    assert firsts == ["plain", "stream", "embeddings", "messages"]


@pytest.mark.parametrize(("children", "shared", "passes"), [(0, 96, True), (96, 0, False)])
def test_target_7_asks_for_no_token_counter_per_worker(
    children: float, shared: float, passes: bool
) -> None:
    """One counter shared by the host's workers passes; a counting child per worker fails,
    however small the workers themselves stay."""
    measurements = run("plain")
    for m in measurements:
        if m.target == LIMITED:
            m.helpers_peak_rss_mb, m.shared_peak_rss_mb = children, shared
    checks = judge(measurements)
    assert checks["7. peak RSS per worker <= 120 MB"] == ("113 MB", True)
    assert checks["7. no token counter per worker (workers' children <= 16 MB; 0: none)"] == (
        f"{children:.0f} MB",
        passes,
    )
    assert checks["7. the host's one shared token counter (0: none ran)"] == (
        f"{shared:.0f} MB",
        None,
    )
