"""manifest.json declares what Desk needs to call this backend (SPEC A1, B2)."""

from __future__ import annotations

import json
from pathlib import Path

MANIFEST = json.loads((Path(__file__).resolve().parent.parent / "manifest.json").read_text())


def test_channel_resource_points_at_our_pull_and_push_endpoints(app):
    (channel,) = MANIFEST["resources"]["channel"]
    base = MANIFEST["baseUrl"]
    assert channel["resourceName"]
    assert channel["channelLogoPath"].endswith((".png", ".jpg"))
    assert set(channel["contentTypes"]) <= {"text/plain", "text/html"} and channel["contentTypes"]
    assert isinstance(channel["acceptAttachments"], bool)
    assert "redirectUrl" not in channel
    routes = {rule.rule: rule.methods for rule in app.url_map.iter_rules()}
    for kind in ("pull", "push"):
        url = channel["sync"][kind]
        assert url.startswith(base + "/")
        path = url[len(base) :]
        assert "POST" in routes[path], f"{kind} URL {url} is not served"


def test_config_params_carry_the_channel_credentials_in_the_request_body():
    params = {p["name"]: p for p in MANIFEST["plugin-manifest"]["config"]}
    assert set(params) == {"channelId", "channelToken"}
    for param in params.values():
        # Secure params are not sent in pull and push bodies, so these must not be secure.
        assert param["secure"] is False
        assert param["mandatory"] is True and param["userdefined"] is True
        assert param["type"] == "text" and param["displayName"]
    assert MANIFEST["baseUrl"] in MANIFEST["plugin-manifest"]["whiteListedDomains"]
