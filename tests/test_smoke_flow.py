"""One signed message in, one pull out: the inbound path end to end on each database."""

from __future__ import annotations

import json
from typing import Any

from flask.testing import FlaskClient

from tests.support import desk_pull_body, signed_headers


def test_inbound_message_reaches_desk_pull(client: FlaskClient, channel: dict[str, Any]) -> None:
    body = json.dumps({"id": "m1", "conversation_id": "c1", "text": "Hello\nthere"})
    answer = client.post(
        channel["inbound"]["path"], data=body, headers=signed_headers(channel["inbound"]["secret"], body)
    )
    assert answer.status_code == 200, answer.json
    assert answer.json == {"accepted": ["m1"], "duplicates": []}

    pulled = client.post("/desk/pull?orgId=42", json=desk_pull_body(channel, state=""))
    assert pulled.status_code == 200
    assert [t["extId"] for t in pulled.json["data"]["threads"]] == ["m1"]
    assert pulled.json["data"]["tickets"][0]["subject"] == "Hello"
