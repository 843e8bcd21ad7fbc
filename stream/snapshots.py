"""The snapshot store: a directory of pickled learner states, each with a JSON manifest.

Layout: ``<directory>/<id>/state.pkl`` and ``<directory>/<id>/manifest.json``. A snapshot is
written into a temporary folder, fsynced and renamed into place, so a reader sees it whole or
not at all. Loading checks, before anything is unpickled: the payload's SHA-256 against the
manifest, the HMAC signature when a key is in force, and the River and Python versions.

Unpickling runs code, so a store built from the configuration (:meth:`SnapshotStore.from_config`,
the one way the service, its API and the CLI build one) signs by default: with the key in
``snapshots.hmac_key``, else the one in ``snapshots.key_file`` (default ``<directory>.key``,
beside the store, never in it), generated on first use with mode 0600. The signature covers the
payload's hash, the id, the offsets and the store's folder name (its partition scope), so a
snapshot copied into another partition's folder is refused too. Only names of the store's own
form become paths: snapshot ids (:data:`SNAPSHOT_ID`) and partition scopes (:data:`SCOPE`), never
through a symbolic link.

Listing stays cheap as snapshots accumulate: a folder's name (``{sequence:08d}-{reason}``) gives
its sequence and reason, so a listing is chosen and sorted by name before any manifest is read,
and each manifest is parsed once and read again only when its file changes (another process,
say ``stream snapshots pin``, rewrote or deleted it).

>>> import tempfile
>>> store = SnapshotStore(tempfile.mkdtemp())
>>> manifest = store.save({"weights": [1, 2]}, reason="manual", events_seen=10)
>>> manifest.id, manifest.reason
('00000001-manual', 'manual')
>>> store.load(manifest.id)
{'weights': [1, 2]}
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import pickle
import platform
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

import river
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stream.config import SnapshotConfig
from stream.errors import ConfigError, SnapshotError, SnapshotNotFound, SnapshotWriteError

logger = logging.getLogger(__name__)

Reason = Literal["periodic", "warning", "drift", "manual", "rollback", "shutdown", "checkpoint"]
# Reasons whose snapshots rotate (the last ``keep_last`` of each are kept); the others stay
# until deleted: drift snapshots are the memory of past concepts that rollbacks return to.
ROTATING_REASONS: frozenset[str] = frozenset({"periodic", "warning", "rollback", "shutdown", "checkpoint"})

PAYLOAD = "state.pkl"
MANIFEST = "manifest.json"
# What :meth:`SnapshotStore.save` names a snapshot: only such a name is ever turned into a path.
SNAPSHOT_ID = re.compile(rf"[0-9]{{8,18}}-(?:{'|'.join(get_args(Reason))})")
# What a partition's folder is named: ``<topic>-<partition>`` (a Kafka topic name is 1 to 249 of
# these characters); only such a name is ever turned into a store's path.
SCOPE = re.compile(r"[A-Za-z0-9._-]{1,249}-[0-9]{1,10}")

# What tells one version of a manifest file from the next: inode (a replace makes a new one),
# modification and change times, size.
FileStamp = tuple[int, int, int, int]


def python_version() -> str:
    return ".".join(platform.python_version_tuple()[:2])


class SnapshotManifest(BaseModel):
    """Everything known about one snapshot, stored as JSON beside its payload."""

    model_config = ConfigDict(extra="forbid")

    id: str
    sequence: int = Field(ge=1)
    parent: str | None = None
    created_at: datetime
    reason: Reason
    river_version: str
    python_version: str
    events_seen: int = 0
    labelled_seen: int = 0
    model_version: int = 1
    offsets: dict[str, int] = Field(default_factory=dict)
    examples_learned: int = Field(default=0, description="delayed labels: examples learned, in order")
    metrics: dict[str, float] = Field(default_factory=dict)
    sha256: str
    size_bytes: int
    hmac_sha256: str | None = None
    pinned: bool = False
    note: str | None = None


def validate_snapshot_id(snapshot_id: str) -> str:
    """``snapshot_id`` if it is of the store's own form; anything else is not found.

    >>> validate_snapshot_id("../victim")
    Traceback (most recent call last):
    ...
    stream.errors.SnapshotNotFound: no snapshot '../victim'
    """
    if not SNAPSHOT_ID.fullmatch(snapshot_id):
        raise SnapshotNotFound(f"no snapshot {snapshot_id!r}")
    return snapshot_id


def validate_scope(scope: str) -> str:
    """``scope`` if it names a partition's folder (``events-0``); anything else is not found."""
    if not SCOPE.fullmatch(scope):
        raise SnapshotNotFound(f"no partition {scope!r}: a partition is named <topic>-<number>")
    return scope


