"""GET /media/<token>: provider files proxied to Desk, credentials kept here (SPEC B15)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from flask import Blueprint, Response

from app.connectors.base import MediaStream
from app.domain.errors import TooLarge
from app.services import services
from app.usecases.reports import open_media

log = logging.getLogger(__name__)

media = Blueprint("media", __name__)


@media.get("/media/<token>")
def serve_media(token: str) -> Response:
    svc = services()
    limit = svc.settings.media_max_bytes
    stream = open_media(svc.db, svc.keyring, svc.connectors, token, limit)
    if stream.length is not None and stream.length > limit:
        stream.close()
        raise TooLarge("media_too_large", f"The file is larger than MEDIA_MAX_BYTES ({limit} bytes).")
    # A customer's file is served from our origin: never as active content (an HTML or SVG document
    # would run there), and downloaded rather than shown unless it is an image, audio or video.
    headers = {"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff",
               "Content-Security-Policy": "sandbox; default-src 'none'"}
    if not stream.content_type.startswith(("image/", "audio/", "video/")) or "svg" in stream.content_type:
        headers["Content-Disposition"] = "attachment"
    if stream.length is not None:
        headers["Content-Length"] = str(stream.length)
    return Response(_capped(stream, limit), status=200, content_type=stream.content_type, headers=headers)


class MediaCutOff(Exception):
    """A file that grew past MEDIA_MAX_BYTES while streaming: the connection is dropped, so that the
    client sees an incomplete answer rather than a complete-looking short file."""


def _capped(stream: MediaStream, limit: int) -> Iterator[bytes]:
    """The file's chunks; past `limit` bytes (a provider that announced no length) the answer is cut off."""
    sent = 0
    try:
        for chunk in stream.chunks:
            sent += len(chunk)
            if sent > limit:
                log.warning("media file cut off at MEDIA_MAX_BYTES (%d bytes)", limit)
                raise MediaCutOff(f"over {limit} bytes")
            yield chunk
    finally:
        stream.close()
