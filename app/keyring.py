"""Keys derived from SECRET_KEY: secret encryption, channelState MACs, token hashes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


class SecretUnreadable(Exception):
    """A stored secret cannot be decrypted (SECRET_KEY changed?)."""


def _derive(secret_key: str, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"deskbridge:" + purpose).derive(
        secret_key.encode()
    )


class Keyring:
    """Holds the keys derived from the server's SECRET_KEY, one per purpose."""

    def __init__(self, secret_key: str) -> None:
        self._fernet = Fernet(base64.urlsafe_b64encode(_derive(secret_key, b"secrets")))
        self._state_key = _derive(secret_key, b"channel-state")
        self._digest_key = _derive(secret_key, b"digest")
        self.media_key = _derive(secret_key, b"media-links")  # signs the media proxy's tokens (SPEC B15)

    def __repr__(self) -> str:
        return "Keyring(<redacted>)"

    def encrypt(self, plaintext: str) -> str:
        """Encrypt a secret for storage."""
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        """Decrypt a stored secret."""
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken:
            raise SecretUnreadable("a stored secret cannot be decrypted with this SECRET_KEY") from None

    def state_mac(self, message: str) -> str:
        """MAC of a channelState payload, url-safe base64 without padding."""
        digest = hmac.new(self._state_key, message.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


    def digest(self, value: str) -> str:
        """A keyed digest (hex) of a secret value: tells whether it changed without storing it."""
        return hmac.new(self._digest_key, value.encode(), hashlib.sha256).hexdigest()


def new_token() -> str:
    """A random 32-byte bearer token."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """Hash of a random token; a fast hash suffices for 256 bits of entropy."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str, token_hash: str) -> bool:
    """Compare a presented token with a stored hash in constant time."""
    return hmac.compare_digest(hash_token(token), token_hash)


def new_webhook_secret() -> str:
    """A Standard Webhooks secret: whsec_ and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