def list_scopes(config: SnapshotConfig) -> list[str]:
    """The partition folders of the configured store, sorted; other names and links are left out."""
    try:
        entries = list(os.scandir(config.directory))
    except FileNotFoundError:
        return []
    return sorted(
        entry.name for entry in entries if SCOPE.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False)
    )


# Stores that run unsigned, warned about once per process.
_warned_unsigned: set[Path] = set()


def signing_key(config: SnapshotConfig) -> str | None:
    """The key the configured store signs with: ``hmac_key``, else the key file's (generated on
    first use); ``None`` only when ``signing`` is off, which is logged once as a warning."""
    if not config.signing:
        directory = Path(os.path.abspath(config.directory))
        if directory not in _warned_unsigned:
            _warned_unsigned.add(directory)
            logger.warning(
                "snapshots.signing is false: anyone who can write %s can run code in this service "
                "through a snapshot", directory,
            )  # fmt: skip
        return None
    if config.hmac_key is not None:
        return config.hmac_key.get_secret_value()
    path = config.resolved_key_file()
    try:
        return _read_key(path)
    except FileNotFoundError:
        return _create_key(path)


def check_signing_key(config: SnapshotConfig) -> None:
    """Refuse at start a key file that signing would refuse at the first restore (it creates
    nothing: a missing key file is generated on first use)."""
    if config.signing and config.hmac_key is None and config.resolved_key_file().exists():
        _read_key(config.resolved_key_file())


