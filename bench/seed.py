"""Bench data beyond ``seed_demo``: a key with limits, and the scale-with-data set.

Run by bench/runner.py inside the project's environment (same settings as the relay):

    python bench/seed.py limited-key --out FILE
    python bench/seed.py scale --keys 100000 --rows 10000000 --channels 500 --sample-out FILE

``scale`` is idempotent and PostgreSQL-only: it tops the tables up to the asked sizes with
set-based SQL (generate_series), so a second run costs nothing. Keys beyond the sample
get random digests (nobody holds their secrets); the sample keys are real, and their
secrets are written to ``--sample-out`` for wrk to cycle through.
"""

from __future__ import annotations

# SQL here is built from model metadata and integers this script makes, never from input.
# ruff: noqa: S608
import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

from django.db import connection, models, transaction  # noqa: E402

from billing.models import UsageEvent  # noqa: E402
from portal import crypto, services  # noqa: E402
from portal.models import ApiKey, Channel, Organization  # noqa: E402

ACTOR = "cli:bench"
TENANT_SLUG = "demo"  # seed_demo's tenant
LIMITED_KEY_NAME = "bench-limited"
SAMPLE_KEY_NAME = "bench-sample"
FILLER_KEY_NAME = "bench-filler"
# High enough never to refuse a bench request, so every request runs the whole Lua path.
HUGE_LIMITS = {
    "rpm_limit": 1_000_000_000,
    "tpm_limit": 2_000_000_000,
    "concurrency_limit": 1_000_000,
    "daily_token_limit": 10**15,
}
ROW_BATCH = 1_000_000


def _tenant() -> Organization:
    return Organization.objects.get(slug=TENANT_SLUG)


def _usable_secret(path: Path, name: str) -> str | None:
    try:
        secret = path.read_text().split()[0]
    except (FileNotFoundError, IndexError):
        return None
    key = ApiKey.objects.filter(name=name, digest=crypto.api_key_digest(secret)).first()
    return secret if key is not None and key.is_usable() else None


def _postpaid(tenant: Organization) -> None:
    """seed_demo makes the demo tenant prepaid with a small credit; the bench measures
    what it always has, a tenant on credit without a limit (no money held per request),
    and must never run out."""
    from billing.models import BillingAccount
    from billing.services import billing_account_update
    from billing.services.common import account_for

    account = account_for(tenant)
    if account.mode != BillingAccount.Mode.POSTPAID or account.credit_limit_micros is not None:
        billing_account_update(
            account=account,
            actor=ACTOR,
            mode=BillingAccount.Mode.POSTPAID,
            credit_limit_micros=None,
        )


def limited_key(out: Path) -> None:
    """A key whose key and tenant limits are set (and never reached): the limits path.
    Also puts the bench tenant on unlimited credit (see ``_postpaid``)."""
    tenant = _tenant()
    _postpaid(tenant)
    secret = _usable_secret(out, LIMITED_KEY_NAME)
    if secret is None:
        _, secret = services.api_key_create(tenant=tenant, name=LIMITED_KEY_NAME, actor=ACTOR)
    ApiKey.objects.filter(digest=crypto.api_key_digest(secret)).update(**HUGE_LIMITS)
    out.write_text(secret + "\n")
    out.chmod(0o600)
    print(f"limited key ready in {out}")


def _price(model: object) -> None:
    from billing.models import PriceList
    from billing.services import model_price_set

    wholesale = PriceList.objects.get(owner__kind="platform", is_default=True)
    model_price_set(
        price_list=wholesale,
        model=model,
        input_per_mtok=150_000,
        output_per_mtok=600_000,
        actor=ACTOR,
    )


def _bench_channel(name: str, public_id: str, **settings: Any) -> None:
    """A channel on the demo's simulator serving ``public_id`` (as ``sim-small``)."""
    model = services.catalog_model_upsert(public_id=public_id, actor=ACTOR)
    channel = Channel.objects.filter(name=name).first()
    if channel is None:
        demo = Channel.objects.get(name="Simulator")
        channel = services.channel_create(
            name=name,
            base_url=settings["base_url"],
            secret=demo.secret,
            actor=ACTOR,
            models={public_id: "sim-small"},
            provider_type=settings.get("provider_type", Channel.ProviderType.OPENAI),
        )
    services.channel_update(channel=channel, actor=ACTOR, base_url=settings["base_url"])
    _price(model)


