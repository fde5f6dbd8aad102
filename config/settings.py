"""Settings from the environment, read once at start-up (never at import).

Twelve-factor: every real service is chosen by an environment variable; with none set the
service runs on embedded defaults (SQLite and an embedded Redis-compatible server under var/,
emails written to a local outbox folder). A bad or missing required value raises
ConfigError whose message is one line naming the variable.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping
from urllib.parse import urlparse

_CHECKOUT = Path(__file__).resolve().parent.parent
# A checkout has schema.sql beside config/; an installed package keeps the same files (templates,
# schema.sql, Procfile, policy) in site-packages/dunning_files (pyproject.toml's package data), and
# its var/ goes in the directory it is run from, never inside site-packages.
PROJECT_ROOT = _CHECKOUT if (_CHECKOUT / "schema.sql").is_file() else _CHECKOUT / "dunning_files"
DEFAULT_VAR_DIR = PROJECT_ROOT / "var" if PROJECT_ROOT == _CHECKOUT else Path.cwd() / "var"


class ConfigError(Exception):
    """Raised when an environment variable is missing or malformed; the message names it."""


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str | None  # None: start (or reuse) the embedded server
    stripe_webhook_secrets: tuple[str, ...]
    admin_token: str
    stripe_api_key: str | None = None
    stripe_api_base: str | None = None
    sendgrid_api_key: str | None = None
    sendgrid_api_host: str | None = None
    email_from: str = "Billing <billing@localhost>"
    email_outbox_dir: Path = PROJECT_ROOT / "var" / "outbox"
    notice_outbox_dir: Path = PROJECT_ROOT / "var" / "notices"
    port: int = 8000
    platform_webhook_url: str | None = None
    platform_webhook_secret: str | None = None  # the first of platform_webhook_secrets
    platform_webhook_secrets: tuple[str, ...] = ()  # every notice is signed with each (rotation)
    platform_api_token: str | None = None  # bearer token of the read-only GET /platform/... API
    dunning_policy: Path = PROJECT_ROOT / "config" / "policy.toml"
    dashboard_user: str | None = None
    dashboard_password: str | None = None
    log_format: str = "json"  # json | console
    log_level: str = "INFO"
    var_dir: Path = PROJECT_ROOT / "var"
    worker_processes: int = 2
    worker_threads: int = 4  # measured: see README "Worker size"
    worker_idle_poll_ms: int = 250  # an idle queue is polled at least this often (Dramatiq's worker timeout)
    worker_scheduled_poll_ms: int = 1000  # the same for the steps queue and delay queues (work due at a time)
    scheduler_interval: float = 15.0  # seconds between scheduler passes
    queue_namespace: str = "dunning"
    web_read_timeout: float = 10.0  # seconds to receive a whole request (worker/web/server.py)
    metrics_token: str | None = None  # GET /metrics needs `Bearer <METRICS_TOKEN>`; unset: loopback only
    metrics_refresh_seconds: float = 30.0  # the domain figures' snapshot is at most this old
    billing_page_url: str | None = None  # BILLING_PAGE_URL: an https page emails may link to
    metrics_amounts: bool = False  # METRICS_AMOUNTS=1 publishes recovered amounts (business figures)
    first_email_delay_seconds: int = 5  # the day-0 email waits this long: a paid arriving back to back cancels it
    broker_url: str | None = None  # BROKER_URL: amqp:// selects RabbitMQ (REDIS_URL stays for Redis)
    database_pool_size: int = 10
    database_max_overflow: int = 20
    sentry_dsn: str | None = None  # SENTRY_DSN: optional error tracking (worker/observe/error_tracking.py)
    # Emails an owner acts on (issue 14): the card-update page, branding, replies, template overrides.
    billing_portal_url: str | None = None  # BILLING_PORTAL_URL: https, may hold {customer} / {subscription}
    email_reply_to: str | None = None  # EMAIL_REPLY_TO: where the owner's replies go
    brand_name: str | None = None  # BRAND_NAME: the signature and the footer (else EMAIL_FROM's name)
    brand_logo_url: str | None = None  # BRAND_LOGO_URL: https image above the heading
    brand_color: str = "#1d4ed8"  # BRAND_COLOR: #rrggbb of the button
    support_url: str | None = None  # SUPPORT_URL: https help page named in the footer
    email_templates_dir: Path | None = None  # EMAIL_TEMPLATES_DIR: files here replace built-in ones by name

    @property
    def uses_rabbitmq(self) -> bool:
        return bool(self.broker_url) and self.broker_url.split(":", 1)[0] in ("amqp", "amqps")


def _require(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} is required but not set")
    return value


MIN_SECRET_LENGTH = 24
# The development values `make run` sets (Makefile): accepted only on a loopback address.
DEVELOPMENT_SECRETS = frozenset({"whsec_local_development_secret", "local-development-admin-token",
                                 "local-admin-token"})
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def _secret(name: str, value: str | None) -> str | None:
    """Refuse a secret or token too short to resist guessing (one line naming the variable)."""
    if value is not None and len(value) < MIN_SECRET_LENGTH:
        raise ConfigError(f"{name} must be at least {MIN_SECRET_LENGTH} characters long, got {len(value)}")
    return value


def redact_url(value: str) -> str:
    """The URL with any password replaced by ***: safe for an error message or a log line."""
    try:
        parsed = urlparse(value)
        if parsed.password:
            netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)
            return parsed._replace(netloc=netloc).geturl()
    except ValueError:
        return "<unparseable URL>"
    return value


def is_loopback(host: str) -> bool:
    host = (host or "").strip()
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def check_bind(settings: "Settings", host: str) -> None:
    """Refuse the development secrets on any address but loopback (ConfigError naming the variable)."""
    if is_loopback(host):
        return
    for name, values in (("STRIPE_WEBHOOK_SECRET", settings.stripe_webhook_secrets),
                         ("ADMIN_TOKEN", (settings.admin_token,))):
        if any(v in DEVELOPMENT_SECRETS for v in values):
            raise ConfigError(f"{name} is a development value (make run); set your own to serve on "
                              f"HOST={host} (development values are accepted only on 127.0.0.1)")


def _optional(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _url(env: Mapping[str, str], name: str, schemes: tuple[str, ...]) -> str | None:
    value = _optional(env, name)
    if value is None:
        return None
    parsed = urlparse(value)
    if parsed.scheme not in schemes or not (parsed.netloc or parsed.path):
        raise ConfigError(f"{name} must be a {'/'.join(schemes)} URL, got {redact_url(value)!r}")
    return value.rstrip("/")




def _platform_secrets(env: Mapping[str, str]) -> tuple[str, ...]:
    """PLATFORM_WEBHOOK_SECRET: one or more comma-separated secrets; `whsec_` ones must be base64."""
    from worker.pure.standard_webhooks import BadSecret, secret_key
    raw = _optional(env, "PLATFORM_WEBHOOK_SECRET") or ""
    secrets = tuple(s.strip() for s in raw.split(",") if s.strip())
    for position, secret in enumerate(secrets, 1):
        try:
            secret_key(secret)
        except BadSecret as exc:
            raise ConfigError(f"PLATFORM_WEBHOOK_SECRET (secret {position}): {exc}") from None
    return secrets


def _brand_color(env: Mapping[str, str]) -> str:
    value = _optional(env, "BRAND_COLOR") or "#1d4ed8"
    if not re.fullmatch(r"#[0-9a-fA-F]{6}", value):
        raise ConfigError(f"BRAND_COLOR must be a #rrggbb colour, got {value!r}")
    return value.lower()


def _templates_dir(env: Mapping[str, str]) -> Path | None:
    value = _optional(env, "EMAIL_TEMPLATES_DIR")
    if value is None:
        return None
    if not Path(value).is_dir():
        raise ConfigError(f"EMAIL_TEMPLATES_DIR must name a readable folder, got {value!r}")
    return Path(value).resolve()


def normalise_database_url(url: str) -> str:
    """Pick the psycopg 3 driver for plain postgres URLs (Heroku-style postgres:// too)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from the environment; raise ConfigError naming the first bad variable."""
    env = os.environ if env is None else env
    var_dir = Path(env.get("DUNNING_VAR_DIR", "") or DEFAULT_VAR_DIR)

    database_url = _optional(env, "DATABASE_URL") or f"sqlite:///{var_dir / 'dunning.sqlite3'}"
    if not database_url.split(":", 1)[0].split("+", 1)[0] in ("sqlite", "postgres", "postgresql"):
        raise ConfigError("DATABASE_URL must be a postgresql:// or sqlite:// URL, "
                          f"got {redact_url(database_url)!r}")

    secrets = tuple(s.strip() for s in _require(env, "STRIPE_WEBHOOK_SECRET").split(",") if s.strip())
    if not secrets:
        raise ConfigError("STRIPE_WEBHOOK_SECRET is required but not set")
    for secret in secrets:
        _secret("STRIPE_WEBHOOK_SECRET", secret)

    platform_url = _url(env, "PLATFORM_WEBHOOK_URL", ("http", "https"))
    platform_secrets = _platform_secrets(env)
    for secret in platform_secrets:
        _secret("PLATFORM_WEBHOOK_SECRET", secret)
    if platform_url and not platform_secrets:
        raise ConfigError("PLATFORM_WEBHOOK_SECRET is required when PLATFORM_WEBHOOK_URL is set")
    admin_token = _secret("ADMIN_TOKEN", _require(env, "ADMIN_TOKEN"))
    platform_token = _secret("PLATFORM_API_TOKEN", _optional(env, "PLATFORM_API_TOKEN"))
    if platform_token is not None and platform_token == admin_token:
        raise ConfigError("PLATFORM_API_TOKEN must differ from ADMIN_TOKEN (it must not grant admin access)")

    sendgrid_key = _optional(env, "SENDGRID_API_KEY")
    email_from = _optional(env, "EMAIL_FROM")
    if sendgrid_key and not email_from:
        raise ConfigError("EMAIL_FROM is required when SENDGRID_API_KEY is set")

    policy = Path(_optional(env, "DUNNING_POLICY") or PROJECT_ROOT / "config" / "policy.toml")
    if not policy.is_absolute():
        policy = (PROJECT_ROOT / policy) if not policy.exists() else policy.resolve()
    if not policy.is_file():
        raise ConfigError(f"DUNNING_POLICY must name a readable policy file, got {str(policy)!r}")

    log_format = (_optional(env, "LOG_FORMAT") or "json").lower()
    if log_format not in ("json", "console"):
        raise ConfigError(f"LOG_FORMAT must be json or console, got {log_format!r}")

    outbox = Path(_optional(env, "EMAIL_OUTBOX_DIR") or var_dir / "outbox")
    notices = Path(_optional(env, "NOTICE_OUTBOX_DIR") or var_dir / "notices")

    settings = Settings(
        database_url=normalise_database_url(database_url),
        redis_url=_url(env, "REDIS_URL", ("redis", "rediss", "unix")),
        stripe_webhook_secrets=secrets,
        admin_token=admin_token,
        stripe_api_key=_optional(env, "STRIPE_API_KEY"),
        stripe_api_base=_url(env, "STRIPE_API_BASE", ("http", "https")),
        sendgrid_api_key=sendgrid_key,
        sendgrid_api_host=_url(env, "SENDGRID_API_HOST", ("http", "https")),
        email_from=email_from or "Billing <billing@localhost>",
        email_outbox_dir=outbox,
        notice_outbox_dir=notices,
        port=_int(env, "PORT", 8000, 1, 65535),
        platform_webhook_url=platform_url,
        platform_webhook_secret=platform_secrets[0] if platform_secrets else None,
        platform_webhook_secrets=platform_secrets,
        platform_api_token=platform_token,
        dunning_policy=policy,
        dashboard_user=_optional(env, "DASHBOARD_USER"),
        dashboard_password=_secret("DASHBOARD_PASSWORD", _optional(env, "DASHBOARD_PASSWORD")),
        log_format=log_format,
        log_level=(_optional(env, "LOG_LEVEL") or "INFO").upper(),
        var_dir=var_dir,
        worker_processes=_int(env, "WORKER_PROCESSES", 2, 1, 64),
        worker_threads=_int(env, "WORKER_THREADS", 4, 1, 256),
        worker_idle_poll_ms=_int(env, "WORKER_IDLE_POLL_MS", 250, 10, 60000),
        worker_scheduled_poll_ms=_int(env, "WORKER_SCHEDULED_POLL_MS", 1000, 10, 60000),
        scheduler_interval=float(_int(env, "SCHEDULER_INTERVAL", 15, 1, 3600)),
        queue_namespace=_optional(env, "QUEUE_NAMESPACE") or "dunning",
        web_read_timeout=float(_int(env, "WEB_READ_TIMEOUT", 10, 1, 300)),
        metrics_token=_secret("METRICS_TOKEN", _optional(env, "METRICS_TOKEN")),
        metrics_refresh_seconds=float(_int(env, "METRICS_REFRESH_SECONDS", 30, 0, 3600)),  # 0: no cache
        billing_page_url=_url(env, "BILLING_PAGE_URL", ("https",)),
        metrics_amounts=(_optional(env, "METRICS_AMOUNTS") or "0").lower() in ("1", "true", "yes"),
        broker_url=_url(env, "BROKER_URL", ("amqp", "amqps", "redis", "rediss", "unix")),
        database_pool_size=_int(env, "DATABASE_POOL_SIZE", 10, 1, 500),
        database_max_overflow=_int(env, "DATABASE_MAX_OVERFLOW", 20, 0, 500),
        sentry_dsn=_url(env, "SENTRY_DSN", ("http", "https")),
        first_email_delay_seconds=_int(env, "FIRST_EMAIL_DELAY_SECONDS", 5, 0, 3600),
        billing_portal_url=_url(env, "BILLING_PORTAL_URL", ("https",)),
        email_reply_to=_optional(env, "EMAIL_REPLY_TO"),
        brand_name=_optional(env, "BRAND_NAME"),
        brand_logo_url=_url(env, "BRAND_LOGO_URL", ("https",)),
        brand_color=_brand_color(env),
        support_url=_url(env, "SUPPORT_URL", ("https",)),
        email_templates_dir=_templates_dir(env),
    )
    check_bind(settings, env.get("HOST", "").strip() or "0.0.0.0")
    return settings
