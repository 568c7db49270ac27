"""Rules that live on the portal's models."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError

from portal.models import Organization
from portal.models.channels import validate_upstream_url


@pytest.mark.parametrize(
    "url",
    ["https://api.openai.com/v1", "http://simulator:9100/v1", "http://127.0.0.1:9100/sim/x/v1"],
)
def test_upstream_urls_accept_service_names(url: str) -> None:
    validate_upstream_url(url)


@pytest.mark.parametrize(
    "url",
    ["ftp://host/v1", "api.openai.com/v1", "http:///v1", "http://h:99999/v1", "http://h/?a=1"],
)
def test_upstream_urls_refuse_what_cannot_be_forwarded_to(url: str) -> None:
    with pytest.raises(ValidationError):
        validate_upstream_url(url)


@pytest.mark.django_db
def test_there_is_only_one_platform(platform_org: Organization) -> None:
    with pytest.raises(IntegrityError):
        Organization.objects.create(name="Second", slug="second", kind="platform")


@pytest.mark.django_db
def test_clean_leaves_an_unknown_kind_to_field_validation() -> None:
    organization = Organization(name="X", slug="x", kind="galaxy")
    organization.clean()  # no KeyError
    with pytest.raises(ValidationError) as caught:
        organization.full_clean()
    assert "kind" in caught.value.message_dict
