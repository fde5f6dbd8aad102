"""The HTTP face: the WSGI app (webhooks in, stored, enqueued, 2xx), the admin, privacy, platform and
operators' routes, the OpenAPI contract (openapi.json), the gunicorn worker and application.

Owns: every HTTP route but the console's.

May import: the rooms beside it (no module cycle), the domain (handlers), config and worker.pure;
never the composition root (worker.runtime) or the CLI. Enforced by [tool.importlinter] in pyproject.toml.
"""
