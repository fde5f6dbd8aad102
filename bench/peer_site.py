"""The peer of `make bench-peer`: dj-stripe's webhook view in the smallest Django site that serves it.

dj-stripe is the field's best-known Stripe webhook receiver for Python; it verifies the signature
and processes the event in the request (one transaction: the trigger row, the event, the objects
it syncs, and the reads from Stripe's API that it needs). The bench runs this site under gunicorn
with the same processes and threads as `dunning web` and posts it the same events as the e2e
section, so "events/s end to end" sits beside the events/s of a design that processes in the
request.

Runs in its own interpreter (BENCH_PEER_PYTHON, `.venv-peer` by default: bench/peer-requirements.txt),
never the service's: it needs nothing from this project but this file. Settings come from the
environment: PEER_DATABASE (a PostgreSQL URL), PEER_STRIPE_API (bench/stripe_stub.py's URL),
PEER_WEBHOOK_SECRET.

    DJANGO_SETTINGS_MODULE=bench.peer_site python -m bench.peer_site   # migrate; print the webhook path
    DJANGO_SETTINGS_MODULE=bench.peer_site gunicorn 'django.core.wsgi:get_wsgi_application()'
"""

from __future__ import annotations

import os
import uuid
from urllib.parse import urlsplit

ENDPOINT_UUID = uuid.UUID("00000000-0000-4000-8000-0000000be9c0")
WEBHOOK_PATH = f"/stripe/webhook/{ENDPOINT_UUID}/"

_database = urlsplit(os.environ.get("PEER_DATABASE", "postgresql://postgres@127.0.0.1:5432/peer"))

SECRET_KEY = "bench-only-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "djstripe"]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]  # as a real site has; it sets Content-Length
DATABASES = {"default": {
    "ENGINE": "django.db.backends.postgresql", "NAME": _database.path.lstrip("/"),
    "USER": _database.username or "postgres", "PASSWORD": _database.password or "",
    "HOST": _database.hostname or "127.0.0.1", "PORT": _database.port or 5432,
    "CONN_MAX_AGE": None,  # persistent connections, as a production site would keep them
}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ROOT_URLCONF = __name__
USE_TZ = True
STRIPE_LIVE_MODE = False
STRIPE_TEST_SECRET_KEY = "sk_test_" + "0" * 24 + "benchonly"  # dj-stripe checks the key's shape
DJSTRIPE_FOREIGN_KEY_TO_FIELD = "id"
LOGGING = {"version": 1, "disable_existing_loggers": False,
           "handlers": {"console": {"class": "logging.StreamHandler"}},
           "root": {"handlers": ["console"], "level": "WARNING"}}


def _configure_stripe() -> None:
    import stripe
    stripe.api_base = os.environ.get("PEER_STRIPE_API", "http://127.0.0.1:9")  # never Stripe itself


_configure_stripe()


def healthz(_request):
    from django.http import HttpResponse
    return HttpResponse("ok")


def __getattr__(name: str):
    """`urlpatterns`, built when Django first resolves a URL: dj-stripe's views import its models,
    which need the app registry that loading these settings comes before."""
    if name != "urlpatterns":
        raise AttributeError(name)
    from django.urls import include, path
    return [path("stripe/", include("djstripe.urls", namespace="djstripe")), path("healthz", healthz)]


def prepare() -> None:
    """Migrate the database and register the webhook endpoint whose secret the load signs with."""
    import django
    from django.core.management import call_command
    django.setup()
    call_command("migrate", verbosity=0)
    from djstripe.models import WebhookEndpoint
    WebhookEndpoint.objects.update_or_create(id="we_bench_peer", defaults=dict(
        livemode=False, secret=os.environ["PEER_WEBHOOK_SECRET"], url=f"http://127.0.0.1{WEBHOOK_PATH}",
        api_version="2025-03-31.basil", enabled_events=["*"], status="enabled",
        djstripe_uuid=ENDPOINT_UUID, djstripe_validation_method="verify_signature"))
    print(WEBHOOK_PATH, flush=True)


if __name__ == "__main__":
    prepare()
