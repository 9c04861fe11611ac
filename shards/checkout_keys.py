"""The key browsers encrypt card data to, and opening what they send.

The card field (gateway/checkout_static/card.js) encrypts the card with
WebCrypto's RSA-OAEP (SHA-256, 2048-bit key) to the public key the node
serves, so the card crosses every hop after the browser (proxies, logs of
the request, the body the gateway reads) as ciphertext. Only here is it
opened, once, to be sealed into the vault as a payment method at once.

The key pair is made on first use and kept in PostgreSQL
(store/checkout_keys.py) with its private half sealed by the vault's master
key (`Vault.seal`, the key id as associated data): a database dump alone
does not open it, and every node of the cluster uses the same pair. Opened
private keys stay in memory, a few at most (`OPENED_MAX`).

What is encrypted is a small JSON object (number, expiry, CVC, postal
code): 190 bytes at most fit one RSA-OAEP-256 block of a 2048-bit key, and
the card field sends no more.
"""

from __future__ import annotations

import base64
import secrets

import msgspec
import trio
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from shards.vault import Vault
from store.checkout_keys import EncryptionKeyRow, EncryptionKeys

KEY_BITS = 2048
KEY_ID_PREFIX = "ek_"
# Private keys kept opened in memory: the newest, and the ones pages that
# loaded before a newer key was made may still encrypt to.
OPENED_MAX = 4
ALGORITHM = "RSA-OAEP-256"
_OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


class KeyUnknown(Exception):
    """The ciphertext names a key this cluster does not have."""


class CardUnreadable(Exception):
    """The ciphertext does not open with the key it names (or is not one)."""


class EncryptedCard(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the card field encrypts."""

    number: str
    exp_month: int
    exp_year: int
    cvc: str | None = None
    postal_code: str | None = None


class CheckoutKeys:
    """The cluster's checkout key pair, over its table and the vault."""

    def __init__(self, table: EncryptionKeys, vault: Vault) -> None:
        self._table = table
        self._vault = vault
        self._opened: dict[str, rsa.RSAPrivateKey] = {}
        self._current: EncryptionKeyRow | None = None
        self._making = trio.Lock()

    async def current(self) -> tuple[str, dict[str, str]]:
        """(id, public key as a JWK) of the key browsers encrypt to; made
        (and stored sealed) on first use. Raises StoreUnavailable."""
        if self._current is None:
            async with self._making:
                if self._current is None:
                    self._current = await self._table.newest() or await self._make()
        row = self._current
        public = serialization.load_der_public_key(row.public_key)
        assert isinstance(public, rsa.RSAPublicKey)
        return row.id, _jwk(public)

    async def decrypt_browser_card(self, key_id: str, ciphertext_b64: str) -> EncryptedCard:
        """The card a browser encrypted to `key_id`. Raises KeyUnknown,
        CardUnreadable (never saying more: the message names no content),
        StoreUnavailable."""
        private = await self._private(key_id)
        try:
            plaintext = private.decrypt(base64.b64decode(ciphertext_b64, validate=True), _OAEP)
        except ValueError:
            raise CardUnreadable("the card does not open with its key") from None
        try:
            return msgspec.json.decode(plaintext, type=EncryptedCard)
        except msgspec.DecodeError:
            raise CardUnreadable("the opened card is not the card field's JSON") from None

    async def _private(self, key_id: str) -> rsa.RSAPrivateKey:
        opened = self._opened.get(key_id)
        if opened is not None:
            return opened
        row = await self._table.find(key_id) if key_id.startswith(KEY_ID_PREFIX) and len(key_id) <= 64 else None
        if row is None:
            raise KeyUnknown(key_id[:64])
        private = serialization.load_der_private_key(base64.b64decode(self._vault.unseal(row.private_key_sealed, row.id)), None)
        assert isinstance(private, rsa.RSAPrivateKey)
        if len(self._opened) >= OPENED_MAX:
            self._opened.pop(next(iter(self._opened)))
        self._opened[key_id] = private
        return private

    async def _make(self) -> EncryptionKeyRow:
        """A new key pair, stored with its private half sealed. Two nodes
        making one at once both store theirs; both open what was sent to
        either, and the newest is served from then on."""
        # Making a key takes tens of milliseconds: not on the loop that serves requests.
        private = await trio.to_thread.run_sync(_generate)
        key_id = KEY_ID_PREFIX + secrets.token_urlsafe(16)
        der = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        row = EncryptionKeyRow(
            id=key_id,
            public_key=private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
            private_key_sealed=self._vault.seal(base64.b64encode(der).decode(), key_id),
        )
        await self._table.insert(row)
        self._opened[key_id] = private
        return row


def _generate() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)


def _jwk(public: rsa.RSAPublicKey) -> dict[str, str]:
    """The public key as WebCrypto imports it (RFC 7517/7518)."""
    numbers = public.public_numbers()

    def encoded(value: int) -> str:
        return base64.urlsafe_b64encode(value.to_bytes((value.bit_length() + 7) // 8, "big")).decode().rstrip("=")

    return {"kty": "RSA", "alg": ALGORITHM, "n": encoded(numbers.n), "e": encoded(numbers.e)}
