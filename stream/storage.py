"""Where snapshot files are kept: a folder on local disk, or a prefix in an S3 bucket.

The snapshot store (:mod:`stream.snapshots`) keeps its promises on top of this interface, the same
on both: a snapshot is an *entry* (a folder, or a key prefix) of two files, written payload first
and manifest last, so the manifest is the commit marker: a reader that finds no manifest ignores
the entry, and one that finds it finds the payload whole. Local entries are written in a staging
folder, fsynced and renamed into place; S3 entries are two PUTs (each one atomic and durable when
it returns), and removed manifest first.

S3 goes through obstore (one 5.6 MB wheel, no Python dependencies; ``python -m benchmarks.s3``
measures it against boto3: README "Libraries, and why"). Credentials come from the standard
places: the ``AWS_*`` environment variables, web identity (Kubernetes service accounts), container
and instance metadata; ``~/.aws`` profiles with boto3 installed. ``snapshots.s3.endpoint_url``
(or ``AWS_ENDPOINT_URL``) points it at MinIO, Ceph, R2 or another S3-compatible server.

>>> import tempfile
>>> folder = open_folder(tempfile.mkdtemp())
>>> folder.write_entry("one", {"state.pkl": b"payload", "manifest.json": b"{}"})
>>> folder.entries(), folder.read("one", "state.pkl")
(['one'], b'payload')
>>> folder.remove_entry("one"); folder.entries()
[]
"""

from __future__ import annotations

import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from stream.config import S3Settings, SnapshotConfig
from stream.errors import ConfigError

# What tells one version of a file from the next (local: inode, times, size; S3: ETag, time, size);
# its last item is the file's size.
Stamp = tuple[Hashable, ...]


def is_s3(location: str | Path) -> bool:
    return str(location).startswith("s3://")


def open_folder(location: str | Path, s3: S3Settings | None = None) -> Folder:
    """The folder at ``location``: ``s3://bucket/prefix`` or a local path (created if missing)."""
    if is_s3(location):
        return S3Folder.connect(str(location), s3 or S3Settings())
    return LocalFolder(Path(location))


def check_snapshot_bucket(config: SnapshotConfig) -> None:
    """Refuse at start an ``s3://`` snapshot directory that cannot be listed, naming the key."""
    try:
        open_folder(config.directory, config.s3).children()
    except (OSError, ValueError) as error:
        raise ConfigError(f"snapshots.directory: cannot list {config.directory}: {error}") from None


class Folder(ABC):
    """A folder of entries (snapshots), each holding files, and files of its own (ownership)."""

    location: str  # for messages: a path or an s3:// URL
    name: str  # its last component: a partition's scope

    @abstractmethod
    def child(self, name: str) -> Folder:
        """The folder ``name`` inside this one (a partition's), refused if it is a link."""

    @abstractmethod
    def children(self) -> list[str]:
        """The names of the folders inside this one (no links), in no order."""

    @abstractmethod
    def entries(self) -> list[str]:
        """The names of the entries, in no order (for S3 this also notes every file's stamp)."""

    @abstractmethod
    def stamp(self, entry: str, file: str) -> Stamp | None:
        """The version stamp of a file, ``None`` if it does not exist."""

    def size(self, entry: str, file: str) -> int | None:
        """A file's size in bytes (as of the last listing, for S3), ``None`` if it does not exist."""
        stamp = self.stamp(entry, file)
        return None if stamp is None else int(stamp[-1])

    @abstractmethod
    def exists(self, entry: str, file: str) -> bool:
        """Whether a file exists now (asked of the storage, never of a listing)."""

    @abstractmethod
    def read(self, entry: str, file: str) -> bytes:
        """A file's bytes; :class:`FileNotFoundError` if it does not exist."""

    @abstractmethod
    def write_entry(self, entry: str, files: dict[str, bytes]) -> None:
        """Write an entry's files in order, the last one the commit marker, replacing the entry."""

    @abstractmethod
    def replace(self, entry: str, file: str, data: bytes) -> None:
        """Replace one file of an existing entry atomically."""

    @abstractmethod
    def remove_entry(self, entry: str, marker: str | None = None) -> None:
        """Remove an entry (its ``marker`` file first, so it is never seen half removed)."""

    @abstractmethod
    def is_entry_link(self, entry: str) -> bool:
        """Whether the entry is a symbolic link (never followed)."""

    @abstractmethod
    def read_own(self, file: str) -> bytes | None:
        """A file of the folder itself, ``None`` if it does not exist."""

    @abstractmethod
    def write_own(self, file: str, data: bytes) -> None:
        """Write a file of the folder itself atomically and durably."""


