"""The snapshot store: a folder of pickled learner states, each with a JSON manifest.

Layout: ``<directory>/<id>/state.pkl`` and ``<directory>/<id>/manifest.json``, on local disk or
under an ``s3://bucket/prefix`` (:mod:`stream.storage`). The manifest is written last, as the
commit marker, so a reader sees a snapshot whole or not at all. Loading checks, before anything
is unpickled: the payload's SHA-256 against the manifest, the HMAC signature when a key is in
force, and the River and Python versions.

Unpickling runs code, so a store built from the configuration (:meth:`SnapshotStore.from_config`,
the one way the service, its API and the CLI build one) signs by default: with the key in
``snapshots.hmac_key``, else the one in ``snapshots.key_file`` (default ``<directory>.key``,
beside the store, never in it), generated on first use with mode 0600. The signature covers the
payload's hash, the id, the offsets and the store's folder name (its partition scope), so a
snapshot copied into another partition's folder is refused too. Only names of the store's own
form become paths: snapshot ids (:data:`SNAPSHOT_ID`) and partition scopes (:data:`SCOPE`), never
through a symbolic link.

Only a partition's current owner writes its snapshots: each restore by the service takes a new
ownership epoch (:class:`Ownership`, ``owner.json``), its snapshots are kept under names of
their own (``<id>.e<epoch>``), and a snapshot a fenced instance wrote after the takeover is never
listed or loaded; that instance's next write fails with :class:`SnapshotFenced`.

Retention: the last ``keep_last`` snapshots of each rotating reason, the last ``keep_concepts``
drift and manual ones, pinned ones always, all within ``max_bytes`` (oldest first, never the last
two checkpoints).

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
import platform
import re
import secrets
import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

import river
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stream import pickling
from stream.config import SnapshotConfig
from stream.errors import ConfigError, SnapshotError, SnapshotFenced, SnapshotNotFound, SnapshotWriteError
from stream.storage import Folder, LocalFolder, Stamp, open_folder

logger = logging.getLogger(__name__)

Reason = Literal["periodic", "warning", "drift", "manual", "rollback", "shutdown", "checkpoint"]
# Reasons whose snapshots rotate (the last ``keep_last`` of each are kept); drift and manual ones
# are the memory of past concepts that rollbacks return to, and rotate by ``keep_concepts``.
ROTATING_REASONS: frozenset[str] = frozenset({"periodic", "warning", "rollback", "shutdown", "checkpoint"})
CONCEPT_REASONS: frozenset[str] = frozenset({"drift", "manual"})
# What a commit names: a restore starts from one of these.
RESTORE_POINT_REASONS: frozenset[str] = frozenset({"checkpoint", "shutdown", "manual", "rollback"})

PAYLOAD = "state.pkl"
MANIFEST = "manifest.json"
# What :meth:`SnapshotStore.save` names a snapshot: only such a name is ever turned into a path.
SNAPSHOT_ID = re.compile(rf"[0-9]{{8,18}}-(?:{'|'.join(get_args(Reason))})")
# What a snapshot's entry (folder) is named: its id, and the epoch of the owner that wrote it.
ENTRY = re.compile(
    rf"(?P<id>[0-9]{{8,18}}-(?P<reason>{'|'.join(get_args(Reason))}))(?:\.e(?P<epoch>[1-9][0-9]{{0,17}}))?"
)
OWNERSHIP = "owner.json"
# What a partition's folder is named: ``<topic>-<partition>`` (a Kafka topic name is 1 to 249 of
# these characters); only such a name is ever turned into a store's path.
SCOPE = re.compile(r"[A-Za-z0-9._-]{1,249}-[0-9]{1,10}")


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
    epoch: int = Field(default=0, ge=0, description="the ownership epoch of the instance that wrote it")
    pinned: bool = False
    note: str | None = None

    @property
    def entry(self) -> str:
        """The snapshot's folder (entry) in its store: its id, and the epoch of its writer."""
        return _entry_name(self.id, self.epoch)


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
    return sorted(
        name for name in open_folder(config.directory, config.s3).children() if SCOPE.fullmatch(name)
    )


