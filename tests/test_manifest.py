"""manifest.json is the plugin-manifest.json that `extension build` writes for the example
base URL without a secret (SPEC A1, B2, B11), and declares what Desk needs to call us."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

from flask import Flask

from app.desk.extension import CALLBACK_EVENTS, EXAMPLE_BASE_URL, plugin_manifest, render_json, resources

MANIFEST_PATH = Path(__file__).resolve().parent.parent / "manifest.json"
MANIFEST = json.loads(MANIFEST_PATH.read_text())
REGENERATE = (
    "manifest.json differs from what `extension build` writes; regenerate it with\n"
    f"  flask --app wsgi extension build --base-url {EXAMPLE_BASE_URL} --out /tmp/ext "
    "&& cp /tmp/ext/plugin-manifest.json manifest.json\n(with DESK_EXTENSION_SECRET unset)"
)


def test_manifest_json_is_the_plugin_manifest_built_for_the_example_base_url():
    assert MANIFEST_PATH.read_text() == render_json(plugin_manifest(EXAMPLE_BASE_URL)), REGENERATE


def test_manifest_json_declares_no_callbacks_and_no_secret():
    assert "callbackListener" not in MANIFEST
    assert "secret" not in MANIFEST
    assert set(plugin_manifest(EXAMPLE_BASE_URL, secret="s")["callbackListener"]) == set(CALLBACK_EVENTS)


def test_channel_resource_points_at_our_pull_and_push_endpoints(app: Flask):
    channel = resources(EXAMPLE_BASE_URL)["channel"]
    assert channel["resourceName"]
    assert channel["channelLogoPath"].startswith("/app/") and channel["channelLogoPath"].endswith(".png")
    assert channel["contentTypes"] == ["text/plain", "text/html"]
    assert channel["acceptAttachments"] is False
    routes = {rule.rule: rule.methods for rule in app.url_map.iter_rules()}
    for kind in ("pull", "push"):
        url = channel["sync"][kind]
        assert url.startswith(EXAMPLE_BASE_URL + "/")
        path = url[len(EXAMPLE_BASE_URL):]
        assert "POST" in routes[path], f"{kind} URL {url} is not served"


def test_redirect_and_callback_urls_are_served(app: Flask):
    routes = app.url_map.bind(urlsplit(EXAMPLE_BASE_URL).netloc)
    redirect_url = resources(EXAMPLE_BASE_URL)["channel"]["redirectUrl"]
    assert redirect_url == f"{EXAMPLE_BASE_URL}/desk/redirect"
    routes.match(urlsplit(redirect_url).path, method="GET")
    listener = plugin_manifest(EXAMPLE_BASE_URL, secret="s")["callbackListener"]
    for event, url in listener.items():
        assert urlsplit(url).path == f"/desk/callbacks/{event}"
        endpoint, arguments = routes.match(urlsplit(url).path, method="POST")
        assert arguments == {"event": event}, endpoint


def test_config_params_carry_the_channel_credentials_in_the_request_body():
    params = {p["name"]: p for p in MANIFEST["config"]}
    assert set(params) == {"channelId", "channelToken"}
    for param in params.values():
        # Secure params are not sent in pull and push bodies, so these must not be secure.
        assert param["secure"] is False
        assert param["mandatory"] is True and param["userdefined"] is True
        assert param["type"] == "text" and param["displayName"]


def test_base_url_is_whitelisted_and_allowed_to_connect():
    assert MANIFEST["whiteListedDomains"] == [EXAMPLE_BASE_URL]
    assert MANIFEST["cspDomains"]["connect-src"] == [EXAMPLE_BASE_URL]
