"""The bare Flask app deskbridge is compared with: the same answers, no work behind them.

Served by gunicorn with the same settings as deskbridge (`bench.baseline:app`).
Each endpoint reads the request body, as deskbridge does, and answers the JSON that
deskbridge answers, serialized with the same library (orjson):
- POST /desk/pull: the empty pull answer; with ?full=1, the full-pull answer that the
  benchmark saved to the file named by BENCH_FULL_PULL_FILE (loaded once).
- POST /inbound/<channel_id>: the ingest acknowledgement of the message ids in the body.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
from flask import Flask, Response, request

EMPTY_PULL = {"data": {"tickets": [], "threads": []}}


def create_baseline() -> Flask:
    """The bare app."""
    app = Flask(__name__, static_folder=None)
    full_pull: dict[str, Any] = {}

    @app.get("/healthz")
    def healthz() -> Response:
        return Response(orjson.dumps({"status": "ok"}), mimetype="application/json")

    @app.post("/desk/pull")
    def pull() -> Response:
        request.get_data(cache=False)
        if request.args.get("full"):
            if not full_pull:
                full_pull.update(orjson.loads(Path(os.environ["BENCH_FULL_PULL_FILE"]).read_bytes()))
            return Response(orjson.dumps(full_pull), mimetype="application/json")
        return Response(orjson.dumps(EMPTY_PULL), mimetype="application/json")

    @app.post("/inbound/<channel_id>")
    def inbound(channel_id: str) -> Response:
        body = orjson.loads(request.get_data(cache=False))
        items = body.get("messages", [body])
        return Response(orjson.dumps({"accepted": [m["id"] for m in items], "duplicates": []}),
                        mimetype="application/json")

    return app


app = create_baseline()
