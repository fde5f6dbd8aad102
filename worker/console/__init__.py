"""The support and operations console at /console: server-rendered pages, its auth and CSRF, the
reads about cases, recovery figures and the actions support may take.

Owns: what support sees and does.

May import: the rooms beside it (no module cycle), the domain (handlers), config and worker.pure;
never the composition root (worker.runtime) or the CLI. Enforced by [tool.importlinter] in pyproject.toml.
"""