def _read_key(path: Path) -> str:
    """The key in ``path``, refused if others may read or change the file, or if it is empty."""
    with open(path, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if mode & 0o077:
            raise ConfigError(
                f"snapshots.key_file {path} may be read or changed by others (mode {mode & 0o777:o}): "
                f"chmod 600 {path}"
            )
        key = handle.read().decode("utf-8", "replace").strip()
    if not key:
        raise ConfigError(f"snapshots.key_file {path} is empty: delete it to have a key generated")
    return key


def _create_key(path: Path) -> str:
    """A new random key in ``path`` (mode 0600); if another process created one first, that one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(secrets.token_hex(32).encode() + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.link(temporary, path)  # atomic, and fails if the file exists: one key wins
        logger.info(
            "generated the snapshot signing key %s; every instance sharing the snapshot directory "
            "must use this key (the same file, or its content as snapshots.hmac_key)", path,
        )  # fmt: skip
    except FileExistsError:
        pass
    finally:
        os.unlink(temporary)
    return _read_key(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _sequence_of(snapshot_id: str) -> int:
    return int(snapshot_id.partition("-")[0])


def _oldest_first(snapshot_ids: Iterable[str]) -> list[str]:
    # By the number: ids are padded to 8 digits, not beyond, so their text sorts 1e8 before 9e7.
    return sorted(snapshot_ids, key=lambda snapshot_id: (_sequence_of(snapshot_id), snapshot_id))


class SnapshotStore:
    """Save, list, get, load, pin and delete snapshots in one directory."""

    def __init__(self, directory: Path | str, keep_last: int = 10, hmac_key: str | None = None) -> None:
        """A store in ``directory``, signing with ``hmac_key`` (none: unsigned, a scratch store)."""
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.keep_last = keep_last
        # Signed with each snapshot: a copy into another partition's folder is refused there.
        self.scope = Path(os.path.abspath(self.directory)).name
        self._hmac_key = hmac_key.encode() if hmac_key is not None else None
        # The index: each listed id's manifest as parsed (None: unreadable or not this folder's),
        # with the stamp of the file it was parsed from.
        self._manifests: dict[str, tuple[FileStamp, SnapshotManifest | None]] = {}

    @classmethod
    def from_config(cls, config: SnapshotConfig, scope: str | None = None) -> SnapshotStore:
        """The configured store, or its ``scope`` subfolder (a service partition's own store),
        signing with the configured key (see :func:`signing_key`).

        Raises :class:`SnapshotNotFound` for a scope that is not a partition's folder name or
        is a symbolic link, and :class:`ConfigError` for an unusable key file.
        """
        directory = Path(config.directory)
        if scope is not None:
            directory /= validate_scope(scope)
            if directory.is_symlink():
                raise SnapshotNotFound(f"no partition {scope!r} in {config.directory} (a link)")
        return cls(directory, config.keep_last, signing_key(config))

    # -- writing ---------------------------------------------------------------------------

    def next_sequence(self) -> int:
        """One after the highest sequence of any folder named like a snapshot, readable or not."""
        return max(map(_sequence_of, self._folders()), default=0) + 1

    def save(
        self,
        state: Any,
        reason: Reason,
        sequence: int | None = None,
        **fields: Any,
    ) -> SnapshotManifest:
        """Pickle ``state`` and write it with its manifest, atomically; then apply retention.

        With an explicit ``sequence`` the id is deterministic: saving the same sequence again
        (a recovery re-learning the same events) keeps the existing snapshot when its payload
        is identical and replaces it otherwise.
        """
        return self.save_pickled(
            pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL), reason, sequence, **fields
        )

    def save_pickled(
        self,
        payload: bytes,
        reason: Reason,
        sequence: int | None = None,
        **fields: Any,
    ) -> SnapshotManifest:
        """:meth:`save` for a state the caller pickled (and keeps the pickle of)."""
        sequence = sequence or self.next_sequence()
        snapshot_id = f"{sequence:08d}-{reason}"
        manifest = SnapshotManifest(
            id=snapshot_id,
            sequence=sequence,
            created_at=datetime.now(UTC),
            reason=reason,
            river_version=river.__version__,
            python_version=python_version(),
            sha256=hashlib.sha256(payload).hexdigest(),
            size_bytes=len(payload),
            **fields,
        )
        manifest.hmac_sha256 = self._sign(manifest)
        final = self.directory / snapshot_id
        if final.exists():
            try:
                if self.get(snapshot_id).sha256 == manifest.sha256:
                    return self.get(snapshot_id)
            except SnapshotError:
                pass
        try:
            self._write(final, payload, manifest)
        except OSError as error:  # the disk's fault (full, read-only), not the snapshot's
            raise SnapshotWriteError(
                f"cannot write snapshot {snapshot_id} in {self.directory}: {error}"
            ) from error
        self._apply_retention(reason)
        return manifest

    def _write(self, final: Path, payload: bytes, manifest: SnapshotManifest) -> None:
        staging = Path(tempfile.mkdtemp(prefix=f".tmp-{manifest.id}-", dir=self.directory))
        try:
            _write_durably(staging / PAYLOAD, payload)
            _write_durably(staging / MANIFEST, manifest.model_dump_json(indent=2).encode())
            _fsync_dir(staging)
            if final.exists():
                shutil.rmtree(final)
            os.rename(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._manifests.pop(manifest.id, None)
        _fsync_dir(self.directory)

    def _sign(self, manifest: SnapshotManifest) -> str | None:
        """HMAC over what a restore trusts: the payload's hash, the id, the offsets and the scope."""
        if self._hmac_key is None:
            return None
        signed = json.dumps(
            [manifest.sha256, manifest.id, manifest.sequence, manifest.offsets, self.scope], sort_keys=True
        )
        return hmac.new(self._hmac_key, signed.encode(), hashlib.sha256).hexdigest()

    def _rewrite_manifest(self, manifest: SnapshotManifest) -> None:
        path = self._folder(manifest.id) / MANIFEST
        temporary = path.with_suffix(".tmp")
        _write_durably(temporary, manifest.model_dump_json(indent=2).encode())
        os.replace(temporary, path)
        self._manifests.pop(manifest.id, None)

    def pin(self, snapshot_id: str, pinned: bool = True) -> SnapshotManifest:
        """A pinned snapshot is never removed by retention."""
        manifest = self.get(snapshot_id).model_copy(update={"pinned": pinned})
        self._rewrite_manifest(manifest)
        return manifest

    def delete(self, snapshot_id: str) -> None:
        shutil.rmtree(self._folder(snapshot_id))
        self._manifests.pop(snapshot_id, None)

    def _folder(self, snapshot_id: str) -> Path:
        """The folder of an existing snapshot; any other name (``..``, a path, junk, a link) is not
        found. Every operation on a snapshot id goes through here."""
        folder = self.directory / validate_snapshot_id(snapshot_id)
        if folder.is_symlink() or not (folder / MANIFEST).exists():
            raise SnapshotNotFound(f"no snapshot {snapshot_id!r} in {self.directory}")
        return folder

    def discard_after(self, sequence: int) -> list[str]:
        """Delete the unpinned snapshots written after ``sequence``; their ids, oldest first."""
        later = _oldest_first(i for i in self._folders() if _sequence_of(i) > sequence)
        manifests = (self._indexed(snapshot_id) for snapshot_id in later)
        discarded = [manifest.id for manifest in manifests if manifest is not None and not manifest.pinned]
        for snapshot_id in discarded:
            self._remove(snapshot_id)
        return discarded

    def _apply_retention(self, reason: str) -> None:
        if reason not in ROTATING_REASONS:
            return
        rotating = [m for m in self.list(reason=reason) if not m.pinned]
        for manifest in rotating[: max(0, len(rotating) - self.keep_last)]:
            self._remove(manifest.id)

    def _remove(self, snapshot_id: str) -> None:
        shutil.rmtree(self.directory / snapshot_id, ignore_errors=True)
        self._manifests.pop(snapshot_id, None)

    # -- reading ---------------------------------------------------------------------------

    def list(self, reason: str | None = None, pinned: bool | None = None) -> list[SnapshotManifest]:
        """Manifests, oldest first; unreadable entries are left out (``get`` names the problem).

        Only the manifests of folders named with ``reason`` are read. The manifests returned are
        the store's index: read them, do not change them.
        """
        manifests = []
        for snapshot_id in _oldest_first(self._folders(reason)):
            manifest = self._indexed(snapshot_id)
            if manifest is not None and (pinned is None or manifest.pinned == pinned):
                manifests.append(manifest)
        return manifests

    def _folders(self, reason: str | None = None) -> list[str]:
        """The names of the folders named like snapshots (of ``reason``, if given), in no order.

        No manifest is read; staging folders (``.tmp-...``) and foreign names are left out. A
        listing of every reason also drops from the index the ids whose folders are gone.
        """
        suffix = "" if reason is None else f"-{reason}"
        names = [
            entry.name
            for entry in os.scandir(self.directory)
            if entry.name.endswith(suffix) and SNAPSHOT_ID.fullmatch(entry.name) and not entry.is_symlink()
        ]
        if reason is None:
            for gone in self._manifests.keys() - set(names):
                self._manifests.pop(gone, None)  # the API's threads may list at once
        return names

    def _indexed(self, snapshot_id: str) -> SnapshotManifest | None:
        """The manifest in folder ``snapshot_id`` if it is valid there, parsed once per file version."""
        path = f"{self.directory}/{snapshot_id}/{MANIFEST}"  # once per snapshot: Path would cost more
        try:
            # Stamped before reading: a rewrite in between leaves an old stamp, so it is read again.
            status = os.stat(path)
            stamp = (status.st_ino, status.st_mtime_ns, status.st_ctime_ns, status.st_size)
            cached = self._manifests.get(snapshot_id)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError:
            self._manifests.pop(snapshot_id, None)
            return None
        try:
            manifest: SnapshotManifest | None = self._parse(snapshot_id, data)
        except SnapshotError:
            manifest = None
        self._manifests[snapshot_id] = (stamp, manifest)
        return manifest

    @staticmethod
    def _parse(snapshot_id: str, data: bytes) -> SnapshotManifest:
        """The manifest in folder ``snapshot_id``, if it is valid and agrees with the folder's name."""
        try:
            manifest = SnapshotManifest.model_validate_json(data)
        except ValidationError as error:
            raise SnapshotError(f"snapshot {snapshot_id!r} has an invalid manifest: {error}") from None
        # A copied or renamed folder, or a manifest that disagrees with its folder's name: its id
        # would lead elsewhere (a pin rewrites the manifest at its id's path), and listing by name
        # would mistake its sequence or reason.
        if not manifest.id == snapshot_id == f"{manifest.sequence:08d}-{manifest.reason}":
            raise SnapshotError(
                f"snapshot {snapshot_id!r} has a manifest that disagrees with its folder's name "
                "(copied or renamed); it will not be used"
            )
        return manifest

    def get(self, snapshot_id: str) -> SnapshotManifest:
        return self._parse(snapshot_id, (self._folder(snapshot_id) / MANIFEST).read_bytes())

    def verify(self, snapshot_id: str) -> tuple[SnapshotManifest, bytes]:
        """The manifest and payload bytes, after every check that can be made without unpickling."""
        manifest = self.get(snapshot_id)
        if manifest.river_version != river.__version__:
            raise SnapshotError(
                f"snapshot {snapshot_id} was written by River {manifest.river_version}; this is "
                f"River {river.__version__}, and River pickles do not load across versions"
            )
        if manifest.python_version != python_version():
            raise SnapshotError(
                f"snapshot {snapshot_id} was written by Python {manifest.python_version}; "
                f"this is Python {python_version()}"
            )
        try:
            payload = (self._folder(snapshot_id) / PAYLOAD).read_bytes()
        except FileNotFoundError:
            raise SnapshotError(f"snapshot {snapshot_id} has no payload file") from None
        if hashlib.sha256(payload).hexdigest() != manifest.sha256:
            raise SnapshotError(
                f"snapshot {snapshot_id} is corrupted or was modified: its SHA-256 does not match "
                "the manifest; it will not be loaded"
            )
        if self._hmac_key is not None:
            if manifest.hmac_sha256 is None:
                raise SnapshotError(f"snapshot {snapshot_id} is not signed and a signing key is set")
            if not hmac.compare_digest(manifest.hmac_sha256, self._sign(manifest) or ""):
                raise SnapshotError(
                    f"snapshot {snapshot_id} has a wrong HMAC signature for {self.scope}: changed, "
                    "copied from another partition's folder, or signed with another key (instances "
                    "sharing a snapshot directory must share the key)"
                )
        return manifest, payload

    def load(self, snapshot_id: str) -> Any:
        """Unpickle a snapshot's state, only after :meth:`verify` passed."""
        _, payload = self.verify(snapshot_id)
        return pickle.loads(payload)
