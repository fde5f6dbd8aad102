"""The ingest baseline: a Falcon app that reads the body and answers 200, on the SAME gunicorn setup.

Bench-only (the production app has no such route). It is served through worker.web.gunicorn_app's
own application class and `serve()` options, only the loaded app differs, so the ratio
ingest / bare isolates what the webhook adds: signature, parsing, the INSERT and the enqueue.

    python -m bench.bare_app --port 8123 --workers 2 --threads 8
"""

from __future__ import annotations

import argparse

import falcon

from worker.web import gunicorn_app


class Bare:
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.bounded_stream.read()
        resp.media = {"received": True}


class Health:
    def on_get(self, _req, resp):
        resp.media = {"status": "ok"}


def create_bare_app() -> falcon.App:
    app = falcon.App()
    app.add_route("/webhooks/stripe", Bare())
    app.add_route("/healthz", Health())
    return app


class BareApplication(gunicorn_app._App):
    """The service's gunicorn application class with only `load()` replaced."""

    def load(self):
        return create_bare_app()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    gunicorn_app._App = BareApplication  # serve() builds the options; this process only serves bare
    gunicorn_app.serve(args.host, args.port, args.workers, args.threads)


if __name__ == "__main__":
    main()