# Stores that run unsigned, warned about once per process.
_warned_unsigned: set[str] = set()


def signing_key(config: SnapshotConfig) -> str | None:
    """The key the configured store signs with: ``hmac_key``, else the key file's (generated on
    first use); ``None`` only when ``signing`` is off, which is logged once as a warning."""
    if not config.signing:
        directory = config.directory if config.in_s3 else str(Path(os.path.abspath(config.directory)))
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
        if config.in_s3:  # a key made here would be this machine's alone
            raise ConfigError(
                f"snapshots.key_file {path} does not exist: with snapshots in S3 every instance must "
                "read the same key; put it there on each machine, or give snapshots.hmac_key"
            ) from None
        return _create_key(path)


def check_signing_key(config: SnapshotConfig) -> None:
    """Refuse at start a key file that signing would refuse at the first restore (it creates
    nothing: a missing key file is generated on first use)."""
    if config.signing and config.hmac_key is None and (config.in_s3 or config.resolved_key_file().exists()):
        signing_key(config)


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


def _sequence_of(snapshot_id: str) -> int:
    return int(snapshot_id.partition("-")[0])


def _oldest_first(snapshot_ids: Iterable[str]) -> list[str]:
    # By the number: ids are padded to 8 digits, not beyond, so their text sorts 1e8 before 9e7.
    return sorted(snapshot_ids, key=lambda snapshot_id: (_sequence_of(snapshot_id), snapshot_id))


def _entry_name(snapshot_id: str, epoch: int) -> str:
    """Where a snapshot written in ``epoch`` is kept: owners of different epochs never share a name."""
    return snapshot_id if epoch == 0 else f"{snapshot_id}.e{epoch}"


class Ownership(BaseModel):
    """Who may write a partition's snapshots (``owner.json`` in its folder), and whose they are.

    Each restore of the partition by the service takes a new ``epoch``; the snapshots it writes
    carry it. ``ranges`` says, for each epoch, from which sequence on the snapshots are its own:
    a snapshot of any other epoch in that range was written by a fenced instance (a zombie that
    lost the partition while paused) and is neither listed nor loaded.
    """

    model_config = ConfigDict(extra="forbid")

    epoch: int = Field(default=0, ge=0)
    instance: str | None = None
    since: datetime | None = None
    ranges: list[tuple[int, int]] = Field(default_factory=list, description="(epoch, first sequence)")

    def owner_of(self, sequence: int) -> int:
        """The epoch whose snapshots are the valid ones at ``sequence`` (0: before any owner)."""
        owner = 0
        for epoch, first in self.ranges:
            if first > sequence:
                break
            owner = epoch
        return owner