def translated_model() -> None:
    """``sim-translated``: the demo's simulator behind a channel with no native surfaces,
    so Responses and Messages requests for it are translated to chat completions; and
    ``sim-anthropic``: the simulator's Anthropic Messages API behind an Anthropic channel,
    so chat completions requests for it are translated to Messages."""
    base_url = Channel.objects.get(name="Simulator").base_url
    _bench_channel("Simulator (chat only)", "sim-translated", base_url=base_url)
    _bench_channel(
        "Simulator (Anthropic)",
        "sim-anthropic",
        base_url=base_url.removesuffix("/v1"),
        provider_type=Channel.ProviderType.ANTHROPIC,
    )
    print("translated models ready")


def scale(*, keys: int, rows: int, channels: int, sample: int, sample_out: Path) -> None:
    if connection.vendor != "postgresql":
        raise SystemExit("the scale data set is PostgreSQL-only (bulk generate_series)")
    tenant = _tenant()
    _sample_keys(tenant, sample, sample_out)
    _filler_keys(tenant, keys)
    _channels(channels)
    _usage_rows(tenant, rows)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE portal_apikey")
        cursor.execute(f"ANALYZE {UsageEvent._meta.db_table}")
    print(
        f"scale data: {ApiKey.objects.count()} keys, {Channel.objects.count()} channels, "
        f"{_row_count()} usage rows"
    )


def _sample_keys(tenant: Organization, sample: int, out: Path) -> None:
    """Real keys (secrets known) that the load generator cycles through."""
    existing: list[str] = []
    if out.exists():
        secrets = [line.strip() for line in out.read_text().splitlines() if line.strip()]
        digests = {crypto.api_key_digest(s): s for s in secrets}
        found = set(
            ApiKey.objects.filter(
                digest__in=list(digests), status=ApiKey.Status.ACTIVE
            ).values_list("digest", flat=True)
        )
        existing = [digests[d] for d in digests if d in found]
    missing = max(sample - len(existing), 0)
    created: list[str] = []
    objects = []
    for _ in range(missing):
        secret = crypto.generate_api_key()
        key = ApiKey(tenant=tenant, name=SAMPLE_KEY_NAME)
        key.set_secret(secret)
        objects.append(key)
        created.append(secret)
    with transaction.atomic():
        ApiKey.objects.bulk_create(objects, batch_size=1000)
    out.write_text("\n".join(existing[:sample] + created) + "\n")
    out.chmod(0o600)
    print(f"sample keys: {len(existing)} reused, {len(created)} created")


def _filler_keys(tenant: Organization, total: int) -> None:
    missing = total - ApiKey.objects.count()
    if missing <= 0:
        return
    started = time.monotonic()
    start = ApiKey.objects.filter(name=FILLER_KEY_NAME).count() + 1
    overrides = {
        "tenant_id": "%(tenant)s",
        "name": f"'{FILLER_KEY_NAME}'",
        "prefix": "'sk-tg-filler'",
        # Unique, 64 hex characters, and no secret anyone holds.
        "digest": "md5('bench-a-' || i) || md5('bench-b-' || i)",
        "created_at": "now()",
    }
    _insert_series(ApiKey, overrides, start, start + missing - 1, {"tenant": tenant.pk})
    print(f"filler keys: {missing} inserted in {time.monotonic() - started:.1f}s")


def _channels(total: int) -> None:
    """Channels up to ``total``, ten to a model, each for models other than the bench's,
    so the routing table grows while the bench's route stays what it was."""
    have = Channel.objects.count()
    for index in range(have, total):
        services.channel_create(
            name=f"bench-filler-{index}",
            base_url="http://127.0.0.1:9/v1",  # never called: no bench request routes here
            secret=f"filler-{index}",
            actor=ACTOR,
            models=[f"bench-filler-model-{index // 10}"],
        )
    if total > have:
        print(f"channels: {total - have} created")


