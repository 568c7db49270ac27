"""Tollgate's settings, driven by environment variables (django-environ).

With nothing configured the project runs embedded: SQLite under ``var/``, an in-process
cache, Celery tasks executed eagerly, and secrets generated once into ``var/secrets.json``.
Production sets ``DATABASE_URL``, ``REDIS_URL``, ``SECRET_KEY``, ``TOLLGATE_KEY_HMAC_SECRET``
and ``TOLLGATE_ENCRYPTION_KEYS`` (see README).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("TOLLGATE_VAR_DIR", BASE_DIR / "var"))

env = environ.Env()
if (BASE_DIR / ".env").exists():
    environ.Env.read_env(BASE_DIR / ".env")


def _embedded_secrets() -> dict[str, str]:
    """Secrets for the embedded mode: generated on first use, then reused.

    A fresh clone must work with no configuration, yet a hard-coded key would be the same
    on every install; so each install gets its own, kept out of git under ``var/``.
    """
    path = VAR_DIR / "secrets.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        pass
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    values = {
        "SECRET_KEY": secrets.token_urlsafe(50),
        "TOLLGATE_KEY_HMAC_SECRET": secrets.token_urlsafe(32),
        "TOLLGATE_ENCRYPTION_KEYS": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
    }
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race: use its values
        return json.loads(path.read_text())
    with os.fdopen(fd, "w") as fh:
        json.dump(values, fh)
    return values


_needs_embedded = not all(
    os.environ.get(name)
    for name in ("SECRET_KEY", "TOLLGATE_KEY_HMAC_SECRET", "TOLLGATE_ENCRYPTION_KEYS")
)
_embedded = _embedded_secrets() if _needs_embedded else {}

SECRET_KEY = env.str("SECRET_KEY", default=_embedded.get("SECRET_KEY", ""))
DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "csp",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "portal",
    "relay",
    "billing",
    "console",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Staff who enrolled a TOTP device must enter a code before anything else.
    "django_otp.middleware.OTPMiddleware",
    "console.middleware.StaffTwoFactorMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
]

OTP_TOTP_ISSUER = "Tollgate"
# The admin never shows a TOTP device's seed (its key field, setup page and QR code): an
# operator must not be able to read another person's second factor.
OTP_ADMIN_HIDE_SENSITIVE_DATA = True

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'tollgate.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The relay's usage writer and the dashboard write from different threads.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "transaction_mode": "IMMEDIATE"}
    )
    # Tests run servers in threads; an in-memory database shared between threads reports
    # "table is locked" at once instead of waiting, so tests use a file.
    # One file per process, so that test runs started side by side never share one.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-{os.getpid()}.sqlite3")}
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache, Redis, Celery -------------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env.str("CACHE_KEY_PREFIX", default="tollgate"),
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL or "memory://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    # kombu's file-system transport (bin/demo's broker: no Redis needed): one directory of
    # message files that producers write and the worker reads, on this machine only.
    _broker_dir = Path(env.str("CELERY_BROKER_DIR", default=str(VAR_DIR / "broker")))
    for _folder in ("queue", "control"):
        (_broker_dir / _folder).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "control_folder": str(_broker_dir / "control"),
    }
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=not REDIS_URL)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TIMEZONE = "UTC"
# Seconds between runs of every periodic job (bin/demo: 15); unset or 0: the production
# schedule in config/celery_app.py.
TOLLGATE_PERIODIC_SECONDS = env.float("TOLLGATE_PERIODIC_SECONDS", default=0.0)

# --- Auth, i18n, static ---------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(VAR_DIR / "static")))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
# Serve app static files without a collectstatic step in the embedded mode.
WHITENOISE_USE_FINDERS = env.bool("WHITENOISE_USE_FINDERS", default=True)
# Mail (invitations, budget alerts, password reset) from one URL: smtp://user:pass@host:25,
# smtp+tls://… (STARTTLS on 587), smtp+ssl://… (465); embedded, mail is printed instead.
_EMAIL = env.email_url("EMAIL_URL", default="consolemail://")
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default=_EMAIL["EMAIL_BACKEND"])
EMAIL_HOST = _EMAIL["EMAIL_HOST"] or "localhost"
EMAIL_PORT = _EMAIL["EMAIL_PORT"] or 25
EMAIL_HOST_USER = _EMAIL["EMAIL_HOST_USER"] or ""
EMAIL_HOST_PASSWORD = _EMAIL["EMAIL_HOST_PASSWORD"] or ""
EMAIL_USE_TLS = _EMAIL.get("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = _EMAIL.get("EMAIL_USE_SSL", False)
EMAIL_TIMEOUT = 10
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="Tollgate <tollgate@localhost>")

REST_FRAMEWORK = {
    # Tokens first: their WWW-Authenticate header makes an anonymous call a 401, not a 403.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "console.api.authentication.PersonalAccessTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        "console.api.permissions.TokenScopePermission",
    ],
    "DEFAULT_PAGINATION_CLASS": "console.api.pagination.PagePagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Tollgate management API",
    "DESCRIPTION": "Organisations, members, API keys, channels, models, price lists, "
    "usage, invoices, balances and top-ups, and the audit log. Authenticate with a session "
    "or a personal access token (`Authorization: Bearer tg-pat-...`). The OpenAI-compatible "
    "relay lives at /v1/ and is not described here.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": "/api/",
    "ENUM_NAME_OVERRIDES": {
        "ApiKeyStatusEnum": "portal.models.keys.ApiKey.Status",
        "ChannelStatusEnum": "portal.models.channels.Channel.Status",
        "SurfaceEnum": "portal.models.catalog.SURFACES",
    },
}

# LOG_FORMAT=json: one JSON object per line (python-json-logger), each with the id of the
# relay request it belongs to; RELAY_ACCESS_LOG=true adds one line per chat completion.
LOG_FORMAT = env.str("LOG_FORMAT", default="plain")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "relay.logcontext.RequestIdFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if LOG_FORMAT == "json" else "plain",
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        # httpx logs every upstream request at INFO: noise, and a cost on the relay's hot path.
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        "stripe": {"level": "WARNING"},  # it logs each API call at INFO
        "relay.access": {
            "level": "INFO" if env.bool("RELAY_ACCESS_LOG", default=False) else "WARNING"
        },
    },
}
# Prometheus metrics at GET /metrics (see relay/metrics.py); false: not counted, 404.
RELAY_METRICS = env.bool("RELAY_METRICS", default=True)

# --- Security headers and cookies ----------------------------------------------------------
# Pages load scripts, styles and images from this origin only; nothing may frame them.
# Style attributes stay allowed: the Django admin's templates use a few.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "style-src-attr": ["'unsafe-inline'"],
        "img-src": ["'self'", "data:"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
# Behind a TLS-terminating proxy, opt in with TOLLGATE_BEHIND_TLS_PROXY=true: the proxy's
# X-Forwarded-Proto then marks requests secure, cookies are sent over HTTPS only, plain HTTP
# is redirected, and HSTS tells browsers to stay on HTTPS.
TOLLGATE_BEHIND_TLS_PROXY = env.bool("TOLLGATE_BEHIND_TLS_PROXY", default=False)
if TOLLGATE_BEHIND_TLS_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=TOLLGATE_BEHIND_TLS_PROXY)
# (/v1/*, /healthz and /readyz are served by the relay app, which never redirects.)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=TOLLGATE_BEHIND_TLS_PROXY)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=TOLLGATE_BEHIND_TLS_PROXY)
SECURE_HSTS_SECONDS = env.int(
    "SECURE_HSTS_SECONDS", default=31_536_000 if TOLLGATE_BEHIND_TLS_PROXY else 0
)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool(
    "SECURE_HSTS_INCLUDE_SUBDOMAINS", default=TOLLGATE_BEHIND_TLS_PROXY
)
# Joining the browsers' preload list is the domain owner's decision, made with the vendors;
# check --deploy's reminder about it (security.W021) is silenced unless it is opted into.
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]
# Error reports (debug pages, mailed reports) hide secrets held in local variables too.
DEFAULT_EXCEPTION_REPORTER_FILTER = "config.reporting.SecretScrubbingFilter"

# --- Tollgate -------------------------------------------------------------------------------
# API keys are stored as HMAC-SHA256 under this secret; changing it invalidates every key.
TOLLGATE_KEY_HMAC_SECRET = env.str(
    "TOLLGATE_KEY_HMAC_SECRET", default=_embedded.get("TOLLGATE_KEY_HMAC_SECRET", "")
)
# Fernet keys for upstream secrets, newest first; older keys still decrypt during rotation.
TOLLGATE_ENCRYPTION_KEYS = env.list(
    "TOLLGATE_ENCRYPTION_KEYS", default=[_embedded.get("TOLLGATE_ENCRYPTION_KEYS", "")]
)
# Public base URL of the relay, shown in quick-start snippets.
TOLLGATE_PUBLIC_URL = env.str("TOLLGATE_PUBLIC_URL", default="http://127.0.0.1:8000")
# Card payments: each seller connects its own Stripe account on the dashboard. Only tests
# point the stripe library elsewhere (their loopback stand-in); empty means Stripe itself.
STRIPE_API_BASE = env.str("STRIPE_API_BASE", default="")
# Invitations one person, or one organisation, may send per hour.
TOLLGATE_INVITATIONS_PER_HOUR = 20
# Single sign-on for the platform (OpenID Connect, mozilla-django-oidc); organisations add
# their own providers on the dashboard. OIDC_ROLE_MAP: {"claim value": "org-slug:role"}.
OIDC_ISSUER = env.str("OIDC_ISSUER", default="")
OIDC_CLIENT_ID = env.str("OIDC_CLIENT_ID", default="")
OIDC_CLIENT_SECRET = env.str("OIDC_CLIENT_SECRET", default="")
OIDC_ALLOWED_DOMAINS = env.list("OIDC_ALLOWED_DOMAINS", default=[])
OIDC_ROLE_CLAIM = env.str("OIDC_ROLE_CLAIM", default="groups")
OIDC_ROLE_MAP = env.json("OIDC_ROLE_MAP", default={})
# Staff signed in through the platform's provider skip Tollgate's own TOTP code only when
# this says the provider enforces a second factor.
OIDC_DELEGATE_TWO_FACTOR = env.bool("OIDC_DELEGATE_TWO_FACTOR", default=False)
OIDC_AUTHENTICATION_CALLBACK_URL = "sso_callback"
OIDC_RP_SIGN_ALGO = "RS256"
OIDC_USE_PKCE = True
OIDC_TIMEOUT = 10
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "console.sso.SsoBackend",
]

RELAY_MAX_BODY_BYTES = env.int("RELAY_MAX_BODY_BYTES", default=20 * 1024 * 1024)
# JSON values (counted as commas and opening brackets, strings included) a request body may
# hold: parsing is what costs memory and event-loop time, so it is bounded before (see
# relay.intake).
RELAY_MAX_BODY_VALUES = env.int("RELAY_MAX_BODY_VALUES", default=200_000)
# A body up to this size that arrives within this time is admitted once, after the parse;
# a larger or slower one is first counted against its key's request and concurrency
# limits, before the rest is read.
RELAY_BODY_FAST_PATH_BYTES = env.int("RELAY_BODY_FAST_PATH_BYTES", default=64 * 1024)
RELAY_BODY_FAST_PATH_SECONDS = env.float("RELAY_BODY_FAST_PATH_SECONDS", default=0.5)
# What a provider bills apart from the token prices the relay meters, passed through
# unmetered (relay.dialects.fees): any of web_search, file_search, code_interpreter,
# hosted_shell, code_execution, advisor, fast_mode, inference_geo. Default: refused.
RELAY_UNMETERED_FEATURES = frozenset(env.list("RELAY_UNMETERED_FEATURES", default=[]))
_UNKNOWN_FEATURES = RELAY_UNMETERED_FEATURES - {
    "web_search",
    "file_search",
    "code_interpreter",
    "hosted_shell",
    "code_execution",
    "advisor",
    "fast_mode",
    "inference_geo",
}
if _UNKNOWN_FEATURES:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(
        f"RELAY_UNMETERED_FEATURES names unknown features: {sorted(_UNKNOWN_FEATURES)}"
    )
# Tool types not known to relay.dialects.fees (a provider's new or own hosted tool), by
# type or by type without its date, that the operator lets through as they are; others
# are refused, since the provider may bill them apart from tokens.
RELAY_ALLOWED_TOOL_TYPES = frozenset(env.list("RELAY_ALLOWED_TOOL_TYPES", default=[]))
# What the worst-case hold allows for each input the provider fetches itself by URL (a
# picture; a document or file), whose tokens the request's bytes do not bound.
RELAY_URL_IMAGE_TOKENS = env.int("RELAY_URL_IMAGE_TOKENS", default=10_000)
RELAY_URL_FILE_TOKENS = env.int("RELAY_URL_FILE_TOKENS", default=200_000)
# Prompt tokens the hold allows for the conversation a Responses ``previous_response_id``
# names: OpenAI reads it again as prompt, and the request's bytes do not bound it (the
# model's context window does).
RELAY_PREVIOUS_RESPONSE_TOKENS = env.int("RELAY_PREVIOUS_RESPONSE_TOKENS", default=200_000)
# Searches allowed to a Messages web search tool that sets no ``max_uses`` (the relay
# sets it, so that the request's hold covers every search the provider may bill).
RELAY_WEB_SEARCH_MAX_USES = env.int("RELAY_WEB_SEARCH_MAX_USES", default=10)
# Tools the provider runs itself add to the prompt, and every later pass of its tool loop
# reads all of it again (relay.dialects.fees.ToolLoop, docs/pricing.md). The hold allows:
# the passes of a Messages server tool loop (Anthropic pauses the turn after 10);
RELAY_SERVER_TOOL_ITERATIONS = env.int("RELAY_SERVER_TOOL_ITERATIONS", default=10)
# the tokens of each web search's results;
RELAY_WEB_SEARCH_RESULT_TOKENS = env.int("RELAY_WEB_SEARCH_RESULT_TOKENS", default=10_000)
# a Messages web fetch tool's pages, and tokens per page: sent as its max_uses and
# max_content_tokens where it sets none (a PDF, which max_content_tokens does not bound,
# is allowed RELAY_WEB_FETCH_TOKENS);
RELAY_WEB_FETCH_MAX_USES = env.int("RELAY_WEB_FETCH_MAX_USES", default=5)
RELAY_WEB_FETCH_TOKENS = env.int("RELAY_WEB_FETCH_TOKENS", default=25_000)
# the tokens of each MCP server's tool list, and of what a tool with no bound in the
# request (an MCP server, code execution) adds per pass, or per call on Responses;
RELAY_TOOL_RESULT_TOKENS = env.int("RELAY_TOOL_RESULT_TOKENS", default=10_000)
# and a Responses request's built-in tool calls: sent as its max_tool_calls where it
# sets none.
RELAY_RESPONSES_MAX_TOOL_CALLS = env.int("RELAY_RESPONSES_MAX_TOOL_CALLS", default=10)
# More ``anthropic-beta`` names forwarded to Anthropic channels, beside those known to be
# billed as tokens only (relay.dialects.betas); a client's other names are dropped.
RELAY_ANTHROPIC_BETAS = frozenset(env.list("RELAY_ANTHROPIC_BETAS", default=[]))
# Every connection of the web process (relay, dashboard, API): request headers must arrive
# within RELAY_HEADER_TIMEOUT of the connection (or of the request's first byte), and the
# body within RELAY_BODY_TIMEOUT of the headers (relay.server).
RELAY_HEADER_TIMEOUT = env.float("RELAY_HEADER_TIMEOUT", default=10.0)
RELAY_BODY_TIMEOUT = env.float("RELAY_BODY_TIMEOUT", default=30.0)
# How often each relay process checks whether keys, models or channels changed.
RELAY_CACHE_POLL_SECONDS = env.float("RELAY_CACHE_POLL_SECONDS", default=1.0)
# However a change notice was lost, each relay process re-reads the keys, prices and
# routing table it holds this often (in the background, a few queries in all).
RELAY_CACHE_REVALIDATE_SECONDS = env.float("RELAY_CACHE_REVALIDATE_SECONDS", default=30.0)
# Unknown keys each client address may try per minute and relay process before further
# unknown keys from it are refused (429) without a database lookup.
RELAY_AUTH_FAILURES_PER_MINUTE = env.int("RELAY_AUTH_FAILURES_PER_MINUTE", default=30)
RELAY_MAX_ATTEMPTS = env.int("RELAY_MAX_ATTEMPTS", default=3)
RELAY_CONNECT_TIMEOUT = env.float("RELAY_CONNECT_TIMEOUT", default=5.0)
RELAY_FIRST_BYTE_TIMEOUT = env.float("RELAY_FIRST_BYTE_TIMEOUT", default=60.0)
RELAY_TOTAL_TIMEOUT = env.float("RELAY_TOTAL_TIMEOUT", default=600.0)
# The collector's first-generation threshold in each relay worker (Python's is 700): a
# request makes and drops many short-lived objects, and each young collection walks the
# objects of the requests in flight. 0 keeps Python's own. See ``config.asgi``.
RELAY_GC_THRESHOLD = env.int("RELAY_GC_THRESHOLD", default=5000)
# Usage events are written in batches by a background thread of each relay process.
RELAY_USAGE_FLUSH_SECONDS = env.float("RELAY_USAGE_FLUSH_SECONDS", default=0.5)
RELAY_USAGE_BATCH_SIZE = env.int("RELAY_USAGE_BATCH_SIZE", default=500)
RELAY_REDIS_TIMEOUT = env.float("RELAY_REDIS_TIMEOUT", default=2.0)
# When Redis cannot be reached: refuse limited requests with a 503 (false), or let them
# through unlimited until it is back (true).
RELAY_LIMITS_FAIL_OPEN = env.bool("RELAY_LIMITS_FAIL_OPEN", default=False)
# A limited key far from its limits has its request sent upstream while its admission is
# still on its way to Redis, and cut if refused (``relay.ahead``): the operator may pay the
# provider for such a cut call. False: every limited request waits for its admission.
RELAY_FORWARD_AHEAD = env.bool("RELAY_FORWARD_AHEAD", default=True)
# A busy key far from its limits has up to this many requests admitted in one Redis
# call, taken by its next requests in the same process (relay.leases); 1: no leases.
RELAY_LEASE_SIZE = env.int("RELAY_LEASE_SIZE", default=64)
# ...and only while its last admission left room for at least this many more requests
# (each limit and money scope) before any is half used: a lease's ids count until taken or
# given back, so near a small budget a burst in another process could be refused early.
RELAY_LEASE_MIN_ROOM = env.int("RELAY_LEASE_MIN_ROOM", default=256)
# A channel failing this often within the window is skipped for the cool-down, then probed.
RELAY_BREAKER_FAILURES = env.int("RELAY_BREAKER_FAILURES", default=5)
RELAY_BREAKER_WINDOW = env.float("RELAY_BREAKER_WINDOW", default=30.0)
RELAY_BREAKER_COOLDOWN = env.float("RELAY_BREAKER_COOLDOWN", default=30.0)
# Tokens reserved against tokens-per-minute limits when a request sets no max_tokens.
RELAY_DEFAULT_RESERVED_OUTPUT_TOKENS = env.int("RELAY_DEFAULT_RESERVED_OUTPUT_TOKENS", default=0)
# Money: output tokens a request is held for when neither it nor its model caps them
# (max_tokens / the model's max output); its real cost is charged whatever it comes to.
RELAY_RESERVE_OUTPUT_TOKENS = env.int("RELAY_RESERVE_OUTPUT_TOKENS", default=4096)
# Events without upstream usage are counted with the bundled tokenizer in one process per
# host shared by the deployment's relay processes (``relay.token_server``), which stops
# after this long without a count.
RELAY_TOKEN_COUNTER_IDLE_SECONDS = env.float("RELAY_TOKEN_COUNTER_IDLE_SECONDS", default=300.0)
# How long a money scope's figures seeded from the database are trusted before reseeding
# (changes made through Tollgate reseed them at once).
RELAY_SPEND_RESEED_SECONDS = env.float("RELAY_SPEND_RESEED_SECONDS", default=300.0)
# A usage event claimed by a relay process's writer but not confirmed written within this
# time (the process died) is claimed again by another.
RELAY_USAGE_LEASE_SECONDS = env.float("RELAY_USAGE_LEASE_SECONDS", default=60.0)
# A stream keeps its progress (text delivered, usage seen) in Redis at most this often,
# so that a stream cut by a lost relay process is billed for what it delivered.
RELAY_PROGRESS_MARK_SECONDS = env.float("RELAY_PROGRESS_MARK_SECONDS", default=1.0)
# A stream's first progress mark waits this long after its first bytes: a stream that
# ends sooner never writes one (and is not billed should its process die meanwhile).
RELAY_PROGRESS_FIRST_MARK_SECONDS = env.float("RELAY_PROGRESS_FIRST_MARK_SECONDS", default=0.1)
# A relay process not heard of for this long is taken for dead: its open streams are
# settled as cut, from their last progress mark, by the other relay processes.
RELAY_ORPHAN_AFTER_SECONDS = env.float("RELAY_ORPHAN_AFTER_SECONDS", default=10.0)


# --- Billing ---------------------------------------------------------------------------------
BILLING_DEFAULT_CURRENCY = env.str("BILLING_DEFAULT_CURRENCY", default="USD")
# Raw usage events older than this are pruned once rolled up (rollups and invoices stay).
BILLING_RAW_RETENTION_DAYS = env.int("BILLING_RAW_RETENTION_DAYS", default=400)
# Periodic jobs re-read this many seconds before their watermark to fold in late events.
BILLING_WATERMARK_MARGIN_SECONDS = env.int("BILLING_WATERMARK_MARGIN_SECONDS", default=300)
BILLING_WEBHOOK_TIMEOUT_SECONDS = env.float("BILLING_WEBHOOK_TIMEOUT_SECONDS", default=5.0)
# Budget webhooks go only to public addresses (a tenant must not make Tollgate's workers
# reach loopback, private or link-local hosts); True lets them reach any address.
BILLING_WEBHOOK_ALLOW_PRIVATE = env.bool("BILLING_WEBHOOK_ALLOW_PRIVATE", default=False)


if not all((SECRET_KEY, TOLLGATE_KEY_HMAC_SECRET, *TOLLGATE_ENCRYPTION_KEYS)):
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(
        "SECRET_KEY, TOLLGATE_KEY_HMAC_SECRET and TOLLGATE_ENCRYPTION_KEYS must be set together"
    )
