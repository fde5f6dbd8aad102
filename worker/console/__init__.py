"""The support and operations console at /console: server-rendered pages, its auth and CSRF, the
reads about cases, recovery figures and the actions support may take.

Owns: what support sees and does. May import: worker.pure, worker.infra, worker.observe,
worker.intake, worker.delivery, worker.stripe, worker.web (auth, http_util), worker.cli, handlers, config.
"""
