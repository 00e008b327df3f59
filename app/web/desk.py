"""Desk's endpoints: sync.pull and sync.push (SPEC B2, B3, B4), platform callbacks (B12), open in source (B13)."""

from __future__ import annotations

from html import escape
from typing import Any

from flask import Blueprint, Response, g, request
from werkzeug.urls import iri_to_uri

from app.desk import callbacks, mapping
from app.desk.auth import authenticate_desk, config_params, desk_caller
from app.desk.schemas import load_reply
from app.domain.errors import NotFound
from app.services import services
from app.usecases import installations
from app.usecases import pull as pull_usecase
from app.usecases import push as push_usecase
from app.validation import parse_json_object
from app.web.body import read_body
from app.web.errors import json_response

desk = Blueprint("desk", __name__, url_prefix="/desk")


@desk.post("/pull")
def pull() -> Response:
    svc = services()
    body = parse_json_object(read_body(svc.settings.max_body_bytes))
    caller = desk_caller(body, request.args)
    channel = authenticate_desk(svc.db, caller)
    g.channel_id = channel.id
    answer = pull_usecase.pull(
        svc.db, svc.keyring, channel, caller, body.get("channelState"), svc.settings.pull_batch_limit
    )
    return json_response(answer)


@desk.post("/push")
def push() -> Response:
    svc = services()
    body: dict[str, Any] = parse_json_object(read_body(svc.settings.max_body_bytes))
    caller = desk_caller(config_params(body.get("configParams")), request.args)
    channel = authenticate_desk(svc.db, caller)
    g.channel_id = channel.id
    reply = load_reply(body.get("resource"))
    sent = push_usecase.push_reply(
        svc.db, svc.keyring, svc.connectors, channel, caller, reply, svc.settings.push_deadline_seconds
    )
    return json_response(mapping.push_answer(sent))


@desk.post("/callbacks/<event>")
def callback(event: str) -> Response:
    svc = services()
    secret = svc.settings.desk_extension_secret
    if not secret:
        # Without the extension's secret no callback can be verified: the endpoint does not exist.
        raise NotFound("not_found", "The requested URL was not found on the server.")
    raw = read_body(svc.settings.max_body_bytes)
    callbacks.verify_hash(secret, raw, request.headers.get(callbacks.HASH_HEADER))
    received = callbacks.load_callback(event, parse_json_object(raw))
    return json_response(installations.record_callback(svc.db, svc.keyring, received))


# Open in source is opened by an agent's browser: its answers are small HTML pages (the one
# exception to SPEC B8's JSON), never cached, allowed nothing (no script, style or frame).
_PAGE = (
    '<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title></head>\n'
    "<body><h1>{title}</h1><p>{text}</p></body></html>\n"
)
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _page(status: int, title: str, text: str) -> Response:
    body = _PAGE.format(title=escape(title), text=escape(text))
    return Response(body, status=status, mimetype="text/html", headers=_PAGE_HEADERS)


@desk.get("/redirect")
def open_in_source() -> Response:
    args = request.args
    entity, ext_id = args.get("entity"), args.get("id")
    if entity not in installations.ENTITIES or not ext_id:
        return _page(400, "Cannot open this item",
                     "The link is incomplete: it needs an entity (ticket or thread) and an id.")
    link = installations.source_link(
        services().db, entity, ext_id, parent_id=args.get("parentId") or None, org_id=args.get("orgId") or None
    )
    if link.url is None:
        what = "conversation" if entity == "ticket" else "message"
        if link.found:
            return _page(404, "No link to the source", f"This {what} has no link to where it came from.")
        return _page(404, "Not found", f"There is no such {what} here.")
    # A stored permalink is an http(s) URL; non-ASCII characters are percent-encoded for the header.
    return Response(status=302, headers={**_PAGE_HEADERS, "Location": iri_to_uri(link.url)})
