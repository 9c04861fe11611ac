"""Sealing card numbers at rest, with envelope encryption and key rotation.

Three levels of keys. The master key (from `PAYMENTS_CARD_KEY`, 32 bytes
base64, or the file `card.key` in the data directory, made with mode 0600 on
first use) never seals a card: it wraps the key of each card key version.
A version's key is 32 random bytes, stored only wrapped (AES-256-GCM under
a key derived from the master key, with the version number as associated
data) in `vault_key_versions` (store/vault_keys.py). Each card gets a key
of its own, wrapped by the active version's key, which seals its number:

    format (1) | version (4) | nonce (12) | card key wrapped (32 + 16)
                             | nonce (12) | number padded to 32 (32 + 16)

125 bytes whatever the number's length. The card key is wrapped with the
header and the payment method's id as associated data, the number with the
id: a sealed value copied onto another row, or relabelled with another
version, does not open. Rotation makes a new version and re-wraps each
card's key under it (`rewrapped`): the number itself is not opened for that.

Cards sealed before versions existed (nonce, ciphertext, tag under a key
derived from the master key) are version 0; they open while version 0 is
not retired, and the re-wrap job seals them again in the format above, the
one time a number is opened outside a network call.

Card fingerprints and idempotency fingerprints are HMACs under keys derived
from the master key, not from a version: they stay the same across
rotations, as card fingerprints and idempotent retries need. The CVC is
never given to this module. `seal` and `unseal` (the key derived for the
old card format) still seal the other secrets: signing secrets, webhook
secrets, the local test merchant's key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import os
from pathlib import Path
from typing import Any

import msgspec
import structlog
import trio
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from store.errors import StoreUnavailable
from store.vault_keys import (
    ACTIVE,
    HEADER_BYTES,
    LEGACY_VERSION,
    SEALED_BYTES,
    SEALED_FORMAT,
    VERSION_MAX,
    Rotated,
    VaultKeys,
    key_version_of,
)

log = structlog.get_logger("shards.vault")

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_FILE_NAME = "card.key"
# A number (12 to 19 digits) is sealed as its length, its digits and zeros
# up to this, so the sealed value says nothing of its length.
PADDED_BYTES = 32
_KEY_END = HEADER_BYTES + NONCE_BYTES + KEY_BYTES + TAG_BYTES
# How long a node seals with the active version it read last before reading
# again: a rotation reaches every node within this.
REFRESH_S_DEFAULT = 5.0
# Versions not retired at once (the active one, those still re-wrapping,
# version 0 while old-format cards are left): a rotation past it is refused.
LIVE_VERSIONS_MAX = 4


class VaultKeyError(Exception):
    """The configured master key is missing, malformed, or not the one the
    database's card keys were wrapped with. The message names files,
    variables and versions, never key material."""


class CardKeyRetired(VaultKeyError):
    """A sealed card names a version this node cannot open (retired, or
    unknown): the card must be read again from the database."""


def _derive(master_key: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=purpose).derive(master_key)


def _version_bytes(version: int) -> bytes:
    assert 0 < version <= VERSION_MAX, version
    return version.to_bytes(HEADER_BYTES - 1, "big")


class Vault:
    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != KEY_BYTES:
            raise VaultKeyError(f"the card key must be {KEY_BYTES} bytes")
        self._aead = AESGCM(_derive(master_key, b"payments card seal v1"))
        self._wrap = AESGCM(_derive(master_key, b"payments card key wrap v1"))
        self._fingerprint_key = _derive(master_key, b"payments card fingerprint v1")
        self._idempotency_key = _derive(master_key, b"payments idempotency fingerprint v1")

    @classmethod
    def from_config(cls, data_dir: Path, environ: dict[str, str] | None = None, *, create: bool = True) -> Vault:
        """The master key of `PAYMENTS_CARD_KEY`, else of `card.key` in
        `data_dir` (made there when missing, if `create`). Raises VaultKeyError."""
        environ = dict(os.environ) if environ is None else environ
        encoded = environ.get("PAYMENTS_CARD_KEY")
        if encoded:
            try:
                return cls(base64.b64decode(encoded, validate=True))
            except ValueError as error:
                raise VaultKeyError("PAYMENTS_CARD_KEY is not valid base64") from error
        path = data_dir / KEY_FILE_NAME
        if not path.exists():
            if not create:
                raise VaultKeyError(f"no master key: PAYMENTS_CARD_KEY is not set and there is no {path}")
            data_dir.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(base64.b64encode(os.urandom(KEY_BYTES)))
        try:
            return cls(base64.b64decode(path.read_bytes().strip(), validate=True))
        except ValueError as error:
            raise VaultKeyError(f"{path} does not hold a base64 key") from error

    def seal(self, number: str, payment_method_id: str) -> bytes:
        """Seal a secret (and, before key versions, a card number) under the
        key derived from the master key, with `payment_method_id` (any id)
        as associated data."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, number.encode(), payment_method_id.encode())

    def unseal(self, sealed: bytes, payment_method_id: str) -> str:
        nonce, ciphertext = sealed[:NONCE_BYTES], sealed[NONCE_BYTES:]
        return self._aead.decrypt(nonce, ciphertext, payment_method_id.encode()).decode()

    def wrap_version_key(self, version: int, key: bytes) -> bytes:
        """A card key version's key, wrapped by the master key for that version."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._wrap.encrypt(nonce, key, b"payments card key version " + _version_bytes(version))

    def unwrap_version_key(self, version: int, wrapped: bytes) -> bytes:
        """The key `wrap_version_key` wrapped. Raises VaultKeyError when this
        master key did not wrap it (for this version)."""
        try:
            return self._wrap.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], b"payments card key version " + _version_bytes(version))
        except InvalidTag:
            raise VaultKeyError(
                f"the master key does not open card key version {version}: it is not the key this database's cards"
                " were sealed with (check PAYMENTS_CARD_KEY, or card.key in the data dir)"
            ) from None

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


# ------------------------------------------------------------ sealed cards


def _header(version: int) -> bytes:
    return bytes([SEALED_FORMAT]) + _version_bytes(version)


def _wrap_card_key(version: int, version_key: AESGCM, card_key: bytes, payment_method_id: str) -> bytes:
    header = _header(version)
    nonce = os.urandom(NONCE_BYTES)
    return header + nonce + version_key.encrypt(nonce, card_key, header + payment_method_id.encode())


def _card_key(sealed: bytes, version_key: AESGCM, payment_method_id: str) -> bytes:
    header, nonce = sealed[:HEADER_BYTES], sealed[HEADER_BYTES : HEADER_BYTES + NONCE_BYTES]
    return version_key.decrypt(nonce, sealed[HEADER_BYTES + NONCE_BYTES : _KEY_END], header + payment_method_id.encode())


def seal_card(version: int, version_key: AESGCM, number: str, payment_method_id: str) -> bytes:
    """`number` sealed under a key of its own, wrapped by `version_key`."""
    digits = number.encode()
    assert len(digits) < PADDED_BYTES
    padded = bytes([len(digits)]) + digits + bytes(PADDED_BYTES - 1 - len(digits))
    card_key = os.urandom(KEY_BYTES)
    nonce = os.urandom(NONCE_BYTES)
    sealed = _wrap_card_key(version, version_key, card_key, payment_method_id) + nonce + AESGCM(card_key).encrypt(
        nonce, padded, payment_method_id.encode()
    )
    assert len(sealed) == SEALED_BYTES
    return sealed


def open_card(sealed: bytes, version_key: AESGCM, payment_method_id: str) -> str:
    """The number `seal_card` sealed; raises InvalidTag for another key or id."""
    card_key = _card_key(sealed, version_key, payment_method_id)
    nonce, ciphertext = sealed[_KEY_END : _KEY_END + NONCE_BYTES], sealed[_KEY_END + NONCE_BYTES :]
    padded = AESGCM(card_key).decrypt(nonce, ciphertext, payment_method_id.encode())
    return padded[1 : 1 + padded[0]].decode()


def rewrap_card(sealed: bytes, old_key: AESGCM, version: int, version_key: AESGCM, payment_method_id: str) -> bytes:
    """The same sealed number with its card key wrapped under `version`
    instead: the number is not opened, and its ciphertext is kept as is."""
    card_key = _card_key(sealed, old_key, payment_method_id)
    return _wrap_card_key(version, version_key, card_key, payment_method_id) + sealed[_KEY_END:]


# ------------------------------------------------------------ the versions


class _Ring(msgspec.Struct, frozen=True):
    """The versions a node knows, as read at `loaded_at` (trio's clock)."""

    active: int | None
    keys: dict[int, Any]  # version -> AESGCM of its key
    legacy: bool  # version 0 not retired: old-format cards still open
    loaded_at: float

    def opens(self, version: int) -> bool:
        return version in self.keys or (version == LEGACY_VERSION and self.legacy)


class CardKeys:
    """The card key versions of one node, read from the database: what new
    cards are sealed with, and what opens the stored ones.

    The active version is read again when what was read is older than
    `refresh_s` (on the next seal or open), and at once when a card names a
    version not known yet, so a rotation reaches every node within
    `refresh_s`. A version's key stays in memory only while the version is
    not retired, as last read."""

    def __init__(self, versions: VaultKeys, vault: Vault, *, refresh_s: float = REFRESH_S_DEFAULT, live_versions_max: int = LIVE_VERSIONS_MAX) -> None:
        self.versions = versions
        self.vault = vault
        self.refresh_s = refresh_s
        self.live_versions_max = live_versions_max
        self._ring = _Ring(None, {}, False, -math.inf)
        # (version, wrapped key) -> its AESGCM: unwrapped once per version.
        self._unwrapped: dict[tuple[int, bytes], Any] = {}
        self._legacy_checked = False
        self._lock = trio.Lock()

    @property
    def active_version(self) -> int | None:
        """The active version as last read (None before the first read)."""
        return self._ring.active

    def retiring_versions(self) -> list[int]:
        """The versions not active and not retired, as last read, oldest first."""
        ring = self._ring
        live = ([LEGACY_VERSION] if ring.legacy else []) + sorted(ring.keys)
        return [version for version in live if version != ring.active]

    async def check(self) -> None:
        """Read the versions and prove the master key opens them: every
        version's wrapped key, and one card of the old format while any is
        left. Raises VaultKeyError (naming the version, never a key) or
        StoreUnavailable."""
        async with self._lock:
            await self._load()

    async def open(self) -> None:
        """`check`, then make a first active version if there is none."""
        await self.check()
        if self._ring.active is None:
            await self._ensure_active()

    async def refresh(self) -> None:
        """Read the versions again now."""
        async with self._lock:
            await self._load()

    async def seal(self, number: str, payment_method_id: str) -> bytes:
        """`number` sealed under the active version (made first if there is
        none). Raises StoreUnavailable when the versions must be read again
        and cannot be."""
        ring = await self._fresh(None)
        if ring.active is None:
            await self._ensure_active()
            ring = self._ring
        assert ring.active is not None
        return seal_card(ring.active, ring.keys[ring.active], number, payment_method_id)

    async def unseal(self, sealed: bytes, payment_method_id: str) -> str:
        """The number in `sealed`. Raises CardKeyRetired when its version is
        retired (or unknown); StoreUnavailable when the versions had to be
        read and could not be, unless the keys in memory open it."""
        version = key_version_of(sealed)
        ring = self._ring
        try:
            ring = await self._fresh(version)
        except StoreUnavailable as error:
            if not ring.opens(version):
                raise
            log.warning("card_key_versions_not_read", error=str(error))
        if not ring.opens(version):
            raise CardKeyRetired(f"card {payment_method_id} names card key version {version}, which is retired or unknown here")
        if version == LEGACY_VERSION:
            return self.vault.unseal(sealed, payment_method_id)
        return open_card(sealed, ring.keys[version], payment_method_id)

    async def current_version(self) -> int | None:
        """The active version, read again if what was read is old; as last
        read when the database cannot be reached."""
        try:
            return (await self._fresh(None)).active
        except StoreUnavailable:
            return self._ring.active

    def rewrapped(self, sealed: bytes, payment_method_id: str) -> bytes:
        """`sealed` under the active version as last read: its card key
        re-wrapped, or, for the old format, the number sealed anew (the
        only case where it is opened)."""
        ring = self._ring
        assert ring.active is not None
        version = key_version_of(sealed)
        if version == LEGACY_VERSION:
            number = self.vault.unseal(sealed, payment_method_id)
            return seal_card(ring.active, ring.keys[ring.active], number, payment_method_id)
        return rewrap_card(sealed, ring.keys[version], ring.active, ring.keys[ring.active], payment_method_id)

    async def rotate(self) -> Rotated:
        """A new active version; the one before becomes retiring. Refused
        (`created` False) when `live_versions_max` versions are live."""
        rotated = await self.versions.rotate(self._wrap_new, self.live_versions_max)
        if rotated.created:
            log.info("card_key_version_created", version=rotated.version, live=rotated.live)
        await self.refresh()
        return rotated

    async def _ensure_active(self) -> None:
        rotated = await self.versions.ensure_active(self._wrap_new, VERSION_MAX)
        if rotated.created:
            log.info("card_key_version_created", version=rotated.version, live=rotated.live)
        await self.refresh()
        assert self._ring.active is not None, rotated

    def _wrap_new(self, version: int) -> bytes:
        # The new key is in clear only here and, once read back, in memory.
        return self.vault.wrap_version_key(version, os.urandom(KEY_BYTES))

    async def _fresh(self, version: int | None) -> _Ring:
        """What was read, read again first if it is older than `refresh_s`
        or does not know `version`. While another task reads it again, what
        was read serves those it can serve: a node's payments never all wait
        on that one query."""
        ring = self._ring
        if self._current(version):
            return ring
        if self._lock.locked() and (ring.opens(version) if version is not None else ring.active is not None):
            return ring
        async with self._lock:
            if self._current(version):
                return self._ring
            return await self._load()

    def _current(self, version: int | None) -> bool:
        ring = self._ring
        return trio.current_time() - ring.loaded_at < self.refresh_s and (version is None or ring.opens(version))

    async def _load(self) -> _Ring:
        """(Under the lock) Read the versions not retired, unwrap the keys."""
        rows = await self.versions.live()
        unwrapped = {}
        for row in rows:
            if row.version == LEGACY_VERSION:
                continue
            assert row.wrapped_key is not None, row.version
            cached = self._unwrapped.get((row.version, row.wrapped_key))
            if cached is None:
                cached = AESGCM(self.vault.unwrap_version_key(row.version, row.wrapped_key))
            unwrapped[(row.version, row.wrapped_key)] = cached
        legacy = any(row.version == LEGACY_VERSION for row in rows)
        if legacy and not self._legacy_checked:
            await self._check_legacy()
        active = next((row.version for row in rows if row.state == ACTIVE), None)
        if active != self._ring.active:
            log.info("card_key_versions_read", active=active, live=[row.version for row in rows])
        self._unwrapped = unwrapped
        self._ring = _Ring(active, {version: key for (version, _), key in unwrapped.items()}, legacy, trio.current_time())
        return self._ring

    async def _check_legacy(self) -> None:
        sample = await self.versions.legacy_sample()
        if sample is not None:
            payment_method_id, sealed = sample
            try:
                self.vault.unseal(sealed, payment_method_id)
            except InvalidTag:
                raise VaultKeyError(
                    f"the master key does not open card {payment_method_id}, sealed before key versions: it is not the key"
                    " this database's cards were sealed with (check PAYMENTS_CARD_KEY, or card.key in the data dir)"
                ) from None
        self._legacy_checked = True
