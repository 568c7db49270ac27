"""Real Bedrock model ids carry ':' (``...-v1:0``) and ARNs carry '/' as well: the
path is signed percent-encoded, so it must reach AWS percent-encoded, byte for byte. The
simulator routes on the raw path and recomputes the signature from it, as AWS does."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from portal.models import ChannelModel
from relay.simulator.native.bedrock import SIGNATURE_MISMATCH
from relay.translate import canonical as c
from tests.relay.conftest import PUBLIC_MODEL, Gateway, usage_events
from tests.relay.providers.conftest import CHAT, NativeSim, canonical, complete, configure, run
from tests.relay.providers.test_bedrock import adapter

FOUNDATION_MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"
PROFILE = "us.anthropic.claude-3-5-sonnet-20241022-v2:0"
PROFILE_ARN = "arn:aws:bedrock:us-east-1:111122223333:application-inference-profile/p4x9"
MODEL_IDS = [FOUNDATION_MODEL, PROFILE, PROFILE_ARN]


@pytest.mark.parametrize("model", MODEL_IDS)
def test_the_relay_sends_the_signed_path_for_ids_with_colons_and_slashes(
    model: str,
    gateway: Gateway,
    sdk: openai.OpenAI,
    native_sim: NativeSim,
    sa_info: dict[str, Any],
) -> None:
    configure(gateway.channel, "bedrock", native_sim, sa_info, "tokens=2")
    ChannelModel.objects.filter(channel=gateway.channel).update(upstream_name=model)
    gateway.caught_up()
    messages: list[Any] = [{"role": "user", "content": "Say hello"}]

    plain = sdk.chat.completions.create(model=PUBLIC_MODEL, messages=messages)
    assert plain.choices[0].message.content == "tok0 tok1"
    streamed = sdk.chat.completions.create(model=PUBLIC_MODEL, messages=messages, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == ("tok0 tok1")

    sent = native_sim.requests()
    assert [r["path"] for r in sent] == [
        f"/sim/tokens=2/model/{model}/converse",
        f"/sim/tokens=2/model/{model}/converse-stream",
    ]
    events = usage_events(2)
    assert [e.status_code for e in events] == [200, 200]
    # Served by the Bedrock channel itself: a refused signature would have failed (or
    # failed over), and suspended the channel as having bad credentials.
    assert {e.channel_id for e in events} == {gateway.channel.pk}


@pytest.mark.parametrize("model", MODEL_IDS)
def test_the_adapter_reaches_every_kind_of_model_id(native_sim: NativeSim, model: str) -> None:
    answer = complete(adapter(native_sim, "tokens=2"), CHAT, model)
    assert c.text_of(answer.parts) == "tok0 tok1"
    assert native_sim.requests()[-1]["path"] == f"/sim/tokens=2/model/{model}/converse"


def test_a_path_decoded_on_the_wire_fails_the_signature_as_at_aws(native_sim: NativeSim) -> None:
    """What the relay sent before: the path signed with %3A, sent with ':'."""
    bedrock = adapter(native_sim)

    async def send(http: httpx.AsyncClient) -> httpx.Response:
        built = await bedrock.build(canonical(CHAT), upstream_model=FOUNDATION_MODEL, stream=False)
        assert "%3A0/converse" in built.url
        decoded = built.url.replace("%3A", ":")
        return await http.post(decoded, headers=built.headers, content=built.content)

    response = run(send)
    assert response.status_code == 403
    assert response.headers["x-amzn-errortype"].startswith("InvalidSignatureException:")
    assert response.json() == {"message": SIGNATURE_MISMATCH}
