"""Object stores: where sealed segments, dictionaries and manifests go (``docs/tiering.md``).

Only what every S3-compatible store offers is used, plus the conditional write: ``put_new`` is a
create-only PUT (``If-None-Match: *``), which either creates the object whole or, if the key is
taken, leaves it as it is and says so; ``get`` and ``get_range`` (range reads); ``list`` (keys
under a prefix); ``delete``. Keys are ``/``-separated, relative to the store's prefix.

Two stores: ``S3Objects`` (an S3 bucket through obstore, configured by the standard ``AWS_*``
environment variables: ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_REGION``, ``AWS_ALLOW_HTTP``) and ``DirectoryObjects`` (a directory, ``file://``; its
create-only write is a hard link, atomic like S3's). ``open_objects(url)`` picks by scheme.

obstore (the Rust ``object_store`` crate of Apache Arrow behind a small synchronous Python API)
rather than boto3: it maps the create-only PUT, range reads and listing straight onto S3's API, is
typed, reads the standard AWS environment, and is one wheel where boto3 brings botocore's model
files. Imported only when an S3 URL is opened (``hybridlog[s3]``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from hybridlog.errors import InvalidArgument, ObjectMissing, ObjectStoreError, StorageError


class ObjectStore(Protocol):
    """What tiering needs of a bucket."""

    url: str

    def put_new(self, key: str, data: bytes) -> bool:
        """Create ``key`` with ``data`` unless the key is taken; True if this call created it."""

    def get(self, key: str) -> bytes:
        """The whole object (ObjectMissing if there is none)."""

    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``start`` to ``end - 1`` of the object (fewer at its end)."""

    def list(self, prefix: str) -> list[str]:
        """Every key under ``prefix``, sorted."""

    def delete(self, key: str) -> None:
        """Remove the object (no error if it is already gone)."""


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or any(part in ("", ".", "..") for part in parts):
        raise InvalidArgument(f"not an object key: {key!r}")
    return key


class DirectoryObjects:
    """An object store in a local directory (``file:///path``): for a bucket mounted as a file
    system, and for tests that need no server. Objects are files under ``root``; a create-only
    write writes a temporary file, fsyncs it and hard-links it into place, so a key holds a whole
    object or none, and of two writers exactly one creates it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = root.resolve().as_uri()

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def put_new(self, key: str, data: bytes) -> bool:
        """Create ``key`` unless it is taken (``ObjectStore.put_new``)."""
        path = self._path(key)
        with _errors(f"cannot write {key} in {self.url}"):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
            try:
                os.write(fd, data)
                os.fsync(fd)
                os.close(fd)
                try:
                    os.link(temp, path)
                except FileExistsError:
                    return False
            finally:
                Path(temp).unlink()
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return True

    def get(self, key: str) -> bytes:
        """The whole object (``ObjectStore.get``)."""
        with _errors(f"cannot read {key} in {self.url}"):
            return self._path(key).read_bytes()

    def get_range(self, key: str, start: int, end: int) -> bytes:
        """A byte range of the object (``ObjectStore.get_range``)."""
        with _errors(f"cannot read {key} in {self.url}"), self._path(key).open("rb") as f:
            f.seek(start)
            return f.read(max(0, end - start))

    def list(self, prefix: str) -> list[str]:
        """Keys under ``prefix``, sorted (``ObjectStore.list``)."""
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return []
        return sorted(
            str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file() and not p.name.startswith(".upload-")
        )

    def delete(self, key: str) -> None:
        """Remove the object (``ObjectStore.delete``)."""
        with _errors(f"cannot delete {key} in {self.url}"):
            self._path(key).unlink(missing_ok=True)


class S3Objects:
    """An S3 bucket (or a prefix in one) through obstore's synchronous API."""

    def __init__(self, url: str, **config: Any) -> None:
        try:
            import obstore
            from obstore.store import from_url
        except ImportError as e:
            raise ObjectStoreError("S3 needs the obstore package", hint="pip install 'hybridlog[s3]'") from e
        self.url = url
        self._obstore = obstore
        with _errors(f"cannot open {url}"):
            self._store = from_url(url, **config)

    def put_new(self, key: str, data: bytes) -> bool:
        """Create ``key`` unless it is taken (``ObjectStore.put_new``)."""
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        with _errors(f"cannot write {key} in {self.url}"):
            try:
                self._obstore.put(self._store, _check_key(key), data, mode="create")
            except (AlreadyExistsError, PreconditionError):
                return False
        return True

    def get(self, key: str) -> bytes:
        """The whole object (``ObjectStore.get``)."""
        with _errors(f"cannot read {key} in {self.url}"):
            return bytes(self._obstore.get(self._store, _check_key(key)).bytes())

    def get_range(self, key: str, start: int, end: int) -> bytes:
        """A byte range of the object (``ObjectStore.get_range``)."""
        with _errors(f"cannot read {key} in {self.url}"):
            return bytes(self._obstore.get_range(self._store, _check_key(key), start=start, end=end))

    def list(self, prefix: str) -> list[str]:
        """Keys under ``prefix``, sorted (``ObjectStore.list``)."""
        with _errors(f"cannot list {prefix} in {self.url}"):
            pages = self._obstore.list(self._store, prefix=prefix or None).collect()
        return sorted(str(meta["path"]) for meta in pages)

    def delete(self, key: str) -> None:
        """Remove the object (``ObjectStore.delete``)."""
        with _errors(f"cannot delete {key} in {self.url}"), suppress(FileNotFoundError):
            self._obstore.delete(self._store, _check_key(key))


@contextmanager
def _errors(what: str) -> Iterator[None]:
    """Driver errors as typed ones: a missing object as ObjectMissing, the rest as ObjectStoreError."""
    try:
        yield
    except StorageError:
        raise
    except Exception as e:  # obstore's errors derive from Exception (a missing object: FileNotFoundError)
        if isinstance(e, FileNotFoundError) or type(e).__name__ == "NotFoundError":
            raise ObjectMissing(f"{what}: no such object") from e
        if isinstance(e, (OSError, RuntimeError, ValueError)) or type(e).__module__.startswith("obstore"):
            raise ObjectStoreError(f"{what}: {e}") from e
        raise


def open_objects(url: str) -> ObjectStore:
    """The object store ``url`` names: ``s3://bucket[/prefix]`` or ``file:///path``."""
    scheme = urlparse(url).scheme
    if scheme == "s3":
        return S3Objects(url)
    if scheme == "file":
        return DirectoryObjects(Path(urlparse(url).path))
    raise InvalidArgument(f"not an object store URL (s3://bucket/prefix or file:///path): {url!r}")
