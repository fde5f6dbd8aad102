"""GET /openapi.json: the HTTP contract (routes, auth, bodies, errors, and the notices we push).

The document is written by hand in worker/web/openapi.json, beside the code it describes, and
served byte for byte. tests/integration/test_openapi.py keeps it honest: every route of the Falcon app's
router (but the HTML pages) and every notice type of worker.delivery.outbox.NOTICE_TYPES must be in it,
it must be valid OpenAPI 3.1, and schemathesis checks the running app against it.
"""

from __future__ import annotations

from pathlib import Path

import falcon

PATH = Path(__file__).with_name("openapi.json")
# HTML pages for people, not an API: not described in the document.
HTML_PREFIXES = ("/dashboard", "/console")


def load_bytes() -> bytes:
    return PATH.read_bytes()


class Document:
    """GET /openapi.json (no auth: it holds no secret, only the contract)."""

    def __init__(self):
        self.body = load_bytes()

    def on_get(self, _req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = "application/json"
        resp.data = self.body


def router_routes(app: falcon.App) -> dict[str, set[str]]:
    """{uri_template: {HTTP methods with a responder}} read from the app's compiled router."""
    found: dict[str, set[str]] = {}

    def walk(nodes):
        for node in nodes:
            if node.resource is not None:
                methods = {m for m in (node.method_map or {})
                           if hasattr(node.resource, f"on_{m.lower()}")}
                found[node.uri_template] = methods
            walk(node.children)

    walk(app._router._roots)
    return found
