"""The OpenAPI schema validates, the docs need nothing from the network, and a bounded,
schema-driven fuzz run against the API served on loopback finds no 5xx."""

from __future__ import annotations

import random
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.core.asgi import get_asgi_application
from django.core.management import call_command
from django.test import Client

from portal import services, tokens
from portal.models import Organization
from tests.servers import serve_in_thread

SEED = 20260315
CASES_PER_OPERATION = 12


def test_schema_validates_without_warnings(tmp_path: Path, db: None) -> None:
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    text = out.read_text()
    assert "/api/keys/{id}/revoke/" in text and "personalAccessToken" in text


def test_schema_and_docs_are_served_and_self_contained(client: Client, tenant_owner: Any) -> None:
    schema = client.get("/api/schema/?format=json")
    assert schema.status_code == 200
    assert schema.json()["openapi"].startswith("3.")
    client.force_login(tenant_owner)
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    html = docs.content.decode()
    assert "/api/usage/" in html and "ApiKeyCreated" in html
    # Nothing is fetched from elsewhere at run time: no remote script, style or image.
    assert not re.search(r"""(src|href)=["']https?://""", html)


# --- Fuzz -----------------------------------------------------------------------------------

STRINGS = [
    "",
    "a",
    "x" * 300,
    "ü🙂",
    "../../etc/passwd",
    "' OR 1=1 --",
    "null",
    "-1",
    "\x00",
    "%00",
    "2026-13-45",
    "tenant",
]
INTEGERS = [0, 1, -1, 2**31, 2**63, 10**30, "abc", 1.5]
DATES = ["2026-03-01", "0001-01-01", "9999-12-31", "2026-02-30", "yesterday"]
DATETIMES = ["2030-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "soon"]


class Fuzzer:
    """Values for an OpenAPI (sub)schema: mostly valid-looking, often hostile."""

    def __init__(self, schema: dict[str, Any], rng: random.Random) -> None:
        self.components = schema.get("components", {}).get("schemas", {})
        self.rng = rng

    def resolve(self, spec: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in spec:
            spec = self.components[spec["$ref"].rsplit("/", 1)[-1]]
        if "allOf" in spec:
            return self.resolve(spec["allOf"][0])
        if "oneOf" in spec:
            return self.resolve(self.rng.choice(spec["oneOf"]))
        return spec

    def value(self, spec: dict[str, Any], depth: int = 0) -> Any:
        spec = self.resolve(spec)
        pick = self.rng.choice
        if "enum" in spec:
            return pick([*spec["enum"], "bogus"])
        kind = spec.get("type", "string")
        if kind == "integer" or kind == "number":
            return pick(INTEGERS)
        if kind == "boolean":
            return pick([True, False, "maybe"])
        if kind == "array":
            if depth > 2:
                return []
            return pick([[], [self.value(spec.get("items", {}), depth + 1)], "not-a-list"])
        if kind == "object":
            if depth > 2:
                return {}
            body = {
                name: self.value(prop, depth + 1)
                for name, prop in spec.get("properties", {}).items()
                if not prop.get("readOnly") and self.rng.random() < 0.8
            }
            if self.rng.random() < 0.1:
                body["unexpected"] = "field"
            return body
        if spec.get("format") == "date":
            return pick(DATES)
        if spec.get("format") == "date-time":
            return pick(DATETIMES)
        return pick(STRINGS)

    def path_value(self, name: str) -> str:
        options = {
            "id": ["1", "2", "999999", "0", "9" * 30],
            "slug": ["tenant", "platform", "x" * 100, "no-such-org"],
            "public_id": ["sim-small", "no-such-model", "a.b", "%2e%2e"],
        }
        # Quoted: a client can only send a path segment in its URL-encoded form.
        return urllib.parse.quote(str(self.rng.choice(options.get(name, STRINGS))), safe="%")


@pytest.fixture
def live_api(transactional_db: None) -> Iterator[str]:
    base_url, stop = serve_in_thread(get_asgi_application())
    yield base_url
    stop()


def _operations(schema: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in sorted(schema["paths"].items()):
        for method in ("get", "post", "patch", "put", "delete"):
            if method in item:
                yield method, path, item[method]


@pytest.mark.parametrize("persona", ["operator_user", "tenant_owner"])
def test_schema_driven_fuzz_finds_no_server_errors(
    request: pytest.FixtureRequest, live_api: str, tenant_org: Organization, persona: str
) -> None:
    user = request.getfixturevalue(persona)
    services.api_key_create(tenant=tenant_org, name="k", actor="test")
    services.channel_create(
        name="c", base_url="http://u.test/v1", secret="s", models=["sim-small"], actor="test"
    )
    _, secret = tokens.personal_access_token_create(
        user=user, name="fuzz", scope="read_write", actor=user
    )
    rng = random.Random(SEED)
    failures: list[str] = []
    with httpx.Client(
        base_url=live_api, headers={"Authorization": f"Bearer {secret}"}, timeout=10
    ) as http:
        schema = http.get("/api/schema/?format=json").json()
        fuzz = Fuzzer(schema, rng)
        for method, path, operation in _operations(schema):
            body_spec = (
                operation.get("requestBody", {}).get("content", {}).get("application/json", {})
            )
            for _ in range(CASES_PER_OPERATION):
                url = re.sub(r"\{(\w+)\}", lambda m: fuzz.path_value(m.group(1)), path)
                params = {
                    p["name"]: fuzz.value(p.get("schema", {}))
                    for p in operation.get("parameters", [])
                    if p["in"] == "query" and rng.random() < 0.6
                }
                kwargs: dict[str, Any] = {"params": params}
                if body_spec and method != "get":
                    if rng.random() < 0.1:
                        kwargs["content"] = b'{"broken json'
                        kwargs["headers"] = {"Content-Type": "application/json"}
                    else:
                        kwargs["json"] = fuzz.value(body_spec.get("schema", {}))
                response = http.request(method.upper(), url, **kwargs)
                if response.status_code >= 500:
                    failures.append(f"{method.upper()} {url} {kwargs}: {response.status_code}")
    assert not failures, "\n".join(failures[:20])
