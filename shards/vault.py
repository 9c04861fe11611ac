"""Sealing card numbers at rest.

A card number is stored only sealed with AES-256-GCM; the payment method's id
is the associated data, so a sealed number copied onto another row does not
open. The fingerprint (the same card gives the same fingerprint for one
installation, and nothing else can be learned from it) is an HMAC under a key
derived from the same master key. The CVC is never given to this module.
Idempotency fingerprints (shards.idempotency) are HMACs under a third key
derived from it, so a database dump alone cannot test guesses against them.

The master key comes from `PAYMENTS_CARD_KEY` (32 bytes, base64) or from the
file `card.key` in the data directory, created with mode 0600 on first use.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
NONCE_BYTES = 12
KEY_FILE_NAME = "card.key"


class VaultKeyError(Exception):
    """The configured master key is missing or malformed."""


def _derive(master_key: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=purpose).derive(master_key)


class Vault:
    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != KEY_BYTES:
            raise VaultKeyError(f"the card key must be {KEY_BYTES} bytes")
        self._aead = AESGCM(_derive(master_key, b"payments card seal v1"))
        self._fingerprint_key = _derive(master_key, b"payments card fingerprint v1")
        self._idempotency_key = _derive(master_key, b"payments idempotency fingerprint v1")

    @classmethod
    def from_config(cls, data_dir: Path, environ: dict[str, str] | None = None) -> Vault:
        environ = dict(os.environ) if environ is None else environ
        encoded = environ.get("PAYMENTS_CARD_KEY")
        if encoded:
            try:
                return cls(base64.b64decode(encoded, validate=True))
            except ValueError as error:
                raise VaultKeyError("PAYMENTS_CARD_KEY is not valid base64") from error
        path = data_dir / KEY_FILE_NAME
        if not path.exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(base64.b64encode(os.urandom(KEY_BYTES)))
        try:
            return cls(base64.b64decode(path.read_bytes().strip(), validate=True))
        except ValueError as error:
            raise VaultKeyError(f"{path} does not hold a base64 key") from error

    def seal(self, number: str, payment_method_id: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, number.encode(), payment_method_id.encode())

    def unseal(self, sealed: bytes, payment_method_id: str) -> str:
        nonce, ciphertext = sealed[:NONCE_BYTES], sealed[NONCE_BYTES:]
        return self._aead.decrypt(nonce, ciphertext, payment_method_id.encode()).decode()

    @property
    def idempotency_key(self) -> bytes:
        """The HMAC key of idempotency fingerprints: derived from the master
        key for that purpose alone, so it opens no sealed number and makes no
        card fingerprint."""
        return self._idempotency_key

    def fingerprint(self, number: str) -> str:
        """The same string for the same number under one master key; nothing
        about the number can be learned from it without the key."""
        digest = hmac.new(self._fingerprint_key, number.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:12]).decode()
