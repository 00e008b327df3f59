"""Media links (SPEC B15): Desk gets `PUBLIC_BASE_URL/media/<token>` instead of a provider's file
link, which would carry a credential (Telegram's file URLs hold the bot token; Twilio's media need
the account's Basic auth). The token names the channel and the provider's file reference, signed
with a key derived from SECRET_KEY (itsdangerous); it holds no secret and cannot be forged."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from itsdangerous import BadSignature, URLSafeSerializer

from app.domain.errors import Invalid, NotFound

SALT = "deskbridge.media.v1"


class MediaLinks:
    """Makes and reads media proxy links."""

    def __init__(self, key: bytes, public_base_url: str | None) -> None:
        self._serializer = URLSafeSerializer(key, salt=SALT)
        self._public_base_url = public_base_url

    def __repr__(self) -> str:
        return f"MediaLinks(public_base_url={self._public_base_url!r})"

    def link(self, channel_id: str, ref: Mapping[str, Any]) -> str:
        """The public URL that serves one provider file of a channel through the proxy."""
        if not self._public_base_url:
            raise Invalid("public_base_url_required", "PUBLIC_BASE_URL must be set for media links.")
        token = self._serializer.dumps({"c": channel_id, "r": dict(ref)})
        return f"{self._public_base_url}/media/{token}"

    def read(self, token: str) -> tuple[str, dict[str, Any]]:
        """The channel id and file reference a token names; NotFound for a bad or altered one."""
        try:
            payload = self._serializer.loads(token)
        except (BadSignature, ValueError, TypeError):
            raise NotFound("unknown_media", "There is no such media file.") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("c"), str) or not isinstance(
                payload.get("r"), dict):
            raise NotFound("unknown_media", "There is no such media file.")
        return payload["c"], payload["r"]
