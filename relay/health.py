"""Channel health checks: one tiny real request per channel, on a schedule or on demand.

A check asks the channel for a one-token completion of a model it serves (or, serving
none, lists its models); channels of a native provider type are asked through their
adapter, in their own protocol and with their own authentication. Suspended channels
that answer again are put back in rotation, and a success closes the channel's breaker;
operators see latency and the last error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx
from asgiref.sync import async_to_sync

from portal import redaction
from portal.models import Channel
from portal.services import channel_check_record
from relay import shared
from relay.providers import client as provider_client
from relay.providers.registry import adapter_for
from relay.translate import canonical as c

CHECK_TIMEOUT_SECONDS = 20.0


@dataclass(frozen=True, slots=True)
class CheckResult:
    ok: bool
    status: int | None
    latency_ms: int
    error: str = ""


def probe(channel: Channel) -> CheckResult:
    """Send the check request; never raises for the upstream's faults or the channel's own
    (a secret or URL that cannot be sent is reported, as the relay leaves it out)."""
    problem = channel.configuration_problem()
    if problem:
        return CheckResult(False, None, 0, f"Not in rotation: {problem}")
    if channel.provider_type != Channel.ProviderType.OPENAI:
        return _probe_native(channel)
    link = channel.served.select_related("model").first()
    base = channel.base_url.rstrip("/")
    headers = {"authorization": f"Bearer {channel.secret}"}
    started = time.monotonic()
    try:
        with httpx.Client(timeout=CHECK_TIMEOUT_SECONDS, trust_env=False) as client:
            if link is None:
                response = client.get(f"{base}/models", headers=headers)
            else:
                response = client.post(
                    f"{base}/chat/completions",
                    headers=headers,
                    json={
                        "model": link.upstream_model(),
                        "messages": [{"role": "user", "content": "ping"}],
                        "max_tokens": 1,
                    },
                )
    except (httpx.HTTPError, ValueError) as exc:  # ValueError: a header httpx refuses
        error = redaction.redact(f"{type(exc).__name__}: {exc}", (channel.secret,))
        return CheckResult(False, None, _ms(started), error[:300])
    latency = _ms(started)
    if response.status_code >= 400:
        return CheckResult(False, response.status_code, latency, f"HTTP {response.status_code}")
    return CheckResult(True, response.status_code, latency)


def _probe_native(channel: Channel) -> CheckResult:
    link = channel.served.select_related("model").first()
    started = time.monotonic()
    if link is None:
        return CheckResult(False, None, 0, "The channel serves no model to check with.")
    try:
        adapter = adapter_for(
            channel.provider_type,
            base_url=channel.base_url,
            secret=channel.secret,
            settings=channel.provider_settings,
        )
    except ValueError as exc:
        error = redaction.redact(f"Misconfigured: {exc}", (channel.secret,))
        return CheckResult(False, None, 0, error[:300])
    ping = c.Request(
        model=link.upstream_model(),
        turns=[c.Turn("user", [c.Text("ping")])],
        max_output_tokens=1,
    )

    async def ask() -> None:
        async with httpx.AsyncClient(timeout=CHECK_TIMEOUT_SECONDS, trust_env=False) as http:
            await provider_client.complete(
                adapter, http, ping, upstream_model=link.upstream_model()
            )

    try:
        async_to_sync(ask)()
    except provider_client.ProviderError as exc:
        failure = exc.failure
        return CheckResult(False, failure.status, _ms(started), failure.message[:300])
    return CheckResult(True, 200, _ms(started))


def channel_check(channel: Channel) -> CheckResult:
    """Check one channel now and record the outcome (the operator's "test" button)."""
    result = probe(channel)
    channel_check_record(
        channel=channel, ok=result.ok, latency_ms=result.latency_ms, error=result.error
    )
    if result.ok:
        async_to_sync(_close_breaker)(channel.pk)
    return result


async def _close_breaker(channel_id: int) -> None:
    try:
        await shared.breakers().success(channel_id)
    finally:
        await shared.close()


def breaker_states() -> dict[int, str] | None:
    """Channels whose breaker is not closed, as every relay process sees it: "open", or
    "half-open" once its cooldown is over and a probe may pass. None when the shared
    state cannot be read (Redis away). Read by the operator's pages, never the relay."""

    async def read() -> dict[int, float]:
        try:
            return await shared.breakers().store.states()
        finally:
            await shared.close()

    try:
        open_until = async_to_sync(read)()
    except Exception:
        return None
    now = time.time()
    return {
        channel_id: "open" if until > now else "half-open"
        for channel_id, until in open_until.items()
    }


def channels_check_all() -> dict[int, bool]:
    """Check every channel that is, or may come back, in rotation."""
    results = {}
    for channel in Channel.objects.exclude(status=Channel.Status.DISABLED):
        results[channel.pk] = channel_check(channel).ok
    return results


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


__all__ = ["CheckResult", "channel_check", "channels_check_all", "probe"]