# -- local disk ---------------------------------------------------------------------------------


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalFolder(Folder):
    """A folder on local disk (or a shared POSIX volume); entries are sub-folders."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.location = str(path)
        self.name = Path(os.path.abspath(path)).name

    def child(self, name: str) -> LocalFolder:
        if (self.path / name).is_symlink():
            raise NotADirectoryError(f"{self.path / name} is a link")
        return LocalFolder(self.path / name)

    def children(self) -> list[str]:
        try:
            return [e.name for e in os.scandir(self.path) if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return []

    def entries(self) -> list[str]:
        return [entry.name for entry in os.scandir(self.path) if entry.is_dir(follow_symlinks=False)]

    def stamp(self, entry: str, file: str) -> Stamp | None:
        try:
            status = os.stat(f"{self.path}/{entry}/{file}")  # once per snapshot: Path would cost more
        except (FileNotFoundError, NotADirectoryError):
            return None
        return (status.st_ino, status.st_mtime_ns, status.st_ctime_ns, status.st_size)

    def exists(self, entry: str, file: str) -> bool:
        return os.path.exists(self.path / entry / file)

    def read(self, entry: str, file: str) -> bytes:
        with open(f"{self.path}/{entry}/{file}", "rb") as handle:
            return handle.read()

    def write_entry(self, entry: str, files: dict[str, bytes]) -> None:
        staging = Path(tempfile.mkdtemp(prefix=f".tmp-{entry}-", dir=self.path))
        final = self.path / entry
        try:
            for file, data in files.items():
                _write_durably(staging / file, data)
            _fsync_dir(staging)
            if final.exists():
                shutil.rmtree(final)
            os.rename(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _fsync_dir(self.path)

    def replace(self, entry: str, file: str, data: bytes) -> None:
        path = self.path / entry / file
        temporary = path.with_suffix(".tmp")
        _write_durably(temporary, data)
        os.replace(temporary, path)

    def remove_entry(self, entry: str, marker: str | None = None) -> None:
        path = self.path / entry
        if marker is not None and not path.is_symlink():  # a link is never followed
            (path / marker).unlink(missing_ok=True)
        shutil.rmtree(path, ignore_errors=True)

    def is_entry_link(self, entry: str) -> bool:
        return (self.path / entry).is_symlink()

    def read_own(self, file: str) -> bytes | None:
        try:
            return (self.path / file).read_bytes()
        except FileNotFoundError:
            return None

    def write_own(self, file: str, data: bytes) -> None:
        temporary = self.path / f".{file}.tmp"
        _write_durably(temporary, data)
        os.replace(temporary, self.path / file)
        _fsync_dir(self.path)


# -- S3 -----------------------------------------------------------------------------------------


@contextmanager
def _as_os_errors(what: str) -> Iterator[None]:
    """obstore's errors as the OSError a local disk would raise: not found, or storage failed."""
    from obstore.exceptions import BaseError, NotFoundError

    try:
        yield
    except NotFoundError:
        raise FileNotFoundError(what) from None
    except BaseError as error:
        raise OSError(
            f"{what}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        ) from error


class S3Folder(Folder):
    """A key prefix in an S3 bucket; entries are the next level of ``/``-separated names."""

    def __init__(self, store: object, bucket: str, prefix: str) -> None:
        self._store = store
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.location = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.name = self.prefix.rpartition("/")[2]
        self._stamps: dict[str, Stamp] = {}  # key -> stamp, as the last listing saw them

    @classmethod
    def connect(cls, url: str, settings: S3Settings) -> S3Folder:
        from obstore.store import S3Store

        parts = urlsplit(url)
        if not parts.netloc:
            raise ValueError(f"{url!r} names no bucket: write s3://bucket/prefix")
        # One DELETE a key: an entry has two, and not every S3-compatible server has the bulk API.
        options: dict[str, object] = {"disable_bulk_delete": True}
        endpoint = settings.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint is not None:
            options["endpoint"] = endpoint
        if settings.region is not None:
            options["region"] = settings.region
        provider = _profile_credentials()
        store = S3Store(
            parts.netloc,
            client_options={"allow_http": bool(endpoint and endpoint.startswith("http://"))},
            credential_provider=provider,  # type: ignore[arg-type]
            **options,  # type: ignore[arg-type]
        )
        return cls(store, parts.netloc, parts.path)

    def _key(self, *parts: str) -> str:
        return "/".join(part for part in (self.prefix, *parts) if part)

    def child(self, name: str) -> S3Folder:
        return S3Folder(self._store, self.bucket, self._key(name))

    def _list_with_delimiter(self) -> list[str]:
        import obstore

        with _as_os_errors(self.location):
            listed = obstore.list_with_delimiter(self._store, self._key() + "/" if self.prefix else None)
        return [prefix.rstrip("/").rpartition("/")[2] for prefix in listed["common_prefixes"]]

    def children(self) -> list[str]:
        return self._list_with_delimiter()

    def entries(self) -> list[str]:
        import obstore

        base = self._key() + "/" if self.prefix else ""
        names: set[str] = set()
        stamps: dict[str, Stamp] = {}
        with _as_os_errors(self.location):
            for batch in obstore.list(self._store, prefix=base or None, chunk_size=1000):
                for meta in batch:
                    key = meta["path"]
                    stamps[key] = (meta["e_tag"], meta["last_modified"], meta["size"])
                    entry, slash, _ = key[len(base) :].partition("/")
                    if slash:
                        names.add(entry)
        self._stamps = stamps
        return list(names)

    def stamp(self, entry: str, file: str) -> Stamp | None:
        key = self._key(entry, file)
        if key in self._stamps:
            return self._stamps[key]
        import obstore

        try:
            with _as_os_errors(f"s3://{self.bucket}/{key}"):
                meta = obstore.head(self._store, key)
        except FileNotFoundError:
            return None
        return (meta["e_tag"], meta["last_modified"], meta["size"])

    def exists(self, entry: str, file: str) -> bool:
        self._stamps.pop(self._key(entry, file), None)
        return self.stamp(entry, file) is not None

    def _get(self, key: str) -> bytes:
        import obstore

        try:
            with _as_os_errors(f"s3://{self.bucket}/{key}"):
                return bytes(obstore.get(self._store, key).bytes())
        except FileNotFoundError:
            self._stamps.pop(key, None)
            raise

    def read(self, entry: str, file: str) -> bytes:
        return self._get(self._key(entry, file))

    def _put(self, key: str, data: bytes) -> None:
        import obstore

        with _as_os_errors(f"cannot write s3://{self.bucket}/{key}"):
            obstore.put(self._store, key, data)
        self._stamps.pop(key, None)

    def write_entry(self, entry: str, files: dict[str, bytes]) -> None:
        *payloads, marker = files
        self._delete([self._key(entry, marker)])  # an old marker never vouches for a new payload
        for file in (*payloads, marker):
            self._put(self._key(entry, file), files[file])

    def replace(self, entry: str, file: str, data: bytes) -> None:
        self._put(self._key(entry, file), data)

    def _delete(self, keys: list[str]) -> None:
        import obstore

        with _as_os_errors(f"cannot delete in {self.location}"):
            obstore.delete(self._store, keys)  # a missing key is not an error
        for key in keys:
            self._stamps.pop(key, None)

    def remove_entry(self, entry: str, marker: str | None = None) -> None:
        import obstore

        if marker is not None:
            self._delete([self._key(entry, marker)])
        with _as_os_errors(self.location):
            keys = [
                m["path"] for batch in obstore.list(self._store, prefix=self._key(entry) + "/") for m in batch
            ]
        if keys:
            self._delete(keys)

    def is_entry_link(self, entry: str) -> bool:
        return False

    def read_own(self, file: str) -> bytes | None:
        try:
            return self._get(self._key(file))
        except FileNotFoundError:
            return None

    def write_own(self, file: str, data: bytes) -> None:
        self._put(self._key(file), data)


def _profile_credentials() -> object | None:
    """Credentials from ``~/.aws`` profiles through boto3, when the environment has none of its own
    and boto3 is installed (obstore reads the environment, web identity and instance metadata)."""
    if "AWS_ACCESS_KEY_ID" in os.environ or "AWS_WEB_IDENTITY_TOKEN_FILE" in os.environ:
        return None
    files = [os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"), "~/.aws/config"]
    if "AWS_PROFILE" not in os.environ and not any(Path(f).expanduser().exists() for f in files):
        return None
    try:
        import boto3
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError:
        return None
    return Boto3CredentialProvider(boto3.Session())
