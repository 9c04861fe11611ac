"""Where the audit archive lives: a local directory, or an S3-compatible
bucket through boto3 (the `s3` extra; synchronous, so it runs in worker
threads)."""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import trio

from workers.audit.formats import (
    ARCHIVE_KEYS_MAX,
    MANIFEST_BYTES_MAX,
    MANIFEST_KEY,
    SEGMENT_KEY,
    ArchiveInconsistent,
    ArchiveUnavailable,
)

try:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError
except ImportError:
    # Without the s3 extra only local archives work; S3Archive says so when used.
    boto3 = None
    S3_ERRORS: tuple[type[Exception], ...] = ()
else:
    S3_ERRORS = (BotoCoreError, ClientError)

S3_MISSING = "an S3 archive needs boto3: pip install 'payments-engine[s3]'"



class Archive(Protocol):
    """Where segments and the manifest live. Keys are relative paths."""

    def describe(self) -> str: ...

    async def read(self, key: str, bytes_max: int) -> bytes | None:
        """The object's bytes, None if there is none."""

    async def write(self, key: str, data: bytes) -> None:
        """Store atomically and durably: a reader sees the old bytes or these."""

    async def append(self, key: str, data: bytes) -> None:
        """Add to the end durably. Single writer (the export lease)."""

    async def keys(self) -> list[str]:
        """Every segment key (not the manifest)."""


def _check_key(key: str) -> str:
    if key != MANIFEST_KEY and not SEGMENT_KEY.match(key):
        raise ArchiveInconsistent(f"not an archive path: {key[:200]!r}")
    return key


T = TypeVar("T")


class LocalArchive:
    """A directory on this machine (or a shared mount)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return str(self.root)

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        try:
            return await trio.to_thread.run_sync(functools.partial(function, *args))
        except OSError as error:
            raise ArchiveUnavailable(f"archive {self.root}: {error.strerror or type(error).__name__}") from error

    async def read(self, key: str, bytes_max: int) -> bytes | None:
        path = self.root / _check_key(key)

        def run() -> bytes | None:
            try:
                with open(path, "rb") as file:
                    data = file.read(bytes_max + 1)
            except FileNotFoundError:
                return None
            if len(data) > bytes_max:
                raise ArchiveInconsistent(f"{key} is larger than {bytes_max} bytes")
            return data

        return await self._run(run)

    async def write(self, key: str, data: bytes) -> None:
        path = self.root / _check_key(key)

        def run() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
            try:
                with open(temporary, "wb") as file:
                    file.write(data)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temporary, path)
            finally:
                temporary.unlink(missing_ok=True)
            self._sync_directories(path.parent)

        await self._run(run)

    async def append(self, key: str, data: bytes) -> None:
        path = self.root / _check_key(key)

        def run() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            created = not path.exists()
            descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(descriptor, view):]
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            if created:
                self._sync_directories(path.parent)

        await self._run(run)

    async def keys(self) -> list[str]:
        def run() -> list[str]:
            found: list[str] = []
            if not self.root.is_dir():
                return found
            for path in self.root.glob("*/*/*/p*/*.jsonl.gz"):
                found.append(path.relative_to(self.root).as_posix())
                if len(found) >= ARCHIVE_KEYS_MAX:
                    break
            return sorted(found)

        return await self._run(run)

    def _sync_directories(self, directory: Path) -> None:
        """fsync a directory and its parents up to the root, so a rename or a
        newly made directory survives a crash."""
        root = self.root.resolve()
        current = directory.resolve()
        while True:
            descriptor = os.open(current, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            if current == root or current.parent == current:
                return
            current = current.parent


class S3Archive:
    """An S3-compatible bucket, through boto3 in worker threads."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, *, client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url
        self._client = client

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" + (f" at {self.endpoint_url}" if self.endpoint_url else "")

    def _s3(self) -> Any:
        if self._client is None:
            if boto3 is None:
                raise ArchiveUnavailable(S3_MISSING)
            self._client = boto3.client("s3", endpoint_url=self.endpoint_url)
        return self._client

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        if boto3 is None:
            raise ArchiveUnavailable(S3_MISSING)
        try:
            return await trio.to_thread.run_sync(functools.partial(function, *args))
        except S3_ERRORS as error:
            response = getattr(error, "response", None)
            code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
            raise ArchiveUnavailable(f"archive {self.describe()}: {code or type(error).__name__}") from error

    async def read(self, key: str, bytes_max: int) -> bytes | None:
        name = self.prefix + _check_key(key)

        def run() -> bytes | None:
            client = self._s3()
            try:
                answer = client.get_object(Bucket=self.bucket, Key=name)
            except client.exceptions.NoSuchKey:
                return None
            if answer["ContentLength"] > bytes_max:
                answer["Body"].close()
                raise ArchiveInconsistent(f"{key} is larger than {bytes_max} bytes")
            return answer["Body"].read()

        return await self._run(run)

    async def write(self, key: str, data: bytes) -> None:
        name = self.prefix + _check_key(key)
        digest = hashlib.md5(data, usedforsecurity=False).digest()

        def run() -> None:
            # Content-MD5 makes the store refuse a body damaged on the way.
            self._s3().put_object(Bucket=self.bucket, Key=name, Body=data, ContentMD5=base64.b64encode(digest).decode())

        await self._run(run)

    async def append(self, key: str, data: bytes) -> None:
        # S3 has no append: read, add, put whole. Safe under the export lease.
        existing = await self.read(key, MANIFEST_BYTES_MAX) or b""
        await self.write(key, existing + data)

    async def keys(self) -> list[str]:
        def run() -> list[str]:
            found: list[str] = []
            pages = self._s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
            for page in pages:
                for item in page.get("Contents", ()):
                    key = item["Key"][len(self.prefix):]
                    if key.endswith(".jsonl.gz"):
                        found.append(key)
                if len(found) >= ARCHIVE_KEYS_MAX:
                    break
            return sorted(found)

        return await self._run(run)


def archive_from_environment(data_dir: Path, archive_dir: Path | None = None) -> Archive:
    """`archive_dir` if given; else the bucket PAYMENTS_ARCHIVE_S3_BUCKET
    (PAYMENTS_ARCHIVE_S3_PREFIX, PAYMENTS_ARCHIVE_S3_ENDPOINT); else the
    directory PAYMENTS_ARCHIVE_DIR, by default <data dir>/archive."""
    if archive_dir is not None:
        return LocalArchive(archive_dir)
    bucket = os.environ.get("PAYMENTS_ARCHIVE_S3_BUCKET")
    if bucket:
        return S3Archive(
            bucket, os.environ.get("PAYMENTS_ARCHIVE_S3_PREFIX", ""), os.environ.get("PAYMENTS_ARCHIVE_S3_ENDPOINT") or None
        )
    return LocalArchive(Path(os.environ.get("PAYMENTS_ARCHIVE_DIR") or data_dir / "archive"))

