"""channelState: the pull cursor, authenticated with a MAC (SPEC B3)."""

from __future__ import annotations

import hmac
from typing import Any

import orjson

from app.keyring import Keyring

VERSION = 1


class DamagedState(Exception):
    """A channelState that is not one this server issued for this channel."""


def _mac(keyring: Keyring, channel_id: str, seq: int) -> str:
    return keyring.state_mac(f"v{VERSION}|{channel_id}|{seq}")


def encode_state(keyring: Keyring, channel_id: str, seq: int) -> str:
    """The channelState string that carries cursor `seq` for a channel."""
    return orjson.dumps({"v": VERSION, "seq": seq, "mac": _mac(keyring, channel_id, seq)}).decode()


def decode_state(keyring: Keyring, channel_id: str, raw: Any) -> int:
    """The cursor in a channelState; 0 for an empty or absent one.

    Raises DamagedState when it is not JSON, not ours, or another channel's.
    """
    if raw is None or raw == "":
        return 0
    if not isinstance(raw, str):
        raise DamagedState("channelState is not a string")
    try:
        state = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise DamagedState("channelState is not JSON") from None
    if not isinstance(state, dict) or state.get("v") != VERSION:
        raise DamagedState("channelState is not a deskbridge state")
    seq, mac = state.get("seq"), state.get("mac")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0 or not isinstance(mac, str):
        raise DamagedState("channelState has no valid cursor")
    if not hmac.compare_digest(mac.encode(), _mac(keyring, channel_id, seq).encode()):
        raise DamagedState("channelState MAC does not match (another channel's, or altered)")
    return seq
