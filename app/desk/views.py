"""Desk's channel endpoints: sync.pull and sync.push."""

from __future__ import annotations

from flask import Blueprint, Response, request

from app.errors import error_response, json_response, parse_json_object
from app.services import services
from app.sync import inbox, replies

desk = Blueprint("desk", __name__, url_prefix="/desk")


@desk.post("/pull")
def pull() -> Response:
    svc = services()
    body = parse_json_object(request.get_data(cache=False))
    answer = inbox.pull(svc.db, svc.keyring, body, request.args.get("orgId"), svc.settings.pull_batch_limit)
    return json_response(answer)


@desk.post("/push")
def push() -> Response:
    svc = services()
    body = parse_json_object(request.get_data(cache=False))
    answer = replies.push_reply(
        svc.db, svc.keyring, svc.connectors, body, request.args.get("orgId"), svc.settings.push_deadline_seconds
    )
    if answer.status >= 400:
        return error_response(answer.status, answer.body["error"], answer.body["message"])
    return json_response(answer.body, answer.status)
