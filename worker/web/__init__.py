"""The HTTP face: the WSGI app (webhooks in, stored, enqueued, 2xx), the admin, privacy, platform and
operators' routes, the OpenAPI contract, the gunicorn worker and app.

Owns: every HTTP route. May import every room below the composition root (the console included),
handlers, config.
"""