class SnapshotStore:
    """Save, list, get, load, pin and delete snapshots in one folder (local or S3)."""

    def __init__(
        self,
        directory: Path | str | Folder,
        keep_last: int = 10,
        hmac_key: str | None = None,
        keep_concepts: int | None = None,
        max_bytes: int = 0,
    ) -> None:
        """A store in ``directory`` (a path, ``s3://bucket/prefix`` or a :class:`Folder`), signing
        with ``hmac_key`` (none: unsigned, a scratch store). ``keep_concepts`` bounds drift and
        manual snapshots (none: kept until deleted), ``max_bytes`` the total (0: no budget)."""
        self.folder = directory if isinstance(directory, Folder) else open_folder(directory)
        self.keep_last = keep_last
        self.keep_concepts = keep_concepts
        self.max_bytes = max_bytes
        # Signed with each snapshot: a copy into another partition's folder is refused there.
        self.scope = self.folder.name
        self._hmac_key = hmac_key.encode() if hmac_key is not None else None
        self.epoch = 0  # the ownership this store holds (0: none, it writes as the unfenced tools do)
        # The index: each listed entry's manifest as parsed (None: unreadable or not this folder's),
        # with the stamp of the file it was parsed from.
        self._manifests: dict[str, tuple[Stamp, SnapshotManifest | None]] = {}

    @property
    def directory(self) -> Path:
        """A local store's folder (an S3 store has none: its :attr:`folder` says where it is)."""
        if not isinstance(self.folder, LocalFolder):
            raise AttributeError(f"{self.folder.location} is not on local disk")
        return self.folder.path

    @classmethod
    def from_config(cls, config: SnapshotConfig, scope: str | None = None) -> SnapshotStore:
        """The configured store, or its ``scope`` subfolder (a service partition's own store),
        signing with the configured key (see :func:`signing_key`).

        Raises :class:`SnapshotNotFound` for a scope that is not a partition's folder name or
        is a symbolic link, and :class:`ConfigError` for an unusable key file.
        """
        folder = open_folder(config.directory, config.s3)
        if scope is not None:
            try:
                folder = folder.child(validate_scope(scope))
            except NotADirectoryError:
                raise SnapshotNotFound(f"no partition {scope!r} in {config.directory} (a link)") from None
        return cls(
            folder, config.keep_last, signing_key(config), config.keep_concepts, config.max_partition_bytes
        )

    # -- ownership ---------------------------------------------------------------------------

    def _read_ownership(self) -> Ownership:
        data = self.folder.read_own(OWNERSHIP)
        if data is None:
            return Ownership()
        try:
            return Ownership.model_validate_json(data)
        except ValidationError as error:
            raise SnapshotError(f"{self.folder.location}/{OWNERSHIP} is not valid: {error}") from None

    def take_ownership(self, after_sequence: int, instance: str | None = None) -> int:
        """Become the partition's writer: a new epoch, whose snapshots are the valid ones from
        ``after_sequence + 1`` on; every other instance's writes there are fenced off. Returns
        the epoch. Called by a restore, after choosing the snapshot at ``after_sequence`` and
        before discarding what was written after it."""
        current = self._read_ownership()
        epoch = current.epoch + 1
        # Earlier epochs keep the sequences below the new one's start; above it, all is the new one's.
        ranges = [(e, first) for e, first in current.ranges if first <= after_sequence]
        ranges.append((epoch, after_sequence + 1))
        lowest = min(map(_sequence_of, self._ids_by_entry().values()), default=after_sequence + 1)
        # A range whose successor starts at or below every sequence still stored decides nothing.
        while len(ranges) > 1 and ranges[1][1] <= lowest:
            ranges.pop(0)
        ownership = Ownership(epoch=epoch, instance=instance, since=datetime.now(UTC), ranges=ranges)
        try:
            self.folder.write_own(OWNERSHIP, ownership.model_dump_json().encode())
        except OSError as error:  # the storage's fault, as for any write
            raise SnapshotWriteError(
                f"cannot take the ownership of {self.folder.location}: {error}"
            ) from error
        self.epoch = epoch
        return epoch

    def _check_owner(self) -> Ownership:
        """The ownership as stored now; :class:`SnapshotFenced` once another instance took the
        partition over from this one."""
        current = self._read_ownership()
        if self.epoch and current.epoch != self.epoch:
            raise SnapshotFenced(
                f"partition {self.scope} was taken over by {current.instance or 'another instance'} "
                f"(epoch {current.epoch}, since {current.since}); this instance (epoch {self.epoch}) "
                "no longer writes its snapshots"
            )
        return current

    # -- writing ---------------------------------------------------------------------------

    def next_sequence(self) -> int:
        """One after the highest sequence of any entry named like a snapshot, readable or not."""
        return max(map(_sequence_of, self._ids_by_entry().values()), default=0) + 1

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
        return self.save_pickled(pickling.dumps(state), reason, sequence, **fields)

    def save_pickled(
        self,
        payload: bytes,
        reason: Reason,
        sequence: int | None = None,
        **fields: Any,
    ) -> SnapshotManifest:
        """:meth:`save` for a state the caller pickled (and keeps the pickle of)."""
        what = f"a snapshot ({reason})"
        try:
            self._check_owner()
            entries = self._ids_by_entry()  # one listing serves the whole save
            sequence = sequence or max(map(_sequence_of, entries.values()), default=0) + 1
            snapshot_id = f"{sequence:08d}-{reason}"
            what = f"snapshot {snapshot_id}"
            manifest = SnapshotManifest(
                id=snapshot_id,
                sequence=sequence,
                created_at=datetime.now(UTC),
                reason=reason,
                river_version=river.__version__,
                python_version=python_version(),
                sha256=hashlib.sha256(payload).hexdigest(),
                size_bytes=len(payload),
                epoch=self.epoch,
                **fields,
            )
            manifest.hmac_sha256 = self._sign(manifest)
            entry = manifest.entry
            for existing_entry in [e for e, i in entries.items() if i == snapshot_id]:
                existing = self._indexed(existing_entry, snapshot_id)
                if existing is None or existing.sha256 != manifest.sha256:
                    continue
                if existing_entry == entry:
                    return existing
                # The same snapshot written again by a later owner (a restore re-learning it):
                # a pin outlives the restore.
                manifest.pinned = manifest.pinned or existing.pinned
            self.folder.write_entry(
                entry, {PAYLOAD: payload, MANIFEST: manifest.model_dump_json(indent=2).encode()}
            )
            self._manifests.pop(entry, None)
            entries[entry] = snapshot_id
            self._apply_retention(reason, entries, self._check_owner())  # a takeover meanwhile: its turn
        except (SnapshotFenced, SnapshotWriteError):
            raise
        except OSError as error:  # the storage's fault (full, read-only, gone, unreachable)
            raise SnapshotWriteError(f"cannot write {what} in {self.folder.location}: {error}") from error
        return manifest

    def _sign(self, manifest: SnapshotManifest) -> str | None:
        """HMAC over what a restore trusts: the payload's hash, the id, the offsets and the scope."""
        if self._hmac_key is None:
            return None
        signed = json.dumps(
            [manifest.sha256, manifest.id, manifest.sequence, manifest.offsets, self.scope], sort_keys=True
        )
        return hmac.new(self._hmac_key, signed.encode(), hashlib.sha256).hexdigest()

    def pin(self, snapshot_id: str, pinned: bool = True) -> SnapshotManifest:
        """A pinned snapshot is never removed by retention."""
        self._check_owner()
        current = self.get(snapshot_id)
        entry, manifest = current.entry, current.model_copy(update={"pinned": pinned})
        try:
            self.folder.replace(entry, MANIFEST, manifest.model_dump_json(indent=2).encode())
            self._manifests.pop(entry, None)
            if not self.folder.exists(entry, PAYLOAD):  # retention removed it meanwhile: no orphan
                self._remove(entry)
                raise SnapshotNotFound(f"no snapshot {snapshot_id!r} in {self.folder.location}")
        except OSError as error:
            raise SnapshotWriteError(
                f"cannot pin {snapshot_id} in {self.folder.location}: {error}"
            ) from error
        return manifest

    def delete(self, snapshot_id: str) -> None:
        entry = self._entry(snapshot_id)
        self._check_owner()
        self._remove(entry)

    def _entry(self, snapshot_id: str) -> str:
        """The entry of an existing, valid snapshot id; any other name (``..``, a path, junk, a
        link, a fenced writer's) is not found. Every operation on a snapshot id goes through here."""
        validate_snapshot_id(snapshot_id)
        ownership = self._read_ownership()
        entry = _entry_name(snapshot_id, ownership.owner_of(_sequence_of(snapshot_id)))
        if self.folder.is_entry_link(entry) or self.folder.stamp(entry, MANIFEST) is None:
            reason = snapshot_id.rpartition("-")[2]
            entry = self._visible(self._ids_by_entry(reason), ownership).get(snapshot_id, "")
            if not entry:
                raise SnapshotNotFound(f"no snapshot {snapshot_id!r} in {self.folder.location}")
        return entry

    def _visible(self, entries: dict[str, str], ownership: Ownership) -> dict[str, str]:
        """Of ``entries`` (entry -> id), the valid snapshots' ids and their entries: the entry of
        the owner of the id's sequence, else a pinned one another owner wrote (pins outlive restores)."""
        by_id: dict[str, list[str]] = {}
        for entry, snapshot_id in entries.items():
            by_id.setdefault(snapshot_id, []).append(entry)
        visible = {}
        for snapshot_id, candidates in by_id.items():
            own = _entry_name(snapshot_id, ownership.owner_of(_sequence_of(snapshot_id)))
            if own in candidates:
                visible[snapshot_id] = own
                continue
            pinned = [
                (manifest.epoch, entry)
                for entry in candidates
                if (manifest := self._indexed(entry, snapshot_id)) is not None and manifest.pinned
            ]
            if pinned:
                visible[snapshot_id] = max(pinned)[1]
        return visible

    def discard_after(self, sequence: int) -> list[str]:
        """Delete the unpinned snapshots written after ``sequence``, whoever wrote them; the ids of
        those deleted, oldest first."""
        self._check_owner()
        discarded = set()
        for entry, snapshot_id in self._ids_by_entry().items():
            if _sequence_of(snapshot_id) <= sequence:
                continue
            manifest = self._indexed(entry, snapshot_id)
            if manifest is not None and manifest.pinned:
                continue
            try:
                removed = self._remove(entry)
            except OSError as error:
                raise SnapshotWriteError(
                    f"cannot delete {entry} in {self.folder.location}: {error}"
                ) from error
            if removed and manifest is not None:
                discarded.add(snapshot_id)
        return _oldest_first(discarded)

    def _apply_retention(self, reason: str, entries: dict[str, str], ownership: Ownership) -> None:
        """Rotate ``reason``'s snapshots, sweep what fenced writers left, keep within the budget;
        on the listing ``entries`` the save made (nothing else is listed)."""
        visible = self._visible(entries, ownership)
        limit = self.keep_last if reason in ROTATING_REASONS else self.keep_concepts
        removed = set()
        if reason in CONCEPT_REASONS | ROTATING_REASONS and limit is not None:
            of_reason = _oldest_first(i for i in visible if i.endswith(f"-{reason}"))
            rotating = [i for i in of_reason if not getattr(self._indexed(visible[i], i), "pinned", True)]
            for snapshot_id in rotating[: max(0, len(rotating) - limit)]:
                if self._remove(visible[snapshot_id]):
                    removed.add(visible.pop(snapshot_id))
        if self.epoch:  # what fenced writers left behind
            for entry in entries.keys() - set(visible.values()) - removed:
                manifest = self._indexed(entry, entries[entry])  # none: being written, or unreadable
                if manifest is not None and not manifest.pinned:
                    self._remove(entry)
        if self.max_bytes:
            self._keep_within_budget(visible)

    def _keep_within_budget(self, visible: dict[str, str]) -> None:
        sizes = {i: self.folder.size(entry, PAYLOAD) or 0 for i, entry in visible.items()}
        total = sum(sizes.values())
        if total <= self.max_bytes:
            return
        restore_points = [i for i in _oldest_first(visible) if i.rpartition("-")[2] in RESTORE_POINT_REASONS]
        for snapshot_id in _oldest_first(visible):
            if total <= self.max_bytes:
                return
            manifest = self._indexed(visible[snapshot_id], snapshot_id)
            if snapshot_id in restore_points[-2:] or manifest is None or manifest.pinned:
                continue
            if self._remove(visible[snapshot_id]):
                total -= sizes[snapshot_id]
        if total > self.max_bytes:
            logger.warning(
                "the snapshots of %s take %d bytes, over snapshots.max_partition_bytes (%d): what is "
                "left is pinned or one of the last two checkpoints", self.scope, total, self.max_bytes,
            )  # fmt: skip

    def _remove(self, entry: str) -> bool:
        """Remove an entry, unless a later owner wrote it (an owned store never removes those)."""
        match = ENTRY.fullmatch(entry)
        if self.epoch and match is not None and int(match["epoch"] or 0) > self.epoch:
            return False
        self.folder.remove_entry(entry, MANIFEST)
        self._manifests.pop(entry, None)
        return True

    # -- reading ---------------------------------------------------------------------------

    def list(self, reason: str | None = None, pinned: bool | None = None) -> list[SnapshotManifest]:
        """Manifests, oldest first; unreadable entries and those of a fenced writer are left out
        (``get`` names the problem).

        Only the manifests of entries named with ``reason`` are read. The manifests returned are
        the store's index: read them, do not change them.
        """
        visible = self._visible(self._ids_by_entry(reason), self._read_ownership())
        manifests = []
        for snapshot_id in _oldest_first(visible):
            manifest = self._indexed(visible[snapshot_id], snapshot_id)
            if manifest is not None and (pinned is None or manifest.pinned == pinned):
                manifests.append(manifest)
        return manifests

    def _ids_by_entry(self, reason: str | None = None) -> dict[str, str]:
        """The entries named like snapshots (of ``reason``, if given) and their snapshot ids.

        No manifest is read; staging folders (``.tmp-...``) and foreign names are left out. A
        listing of every reason also drops from the index the entries that are gone.
        """
        found = {}
        for name in self.folder.entries():
            match = ENTRY.fullmatch(name)
            if match is not None and (reason is None or match["reason"] == reason):
                found[name] = match["id"]
        if reason is None:
            for gone in self._manifests.keys() - found.keys():
                self._manifests.pop(gone, None)  # the API's threads may list at once
        return found

    def _indexed(self, entry: str, snapshot_id: str) -> SnapshotManifest | None:
        """The manifest in ``entry`` if it is valid there, parsed once per file version; none if
        it has no manifest. A storage that fails (not a missing file) raises: a restore must not
        take a checkpoint it could not read for one that is not there."""
        # Stamped before reading: a rewrite in between leaves an old stamp, so it is read again.
        stamp = self.folder.stamp(entry, MANIFEST)
        if stamp is None:
            self._manifests.pop(entry, None)
            return None
        cached = self._manifests.get(entry)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            data = self.folder.read(entry, MANIFEST)
        except FileNotFoundError:
            self._manifests.pop(entry, None)
            return None
        try:
            manifest: SnapshotManifest | None = self._parse(entry, snapshot_id, data)
        except SnapshotError:
            manifest = None
        self._manifests[entry] = (stamp, manifest)
        return manifest

    @staticmethod
    def _parse(entry: str, snapshot_id: str, data: bytes) -> SnapshotManifest:
        """The manifest in ``entry``, if it is valid and agrees with the entry's name."""
        try:
            manifest = SnapshotManifest.model_validate_json(data)
        except ValidationError as error:
            raise SnapshotError(f"snapshot {snapshot_id!r} has an invalid manifest: {error}") from None
        # A copied or renamed folder, or a manifest that disagrees with its folder's name: its id
        # would lead elsewhere (a pin rewrites the manifest at its id's path), and listing by name
        # would mistake its sequence or reason.
        if not (
            manifest.id == snapshot_id == f"{manifest.sequence:08d}-{manifest.reason}"
            and entry == _entry_name(snapshot_id, manifest.epoch)
        ):
            raise SnapshotError(
                f"snapshot {snapshot_id!r} has a manifest that disagrees with its folder's name "
                "(copied or renamed); it will not be used"
            )
        return manifest

    def get(self, snapshot_id: str) -> SnapshotManifest:
        entry = self._entry(snapshot_id)
        try:
            data = self.folder.read(entry, MANIFEST)
        except FileNotFoundError:
            raise SnapshotNotFound(f"no snapshot {snapshot_id!r} in {self.folder.location}") from None
        return self._parse(entry, snapshot_id, data)

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
            payload = self.folder.read(manifest.entry, PAYLOAD)
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
        return self.load_with_manifest(snapshot_id)[1]

    def load_with_manifest(self, snapshot_id: str) -> tuple[SnapshotManifest, Any]:
        """:meth:`load`, with the manifest it verified (read once)."""
        manifest, payload = self.verify(snapshot_id)
        return manifest, pickling.loads(payload)
