"""Settings from the environment, read once at start-up (never at import).

Twelve-factor: every real service is chosen by an environment variable; with none set the
service runs on embedded defaults (SQLite and an embedded Redis-compatible server under var/,
emails written to a local outbox folder). A bad or missing required value raises
ConfigError whose message is one line naming the variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping
from urllib.parse import urlparse

PROJECT_ROOT = Path(__file__).resolve().parent.parent


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
    platform_webhook_secret: str | None = None
    dunning_policy: Path = PROJECT_ROOT / "config" / "policy.toml"
    dashboard_user: str | None = None
    dashboard_password: str | None = None
    log_format: str = "json"  # json | console
    log_level: str = "INFO"
    var_dir: Path = PROJECT_ROOT / "var"
    worker_processes: int = 2
    worker_threads: int = 8
    scheduler_interval: float = 15.0  # seconds between scheduler passes
    queue_namespace: str = "dunning"
    first_email_delay_seconds: int = 5  # the day-0 email waits this long: a paid arriving back to back cancels it
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def _require(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} is required but not set")
    return value


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
        raise ConfigError(f"{name} must be a {'/'.join(schemes)} URL, got {value!r}")
    return value.rstrip("/")


def normalise_database_url(url: str) -> str:
    """Pick the psycopg 3 driver for plain postgres URLs (Heroku-style postgres:// too)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from the environment; raise ConfigError naming the first bad variable."""
    env = os.environ if env is None else env
    var_dir = Path(env.get("DUNNING_VAR_DIR", "") or PROJECT_ROOT / "var")

    database_url = _optional(env, "DATABASE_URL") or f"sqlite:///{var_dir / 'dunning.sqlite3'}"
    if not database_url.split(":", 1)[0].split("+", 1)[0] in ("sqlite", "postgres", "postgresql"):
        raise ConfigError(f"DATABASE_URL must be a postgresql:// or sqlite:// URL, got {database_url!r}")

    secrets = tuple(s.strip() for s in _require(env, "STRIPE_WEBHOOK_SECRET").split(",") if s.strip())
    if not secrets:
        raise ConfigError("STRIPE_WEBHOOK_SECRET is required but not set")

    platform_url = _url(env, "PLATFORM_WEBHOOK_URL", ("http", "https"))
    platform_secret = _optional(env, "PLATFORM_WEBHOOK_SECRET")
    if platform_url and not platform_secret:
        raise ConfigError("PLATFORM_WEBHOOK_SECRET is required when PLATFORM_WEBHOOK_URL is set")

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

    return Settings(
        database_url=normalise_database_url(database_url),
        redis_url=_url(env, "REDIS_URL", ("redis", "rediss", "unix")),
        stripe_webhook_secrets=secrets,
        admin_token=_require(env, "ADMIN_TOKEN"),
        stripe_api_key=_optional(env, "STRIPE_API_KEY"),
        stripe_api_base=_url(env, "STRIPE_API_BASE", ("http", "https")),
        sendgrid_api_key=sendgrid_key,
        sendgrid_api_host=_url(env, "SENDGRID_API_HOST", ("http", "https")),
        email_from=email_from or "Billing <billing@localhost>",
        email_outbox_dir=outbox,
        notice_outbox_dir=notices,
        port=_int(env, "PORT", 8000, 1, 65535),
        platform_webhook_url=platform_url,
        platform_webhook_secret=platform_secret,
        dunning_policy=policy,
        dashboard_user=_optional(env, "DASHBOARD_USER"),
        dashboard_password=_optional(env, "DASHBOARD_PASSWORD"),
        log_format=log_format,
        log_level=(_optional(env, "LOG_LEVEL") or "INFO").upper(),
        var_dir=var_dir,
        worker_processes=_int(env, "WORKER_PROCESSES", 2, 1, 64),
        worker_threads=_int(env, "WORKER_THREADS", 8, 1, 256),
        scheduler_interval=float(_int(env, "SCHEDULER_INTERVAL", 15, 1, 3600)),
        queue_namespace=_optional(env, "QUEUE_NAMESPACE") or "dunning",
        first_email_delay_seconds=_int(env, "FIRST_EMAIL_DELAY_SECONDS", 5, 0, 3600),
    )
