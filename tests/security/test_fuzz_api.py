"""Schemathesis against the management API on loopback, driven by the drf-spectacular
schema served at /api/schema/ and authenticated with a personal access token: no 5xx, in
both positive (schema-valid) and negative (schema-violating) generation modes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from django.core.asgi import get_asgi_application
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from portal import services, tokens
from portal.models import Channel, Organization
from tests.servers import serve_in_thread

pytestmark = pytest.mark.django_db(transaction=True)

# Bounded: this many cases per operation and generation mode, each request given 10 s, and
# the whole run per persona FUZZ_SECONDS (it takes about a minute on a loaded 2-core
# machine). It runs with the rest of the suite, in CI (`.ci/run`, the README's `bin/test`).
EXAMPLES_PER_OPERATION = 4
FUZZ_SECONDS = 600


@pytest.fixture
def live_api() -> Iterator[str]:
    base_url, stop = serve_in_thread(get_asgi_application())
    yield base_url
    stop()


@pytest.mark.timeout(FUZZ_SECONDS)
@pytest.mark.parametrize("persona", ["operator_user", "tenant_owner"])
def test_schemathesis_finds_no_server_errors(
    request: pytest.FixtureRequest, live_api: str, tenant_org: Organization, persona: str
) -> None:
    user = request.getfixturevalue(persona)
    services.api_key_create(tenant=tenant_org, name="k", actor="test")
    services.channel_create(
        name="c", base_url="http://u.test/v1", secret="s", models=["sim-small"], actor="test"
    )
    # And one stored around the validation (a restored dump, an SQL fix): pages, tests
    # and edits of it must answer cleanly too.
    broken = services.channel_create(
        name="b", base_url="http://b.test/v1", secret="s", models=["sim-small"], actor="test"
    )
    Channel.objects.filter(pk=broken.pk).update(
        base_url="http://b .test/v1",
        secret_ciphertext=Channel(secret="sk-a\u00a0b").secret_ciphertext,
    )
    _, secret = tokens.personal_access_token_create(
        user=user, name="fuzz", scope="read_write", actor=user
    )
    headers = {"Authorization": f"Bearer {secret}"}
    # Generating the schema takes seconds on a loaded machine: more than httpx's 5 s default.
    schema_url = live_api + "/api/schema/?format=json"
    document = httpx.get(schema_url, headers=headers, timeout=60).json()
    schema = schemathesis.openapi.from_dict(document)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    statuses: dict[str, set[int]] = {}
    failures: list[str] = []
    calls: list[int] = []

    def fuzz(operation: Any, mode: GenerationMode) -> None:
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            response = case.call(base_url=live_api, headers=headers, timeout=10)
            calls.append(response.status_code)
            statuses.setdefault(operation.label, set()).add(response.status_code)
            try:
                case.validate_response(response, checks=[not_a_server_error])
            except AssertionError as exc:  # collect, so one run reports every operation
                failures.append(f"{operation.label}: {str(exc)[:400]}")

        run()

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(operation, mode)
    assert not failures, "\n".join(failures[:10])
    # The run reached every operation and got real answers, not only 401s.
    assert len(statuses) == len(operations)
    assert len(calls) >= 2 * len(operations)
    assert any(200 <= s < 300 for codes in statuses.values() for s in codes)


@pytest.mark.parametrize(
    ("since", "status"),
    [
        ("2574-09-24T07:58:00.457-20:34", 200),  # found by schemathesis: a 500 on PostgreSQL
        ("0001-01-01T00:00:00+23:59", 400),  # before year 1 in UTC
        ("9999-12-31T23:59:59-23:59", 400),  # after year 9999 in UTC
        ("2026-01-01T00:00:00Z", 200),
    ],
)
def test_audit_since_with_extreme_offsets(tenant_owner: Any, since: str, status: int) -> None:
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(tenant_owner)
    assert client.get("/api/audit/", {"since": since}).status_code == status
