"""The official openai Node SDK, unmodified, streams a Responses API answer through the
relay. Needs ``node`` and ``npm``: the SDK is installed once from the npm registry into
``var/node-sdk/`` (git-ignored); without node, npm or the registry the test is skipped,
saying why."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.relay.conftest import PUBLIC_MODEL, Gateway, usage_events

OPENAI_NODE_VERSION = "6.9.1"
SDK_DIR = Path(__file__).resolve().parents[2] / "var" / "node-sdk"
SCRIPT = """
import OpenAI from "openai";
const env = process.env;
const client = new OpenAI({ baseURL: env.BASE_URL, apiKey: env.KEY, maxRetries: 0 });
const stream = await client.responses.create({ model: env.MODEL, input: "Hello", stream: true });
const types = [];
let final = null;
let text = "";
for await (const event of stream) {
  types.push(event.type);
  if (event.type === "response.output_text.delta") text += event.delta;
  if (event.type === "response.completed") final = event.response;
}
const { usage, model } = final;
console.log(JSON.stringify({ types, text, usage, model }));
"""


def _sdk() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the Node SDK test")
    marker = SDK_DIR / "node_modules" / "openai" / "package.json"
    if not marker.exists() or json.loads(marker.read_text())["version"] != OPENAI_NODE_VERSION:
        SDK_DIR.mkdir(parents=True, exist_ok=True)
        (SDK_DIR / "package.json").write_text('{"private": true, "type": "module"}\n')
        installed = subprocess.run(  # noqa: S603 - npm from PATH, fixed arguments
            [npm, "install", "--no-audit", "--no-fund", f"openai@{OPENAI_NODE_VERSION}"],
            cwd=SDK_DIR,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if installed.returncode != 0:
            pytest.skip(
                f"npm could not install openai@{OPENAI_NODE_VERSION}: {installed.stderr[-300:]}"
            )
    return SDK_DIR


@pytest.mark.parametrize("native", [True, False], ids=["pass-through", "translated"])
def test_node_sdk_streams_a_response(gateway: Gateway, native: bool) -> None:
    sdk = _sdk()
    if native:
        gateway.channel.native_surfaces = ["responses"]
        gateway.channel.save()
    script = sdk / "stream_response.mjs"
    script.write_text(SCRIPT)
    ran = subprocess.run(  # noqa: S603 - node from PATH, our own script
        [str(shutil.which("node")), str(script)],
        env={
            "PATH": "/usr/bin:/bin",
            "BASE_URL": gateway.url + "/v1",
            "KEY": gateway.secret,
            "MODEL": PUBLIC_MODEL,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout.strip().splitlines()[-1])
    assert result["types"][0] == "response.created"
    assert result["types"][-1] == "response.completed"
    assert "response.output_text.delta" in result["types"]
    assert result["text"].startswith("tok0 tok1") and result["model"] == PUBLIC_MODEL
    assert result["usage"]["output_tokens"] > 0
    [event] = usage_events(1)
    assert event.surface == "responses" and event.stream
    assert event.completion_tokens == result["usage"]["output_tokens"]
