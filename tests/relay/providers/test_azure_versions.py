"""Azure api-versions a channel may use: from 2024-09-01-preview on, the first to take
``stream_options`` (the usage of a streamed answer) and ``max_completion_tokens``. Older
ones refuse both, as the simulator does, so a channel set to one could not meter its
streams: it is refused when its adapter is made, left out of the routing table with the
reason on its page, and its health check says why, rather than serving unmetered."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from portal.models import Channel
from portal.models.provider_settings import azure_api_version_problem as api_version_problem
from portal.services import channel_create
from relay import health
from relay.providers.azure import AzureConfig
from relay.snapshot import load_snapshot
from tests.relay.providers.conftest import AZURE_KEY, CHAT, NativeSim, run, stream, summarise
from tests.relay.providers.test_azure import adapter

TOO_OLD = ["2023-05-15", "2024-02-01", "2024-06-01", "2024-08-01-preview"]
RECENT_ENOUGH = ["2024-09-01-preview", "2024-10-21", "2025-04-01-preview"]


@pytest.mark.parametrize("version", TOO_OLD)
def test_versions_before_stream_options_are_refused(version: str) -> None:
    with pytest.raises(ValueError, match="stream_options") as refused:
        AzureConfig(api_key="k", resource="contoso", api_version=version)
    assert version in str(refused.value) and "2024-10-21" in str(refused.value)


@pytest.mark.parametrize("version", RECENT_ENOUGH)
def test_versions_with_stream_options_stream_their_usage(
    native_sim: NativeSim, version: str
) -> None:
    assert api_version_problem(version) is None
    native_sim.app.native.azure_api_versions.add(version)
    streamed = summarise(stream(adapter(native_sim, api_version=version), CHAT, "gpt-4o"))
    assert streamed.usage is not None and streamed.usage.input_tokens > 0
    sent = native_sim.requests()[-1]
    assert sent["path"].endswith(f"?api-version={version}")
    assert sent["body"]["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("field", ["stream_options", "max_completion_tokens"])
def test_the_simulator_refuses_new_fields_on_an_old_version(
    native_sim: NativeSim, field: str
) -> None:
    """What Azure answers an old api-version given a field it predates."""
    native_sim.app.native.azure_api_versions.add("2024-06-01")
    body = {
        **CHAT,
        "stream": field == "stream_options",
        field: {"include_usage": True} if field == "stream_options" else 50,
    }

    async def send(http: httpx.AsyncClient) -> httpx.Response:
        url = f"{native_sim.url}/openai/deployments/gpt-4o/chat/completions"
        params = {"api-version": "2024-06-01"}
        return await http.post(url, params=params, headers={"api-key": AZURE_KEY}, json=body)

    response = run(send)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"] == f"Unrecognized request argument supplied: {field}"
    # Without them the old version answers (its stream would carry no usage).
    del body[field]
    assert run(send).status_code == 200


def _azure_channel(native_sim: NativeSim, version: str) -> Channel:
    return channel_create(
        name=f"azure-{version}",
        base_url=native_sim.url,
        secret=AZURE_KEY,
        actor="test",
        models={"served-model": "served-model"},
        provider_type="azure",
        provider_settings={"api_version": version},
    )


@pytest.mark.django_db(transaction=True)
def test_a_channel_on_an_old_version_is_left_out_and_told_why(native_sim: NativeSim) -> None:
    native_sim.app.native.azure_api_versions.add("2024-06-01")
    # Saved before the rule: a channel is refused such a version now (tests/portal).
    old = _azure_channel(native_sim, "2024-10-21")
    Channel.objects.filter(pk=old.pk).update(
        name="azure-2024-06-01", provider_settings={"api_version": "2024-06-01"}
    )
    old.refresh_from_db()
    current = _azure_channel(native_sim, "2024-10-21")
    snapshot = load_snapshot()
    routes = snapshot.models["served-model"].routes
    assert [route.channel_name for route in routes] == [current.name]
    assert snapshot.skipped_channels == (old.pk,)
    old.refresh_from_db()
    assert old.last_check_ok is False
    assert "Not in rotation" in old.last_check_error
    assert "2024-06-01 is older than 2024-09-01-preview" in old.last_check_error
    result = health.channel_check(old)
    assert not result.ok and "stream_options" in result.error
    assert native_sim.requests() == []  # nothing was sent to the old version


def test_the_adapter_takes_a_default_version() -> None:
    config: Any = AzureConfig(api_key="k", resource="contoso")
    assert api_version_problem(config.api_version) is None