def _usage_rows(tenant: Organization, total: int) -> None:
    key_ids = list(
        ApiKey.objects.filter(tenant=tenant).order_by("pk").values_list("pk", flat=True)[:1000]
    )
    key_array = "ARRAY[" + ",".join(str(pk) for pk in key_ids) + "]"
    channel = Channel.objects.order_by("pk").values_list("pk", flat=True).first()
    overrides = {
        "request_id": "'bench-row-' || i",
        # Spread over the last 90 days, a few rows a second.
        "created_at": "now() - mod(i, 7776000) * interval '1 second'",
        "recorded_at": "now() - mod(i, 7776000) * interval '1 second'",
        "tenant_id": "%(tenant)s",
        "api_key_id": f"({key_array})[1 + mod(i, {len(key_ids)})]",
        "model": "'sim-small'",
        "channel_id": "%(channel)s",
        "upstream_model": "'sim-small'",
        "prompt_tokens": "12 + mod(i, 500)",
        "completion_tokens": "20 + mod(i, 300)",
        "stream": "mod(i, 2) = 0",
        "status_code": "200",
        "total_latency_ms": "5 + mod(i, 100)",
        "upstream_latency_ms": "3 + mod(i, 90)",
        "attempts": "'[]'::jsonb",
    }
    have = _row_count()
    start = UsageEvent.objects.filter(request_id__startswith="bench-row-").count() + 1
    params = {"tenant": tenant.pk, "channel": channel}
    while have < total:
        batch = min(ROW_BATCH, total - have)
        started = time.monotonic()
        _insert_series(UsageEvent, overrides, start, start + batch - 1, params)
        have += batch
        start += batch
        print(f"usage rows: {have}/{total} ({batch} in {time.monotonic() - started:.1f}s)")


def _row_count() -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {UsageEvent._meta.db_table}")
        return int(cursor.fetchone()[0])


def _insert_series(
    model: type[models.Model], overrides: dict[str, str], first: int, last: int, params: Any
) -> None:
    """INSERT ... SELECT over generate_series(first, last) AS i: one statement, no Python
    per row. Columns without an override get NULL when nullable, else their default."""
    columns, values = [], []
    for field in model._meta.concrete_fields:
        if field.primary_key:
            continue
        columns.append(connection.ops.quote_name(field.column))
        if field.column in overrides:
            values.append(overrides[field.column])
        elif field.null:
            values.append("NULL")
        elif isinstance(field, models.JSONField):
            default = field.get_default() if field.has_default() else None
            values.append(_literal(json.dumps(default)) + "::jsonb")
        elif (default := field.get_default()) is not None:  # "" for blank text fields
            values.append(_literal(default))
        else:
            raise SystemExit(f"{model.__name__}.{field.name}: no value for the bench rows")
    sql = (
        f"INSERT INTO {model._meta.db_table} ({', '.join(columns)}) "
        f"SELECT {', '.join(values)} FROM generate_series({first}, {last}) AS i"
    )
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if callable(value):
        raise SystemExit(f"a callable default ({value!r}) needs an override in bench/seed.py")
    return "'" + str(value).replace("'", "''").replace("%", "%%") + "'"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    limited = commands.add_parser("limited-key")
    limited.add_argument("--out", type=Path, required=True)
    commands.add_parser("translated-model")
    big = commands.add_parser("scale")
    big.add_argument("--keys", type=int, default=100_000)
    big.add_argument("--rows", type=int, default=10_000_000)
    big.add_argument("--channels", type=int, default=500)
    big.add_argument("--sample", type=int, default=200)
    big.add_argument("--sample-out", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "limited-key":
        limited_key(args.out)
    elif args.command == "translated-model":
        translated_model()
    else:
        scale(
            keys=args.keys,
            rows=args.rows,
            channels=args.channels,
            sample=args.sample,
            sample_out=args.sample_out,
        )


if __name__ == "__main__":
    main()
