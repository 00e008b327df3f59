"""Desk's channel endpoints: sync.pull and sync.push (SPEC B2, B3, B4)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g, request

from app.desk import mapping
from app.desk.auth import authenticate_desk, config_params, desk_caller
from app.desk.schemas import load_reply
from app.services import services
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
