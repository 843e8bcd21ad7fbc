from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import re
import shutil
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from hashlib import sha256
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import get_args

import pytest
import river
from hypothesis import example, given, settings
from hypothesis import strategies as st

import stream.snapshots
import stream.storage
from stream.config import Config, S3Settings, load_config
from stream.errors import ConfigError, SnapshotError, SnapshotFenced, SnapshotNotFound, SnapshotWriteError
from stream.snapshots import (
    MANIFEST,
    OWNERSHIP,
    PAYLOAD,
    SCOPE,
    SNAPSHOT_ID,
    Ownership,
    Reason,
    SnapshotManifest,
    SnapshotStore,
    check_signing_key,
    list_scopes,
    signing_key,
)
from stream.storage import Folder, check_snapshot_bucket, open_folder


class Place:
    """Where a test keeps its snapshots: a local folder, or a bucket on the real S3 server (the
    suite starts one, as it does the Kafka broker). Every test written against a ``place`` runs on
    both; the few about local files only (fsync, links, staging folders) take ``tmp_path``."""

    def __init__(self, location: str, endpoint_url: str | None = None) -> None:
        self.location = location.rstrip("/")
        self.endpoint_url = endpoint_url

    def folder(self, sub: str = "") -> Folder:
        return open_folder(f"{self.location}/{sub}".rstrip("/"), S3Settings(endpoint_url=self.endpoint_url))

    def store(self, sub: str = "", keep_last: int = 10, **options) -> SnapshotStore:
        return SnapshotStore(self.folder(sub), keep_last, **options)

    def config(self, **snapshots: object) -> Config:
        s3 = {"s3": {"endpoint_url": self.endpoint_url}} if self.endpoint_url else {}
        return Config.model_validate({"snapshots": {"directory": self.location, **s3, **snapshots}})

    def plant(self, store: SnapshotStore, entry: str, file: str, data: bytes) -> None:
        """Write one file of an entry behind the store's back (whoever can write the storage can)."""
        if self.endpoint_url is None:
            (store.directory / entry).mkdir(exist_ok=True)
            (store.directory / entry / file).write_bytes(data)
        else:
            store.folder.replace(entry, file, data)

    def unplant(self, store: SnapshotStore, entry: str, file: str) -> None:
        """Remove one file of an entry behind the store's back."""
        if self.endpoint_url is None:
            (store.directory / entry / file).unlink()
        else:
            store.folder._delete([store.folder._key(entry, file)])

    def copy(
        self, source: SnapshotStore, entry: str, target: SnapshotStore, as_entry: str | None = None
    ) -> None:
        for file in (PAYLOAD, MANIFEST):
            self.plant(target, as_entry or entry, file, source.folder.read(entry, file))


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def place(request, tmp_path) -> Place:
    return Place(str(tmp_path)) if request.param == "local" else request.getfixturevalue("s3_place")


@pytest.fixture
def s3_place(s3, s3_bucket, monkeypatch) -> Place:
    """A bucket of its own on the real S3 server, with the server's credentials in the environment."""
    for name, value in (
        ("AWS_ACCESS_KEY_ID", s3.access_key),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_key),
        ("AWS_REGION", s3.region),
    ):
        monkeypatch.setenv(name, value)
    return Place(f"s3://{s3_bucket}/snapshots", s3.endpoint_url)


class _Tripwire:
    """Unpickling this writes a file: proof that a payload was (or was not) unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path(self.path).touch, ())


def test_save_then_load_round_trips_and_records_the_manifest(place):
    store = place.store()
    manifest = store.save({"w": [1.5, 2.5]}, reason="drift", events_seen=42, offsets={"t:0": 10})
    assert store.load(manifest.id) == {"w": [1.5, 2.5]}
    stored = store.get(manifest.id)
    assert stored.events_seen == 42 and stored.offsets == {"t:0": 10}
    assert stored.sha256 == manifest.sha256 and len(stored.sha256) == 64
    # The Python version without its patch release: a patch upgrade still loads the snapshot.
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert (stored.river_version, stored.python_version) == (river.__version__, python)
    assert [m.id for m in store.list()] == [manifest.id]
    assert place.store().load(manifest.id) == {"w": [1.5, 2.5]}  # another process reads it too


def test_writes_leave_no_temporary_folders_and_an_interrupted_write_is_invisible(tmp_path):
    store = SnapshotStore(tmp_path)
    store.save("a", reason="manual")
    assert [p.name for p in tmp_path.iterdir()] == ["00000001-manual"]
    # A crash between writing and renaming leaves only a .tmp folder, which nobody lists or loads.
    (tmp_path / ".tmp-00000002-manual-x").mkdir()
    (tmp_path / ".tmp-00000002-manual-x" / PAYLOAD).write_bytes(b"partial")
    assert [m.id for m in store.list()] == ["00000001-manual"]


def test_a_payload_without_its_manifest_is_an_unfinished_write_nobody_sees(place):
    store = place.store()
    store.save("a", reason="manual")
    place.plant(store, "00000002-manual", PAYLOAD, pickle.dumps("partial"))  # the manifest comes last
    assert [m.id for m in store.list()] == ["00000001-manual"]
    with pytest.raises(SnapshotNotFound):
        store.load("00000002-manual")
    assert store.next_sequence() == 3  # and its id is not given out again


@pytest.mark.parametrize("hmac_key", [None, "secret"], ids=["unsigned", "signed"])
def test_a_corrupted_or_swapped_payload_is_refused_and_never_unpickled(place, tmp_path, hmac_key):
    """Signed too: the manifest is untouched, so only the payload's SHA-256 can catch the swap."""
    store = place.store(hmac_key=hmac_key)
    tripwire = tmp_path / "unpickled"
    manifest = store.save("genuine", reason="manual")
    place.plant(store, manifest.entry, PAYLOAD, pickle.dumps(_Tripwire(str(tripwire))))
    refused = re.escape(
        f"snapshot {manifest.id} is corrupted or was modified: its SHA-256 does not match the manifest; "
        "it will not be loaded"
    )
    with pytest.raises(SnapshotError, match=f"^{refused}$"):
        store.load(manifest.id)
    assert not tripwire.exists()


def test_a_snapshot_whose_payload_is_gone_is_an_error_naming_it(place):
    store = place.store()
    manifest = store.save("state", reason="manual")
    place.unplant(store, manifest.entry, PAYLOAD)
    with pytest.raises(SnapshotError, match=f"^snapshot {manifest.id} has no payload file$"):
        store.load(manifest.id)


def test_a_tampered_manifest_hash_still_fails_with_a_signing_key(place, tmp_path):
    """An attacker who rewrites both payload and hash is stopped by the HMAC signature."""
    store = place.store(hmac_key="secret")
    tripwire = tmp_path / "unpickled"
    manifest = store.save("genuine", reason="manual")
    evil = pickle.dumps(_Tripwire(str(tripwire)))
    place.plant(store, manifest.entry, PAYLOAD, evil)
    forged = json.loads(store.folder.read(manifest.entry, MANIFEST))
    forged["sha256"] = sha256(evil).hexdigest()
    place.plant(store, manifest.entry, MANIFEST, json.dumps(forged).encode())
    with pytest.raises(SnapshotError, match="wrong HMAC signature"):
        store.load(manifest.id)
    assert not tripwire.exists()


def test_a_store_from_the_config_signs_with_the_configured_key_and_refuses_unsigned(place):
    config = place.config(hmac_key="k")
    signed = SnapshotStore.from_config(config.snapshots, "events-0").save("s", reason="manual")
    assert signed.hmac_sha256 is not None
    place.store("events-0").save("unsigned", reason="manual")
    with pytest.raises(SnapshotError, match="not signed"):
        SnapshotStore.from_config(config.snapshots, "events-0").load("00000002-manual")


def test_a_store_from_the_config_keeps_what_its_retention_settings_say(tmp_path):
    config = _default_config(tmp_path, signing=False, keep_last=3, keep_concepts=7, max_partition_bytes=5000)
    store = SnapshotStore.from_config(config.snapshots, "events-0")
    assert (store.keep_last, store.keep_concepts, store.max_bytes) == (3, 7, 5000)


def test_unsigned_snapshots_are_refused_when_a_key_is_set(place):
    place.store().save("unsigned", reason="manual")
    with pytest.raises(SnapshotError, match="not signed"):
        place.store(hmac_key="k").load("00000001-manual")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("river_version", "0.19.0", r"River 0\.19\.0"), ("python_version", "2.7", r"Python 2\.7")],
)
def test_a_snapshot_from_another_river_or_python_version_is_refused(place, tmp_path, field, value, message):
    store = place.store()
    tripwire = tmp_path / "unpickled"
    manifest = store.save(_Tripwire(str(tripwire)), reason="manual")
    tripwire.unlink(missing_ok=True)
    data = json.loads(store.folder.read(manifest.entry, MANIFEST))
    data[field] = value
    place.plant(store, manifest.entry, MANIFEST, json.dumps(data).encode())
    with pytest.raises(SnapshotError, match=message):
        store.load(manifest.id)
    assert not tripwire.exists()


def test_retention_keeps_the_last_k_of_each_reason_and_every_pinned_one(place):
    store = place.store(keep_last=2, keep_concepts=3)
    store.save("p1", reason="periodic")
    store.pin("00000001-periodic")
    for n in range(2, 6):
        store.save(f"p{n}", reason="periodic")
    for n in range(5):  # more of each than kept, each followed by rotating ones
        store.save(f"d{n}", reason="drift")
        store.save(f"m{n}", reason="manual")
        store.save(f"p{n}", reason="periodic")
    ids = [m.id for m in store.list()]
    kept = (("drift", 6), ("manual", 7))  # sequences 6 + 3n and 7 + 3n: the last three of each
    concepts = [f"{first + 3 * n:08d}-{reason}" for n in range(2, 5) for reason, first in kept]
    assert ids == sorted(["00000001-periodic", *concepts, "00000017-periodic", "00000020-periodic"])


def test_a_store_built_without_settings_keeps_the_last_ten_of_each_rotating_reason(tmp_path):
    store = SnapshotStore(tmp_path)  # as the configuration's default, snapshots.keep_last
    for n in range(11):
        store.save(n, reason="periodic")
    assert [m.sequence for m in store.list()] == list(range(2, 12))


def test_rotation_never_removes_a_snapshot_another_process_is_still_writing(place):
    store = place.store(keep_last=1)
    store.save("first", reason="periodic")
    place.plant(store, "00000002-periodic", PAYLOAD, pickle.dumps("being written"))  # no manifest yet
    store.save("third", reason="periodic", sequence=3)
    assert store.folder.read("00000002-periodic", PAYLOAD) == pickle.dumps("being written")
    assert [m.id for m in store.list()] == ["00000003-periodic"]


def test_without_keep_concepts_drift_and_manual_snapshots_stay_until_deleted(place):
    store = place.store(keep_last=1)
    for n in range(4):
        store.save(f"d{n}", reason="drift")
        store.save(f"m{n}", reason="manual")
    assert len(store.list(reason="drift")) == len(store.list(reason="manual")) == 4


def test_the_byte_budget_removes_the_oldest_but_never_pinned_or_the_last_two_checkpoints(place, caplog):
    store = place.store(keep_concepts=100, max_bytes=5_100)  # five pickles of ~1,016 bytes
    pinned = store.save(b"p" * 1_000, reason="drift")
    store.pin(pinned.id)
    for n in range(6):
        store.save(bytes([n]) * 1_000, reason="drift")
    checkpoints = [store.save(bytes([n]) * 1_000, reason="checkpoint") for n in range(2)]
    kept = store.list()
    assert sum(m.size_bytes for m in kept) <= 5_100
    assert pinned.id in {m.id for m in kept} and {m.id for m in checkpoints} <= {m.id for m in kept}
    assert [m.id for m in kept if m.reason == "drift"][1:] == [f"{s:08d}-drift" for s in (6, 7)]
    big = store.save(b"x" * 4_000, reason="checkpoint")  # now the last two checkpoints alone are over
    left = store.list()
    assert {m.id for m in left} == {pinned.id, checkpoints[1].id, big.id}
    assert caplog.messages[-1] == (
        f"the snapshots of {store.scope} take {sum(m.size_bytes for m in left)} bytes, over "
        "snapshots.max_partition_bytes (5100): what is left is pinned or one of the last two checkpoints"
    )


def test_the_byte_budget_is_kept_to_the_byte_over_the_snapshots_an_earlier_run_wrote(place, caplog):
    """Snapshots that fill the budget exactly are all kept; one more removes the oldest, which
    brings them back to exactly the budget: no more is removed, and nothing is warned. The store
    of a restarted service keeps the budget over what the run before it wrote."""
    earlier = place.store(keep_concepts=100)
    written = [earlier.save(bytes([n]) * 1_000, reason="drift") for n in range(3)]
    size = written[0].size_bytes
    assert {m.size_bytes for m in written} == {size}
    restarted = place.store(keep_concepts=100, max_bytes=4 * size)
    place.plant(restarted, "00000099-drift", MANIFEST, b"{}")  # no payload: it weighs nothing
    # Checkpoints now: a save reads the manifests of its own reason only, the budget all of them.
    fourth = restarted.save(bytes([3]) * 1_000, reason="checkpoint")
    assert [m.id for m in place.store().list()] == [m.id for m in written] + [fourth.id]
    fifth = restarted.save(bytes([4]) * 1_000, reason="checkpoint")
    assert [m.id for m in place.store().list()] == [m.id for m in written[1:]] + [fourth.id, fifth.id]
    # Where only the newest may go, it goes, and what is left fits exactly.
    tight = place.store("tight", keep_concepts=100, max_bytes=2 * size)
    checkpoints = [tight.save(bytes([n]) * 1_000, reason="checkpoint") for n in range(2)]
    tight.save(bytes([2]) * 1_000, reason="drift")
    assert [m.id for m in tight.list()] == [m.id for m in checkpoints]
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_full_listing_drops_from_the_index_the_snapshots_gone_and_only_those(place):
    """The index of parsed manifests stays as large as the folder: a listing of every reason drops
    what another instance deleted; one of a single reason leaves the rest of the index alone."""
    store = place.store()
    kept, gone = store.save("a", reason="drift"), store.save("b", reason="checkpoint")
    store.list()
    place.store().delete(gone.id)
    store.list(reason="drift")
    assert set(store._manifests) == {kept.entry, gone.entry}
    store.list()
    assert set(store._manifests) == {kept.entry}


class _RacingIndex(dict):
    """An index another thread's listing prunes between this one's look at it and its own pruning."""

    def keys(self):
        keys = set(super().keys())
        self.clear()
        return keys


def test_two_listings_at_once_may_both_drop_what_is_gone(place):
    store = place.store()
    gone = store.save("b", reason="checkpoint")
    store.list()
    place.store().delete(gone.id)
    store._manifests = _RacingIndex(store._manifests)
    assert store.list() == []


def test_a_snapshot_records_when_it_was_written_in_utc(place):
    before = datetime.now(UTC)
    written = place.store().save("state", reason="manual")
    stored = place.store().get(written.id)
    assert stored.created_at == written.created_at and before <= stored.created_at <= datetime.now(UTC)


@pytest.mark.parametrize("zombie_listed_first", [True, False])
def test_saving_again_what_this_owner_wrote_is_idempotent_beside_a_fenced_writers_copy(
    place, monkeypatch, zombie_listed_first
):
    zombie = place.store("events-0")
    zombie.take_ownership(0, "a")
    owner = place.store("events-0")
    owner.take_ownership(0, "b")
    first = owner.save("b1", reason="checkpoint", sequence=1)
    zombie._check_owner = lambda: Ownership(epoch=1, ranges=[(1, 1)])  # as it saw it before a pause
    zombie.save("a1", reason="checkpoint", sequence=1)  # its late write, beside the owner's
    assert sorted(place.store("events-0").folder.entries()) == ["00000001-checkpoint.e1", first.entry]
    listed = owner.folder.entries  # in no order: both orders are tried
    monkeypatch.setattr(owner.folder, "entries", lambda: sorted(listed(), reverse=not zombie_listed_first))
    again = owner.save("b1", reason="checkpoint", sequence=1)
    assert again.created_at == first.created_at  # the owner's own was found, past the zombie's


def test_saving_an_existing_sequence_again_is_idempotent(place):
    store = place.store()
    first = store.save("same", reason="checkpoint", sequence=5)
    again = store.save("same", reason="checkpoint", sequence=5)
    assert again.created_at == first.created_at  # the existing snapshot was kept as it was
    replaced = store.save("different", reason="checkpoint", sequence=5)
    assert store.load(replaced.id) == "different"


def test_pin_unpin_delete_and_unknown_ids(place):
    store = place.store()
    manifest = store.save("x", reason="warning")
    assert store.pin(manifest.id).pinned
    assert store.list(pinned=True)[0].id == manifest.id
    assert not store.pin(manifest.id, pinned=False).pinned
    store.delete(manifest.id)
    assert store.list() == []
    for bad in ("nope", "../etc", ".tmp-x"):
        with pytest.raises(SnapshotError, match="no snapshot"):
            store.get(bad)


def test_pinning_a_snapshot_whose_payload_was_removed_meanwhile_is_not_found_and_leaves_no_orphan(
    place: Place,
) -> None:
    """As a removal racing the pin leaves it: the pin's manifest rewritten, the payload gone."""
    store = place.store()
    manifest = store.save("x", reason="drift")
    place.unplant(store, manifest.entry, PAYLOAD)
    with pytest.raises(SnapshotNotFound) as missing:
        store.pin(manifest.id)
    assert str(missing.value) == f"no snapshot {manifest.id!r} in {store.folder.location}"
    assert store.folder.entries() == []


def test_a_storage_failure_while_discarding_or_pinning_is_a_write_error_naming_the_snapshot(
    place: Place, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = place.store()
    kept, later = store.save("kept", reason="checkpoint"), store.save("later", reason="checkpoint")

    def full(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(store.folder, "remove_entry", full)
    monkeypatch.setattr(store.folder, "replace", full)
    with pytest.raises(SnapshotWriteError) as refused:
        store.discard_after(kept.sequence)
    assert str(refused.value) == f"cannot delete {later.entry} in {store.folder.location}: disk full"
    with pytest.raises(SnapshotWriteError) as refused:
        store.pin(kept.id)
    assert str(refused.value) == f"cannot pin {kept.id} in {store.folder.location}: disk full"


def test_saving_a_state_writes_the_pickle_the_engine_makes_of_it_so_a_rewrite_keeps_its_pin(
    tmp_path: Path,
) -> None:
    """The engine pickles its state itself (highest protocol: ``stream.prequential``) and saves
    the pickle; ``stream rebuild`` saves a state. The same state must be the same payload, or a
    rebuild writing it again would not be taken for the same snapshot and would drop its pin."""
    state = {"weights": [1.5, 2.5]}
    service = SnapshotStore(tmp_path)
    service.take_ownership(0, "service")
    written = service.save_pickled(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL), "checkpoint")
    service.pin(written.id)
    rebuild = SnapshotStore(tmp_path)
    rebuild.take_ownership(written.sequence - 1, "stream rebuild")
    again = rebuild.save(state, "checkpoint", sequence=written.sequence)
    assert again.sha256 == written.sha256 and again.pinned


def test_payload_and_manifest_are_fsynced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(source, target) -> None:
        events.append(("rename", str(target)))
        real_rename(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    SnapshotStore(tmp_path).save("x", reason="manual")
    final = str(tmp_path / "00000001-manual")
    kinds = [(kind, Path(path).name if kind == "fsync" else path) for kind, path in events]
    assert kinds[:2] == [("fsync", PAYLOAD), ("fsync", MANIFEST)]
    staging = Path(events[0][1]).parent  # hidden beside the entries, on their file system
    assert staging.parent == tmp_path and staging.name.startswith(".tmp-00000001-manual-")
    assert events[2] == ("fsync", str(staging)) and events[3] == ("rename", final)
    assert events[4] == ("fsync", str(tmp_path))  # the rename itself made durable


def test_the_signature_covers_the_offsets_a_restore_trusts(place):
    store = place.store(hmac_key="k")
    manifest = store.save("state", reason="checkpoint", offsets={"events:0": 100})
    data = json.loads(store.folder.read(manifest.entry, MANIFEST))
    data["offsets"] = {"events:0": 5000}  # relabel an old snapshot as a newer one
    place.plant(store, manifest.entry, MANIFEST, json.dumps(data).encode())
    with pytest.raises(SnapshotError, match="wrong HMAC signature"):
        store.load(manifest.id)


def test_a_failed_write_leaves_no_temporary_folder(tmp_path, monkeypatch):
    store = SnapshotStore(tmp_path)

    def fail(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("stream.storage._write_durably", fail)
    with pytest.raises(OSError):
        store.save("x", reason="manual")
    assert list(tmp_path.iterdir()) == []


# -- properties: only the store's own ids ever become paths ---------------------------------------

SNAPSHOT_ROOT = Path(tempfile.mkdtemp(prefix="snapshot-ids-"))
# A scope's store, a neighbour scope holding a real snapshot, and a manifest in the parent folder:
# an id that escaped its folder would find one of them.
ID_STORE = SnapshotStore(SNAPSHOT_ROOT / "events-0")
NEIGHBOUR = SnapshotStore(SNAPSHOT_ROOT / "events-1").save("theirs", reason="manual")
(SNAPSHOT_ROOT / MANIFEST).write_text(NEIGHBOUR.model_dump_json())
(SNAPSHOT_ROOT / PAYLOAD).write_bytes(pickle.dumps("theirs"))


@settings(deadline=None)
@example(snapshot_id=f"../events-1/{NEIGHBOUR.id}")
@example(snapshot_id="..")
@example(snapshot_id="")
@example(snapshot_id="x" * 5000)
@example(snapshot_id="a\x00b")
@example(snapshot_id=f"{NEIGHBOUR.id}/../..")
@given(
    snapshot_id=st.text(st.characters(categories=["L", "N", "P", "S", "Cc", "Cs", "Zs"]), max_size=300)
    | st.from_regex(SNAPSHOT_ID, fullmatch=True)
    | st.builds("/".join, st.lists(st.sampled_from(["..", ".", "", "events-1", NEIGHBOUR.id]), max_size=4))
)
def test_any_id_the_store_did_not_write_is_not_found_and_touches_nothing(snapshot_id):
    before = sorted(str(path) for path in SNAPSHOT_ROOT.rglob("*"))
    for operation in (ID_STORE.get, ID_STORE.load, ID_STORE.pin, ID_STORE.delete):
        with pytest.raises(SnapshotNotFound, match="no snapshot"):
            operation(snapshot_id)
    assert sorted(str(path) for path in SNAPSHOT_ROOT.rglob("*")) == before


@settings(deadline=None)
@given(sequence=st.integers(1, 10**12), reason=st.sampled_from(sorted(get_args(Reason))))
def test_every_id_the_store_writes_is_one_it_reads_back(sequence, reason):
    with tempfile.TemporaryDirectory() as directory:
        store = SnapshotStore(directory)
        manifest = store.save([sequence], reason=reason, sequence=sequence)
        assert SNAPSHOT_ID.fullmatch(manifest.id)
        assert [m.id for m in store.list()] == [manifest.id] and store.load(manifest.id) == [sequence]
        store.delete(manifest.id)
        assert store.list() == []


def test_a_copied_snapshot_folder_is_not_listed_so_its_id_never_leads_elsewhere(place):
    store = place.store()
    manifest = store.save("x", reason="drift")
    place.copy(store, manifest.entry, store, "00000007-drift")  # same manifest, other folder
    place.copy(store, manifest.entry, store, "backup")
    place.copy(store, manifest.entry, store, f"{manifest.id}.e3")  # as if another owner wrote it
    assert [m.id for m in store.list()] == [manifest.id]


# -- the index: listing stays cheap as snapshots accumulate ---------------------------------------


def _write_copies(store: SnapshotStore, template: SnapshotManifest, sequences: range, reason: Reason) -> None:
    """Snapshots as a long run leaves them, written directly (saving each would fsync each)."""
    payload = (store.directory / template.id / PAYLOAD).read_bytes()
    for sequence in sequences:
        snapshot_id = f"{sequence:08d}-{reason}"
        manifest = template.model_copy(update={"id": snapshot_id, "sequence": sequence, "reason": reason})
        (store.directory / snapshot_id).mkdir()
        (store.directory / snapshot_id / PAYLOAD).write_bytes(payload)
        (store.directory / snapshot_id / MANIFEST).write_text(manifest.model_dump_json())


def test_thousands_of_drift_snapshots_are_not_read_to_save_or_list_checkpoints(tmp_path, monkeypatch):
    # As the service's store is: owned, with a byte budget.
    store = SnapshotStore(tmp_path, keep_last=3, max_bytes=1 << 30)
    _write_copies(store, store.save("concept", reason="drift"), range(2, 3001), "drift")
    store.take_ownership(3000, "this instance")
    parsed: list[str] = []
    parse = SnapshotManifest.model_validate_json

    def counting_parse(data: bytes) -> SnapshotManifest:
        manifest = parse(data)
        parsed.append(manifest.id)
        return manifest

    monkeypatch.setattr(SnapshotManifest, "model_validate_json", counting_parse)
    for sequence in range(3001, 3006):
        store.save(f"state {sequence}", reason="checkpoint", sequence=sequence)
    assert parsed == [f"{sequence:08d}-checkpoint" for sequence in range(3001, 3006)]  # each new one, once
    kept = [f"{sequence:08d}-checkpoint" for sequence in range(3003, 3006)]
    parsed.clear()
    assert [m.id for m in SnapshotStore(tmp_path).list(reason="checkpoint")] == kept  # a new store
    assert parsed == kept
    assert len(store.list()) == 3003 and store.next_sequence() == 3006
    parsed.clear()
    assert len(store.list()) == 3003 and parsed == []  # unchanged files are not read again


def test_a_store_that_has_listed_sees_what_another_process_changed(place):
    store, cli = place.store(), place.store()  # say, `stream snapshots pin`
    first, second = store.save("a", reason="drift"), store.save("b", reason="drift")
    assert [m.pinned for m in store.list()] == [False, False]
    cli.pin(first.id)
    assert [m.id for m in store.list(pinned=True)] == [first.id]
    replaced = cli.save("c", reason="drift", sequence=second.sequence)
    assert [m.sha256 for m in store.list()] == [first.sha256, replaced.sha256]
    place.plant(store, first.entry, MANIFEST, b"{}")  # edited in place
    assert [m.id for m in store.list()] == [second.id]
    cli.delete(second.id)
    third = cli.save("d", reason="drift")
    assert [m.id for m in store.list()] == [third.id]


def test_listing_and_retention_go_by_sequence_past_eight_digits(place):
    store = place.store(keep_last=2)
    for sequence in (99_999_998, 99_999_999, 100_000_000):
        store.save(sequence, reason="checkpoint", sequence=sequence)
    assert [m.sequence for m in store.list()] == [99_999_999, 100_000_000]
    assert store.next_sequence() == 100_000_001


def test_a_manifest_that_disagrees_with_its_folder_name_is_not_listed(place):
    store = place.store()
    manifest = store.save("x", reason="drift")
    relabelled = manifest.model_copy(update={"reason": "checkpoint"})
    place.plant(store, manifest.entry, MANIFEST, relabelled.model_dump_json().encode())
    assert store.list() == store.list(reason="checkpoint") == store.list(reason="drift") == []
    assert store.list(reason="") == []


def test_a_write_the_disk_refuses_is_a_snapshot_write_error_and_leaves_nothing_behind(tmp_path, monkeypatch):
    store = SnapshotStore(tmp_path)
    store.save({"w": 1}, reason="checkpoint")

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(stream.storage, "_write_durably", full)
    with pytest.raises(
        SnapshotWriteError, match=r"cannot write snapshot 00000002-checkpoint .*No space left"
    ):
        store.save({"w": 2}, reason="checkpoint")
    assert [m.id for m in store.list()] == ["00000001-checkpoint"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000001-checkpoint"]


# -- trust: signed by default, bound to the partition, only the store's own names become paths ----


def _default_config(tmp_path: Path, **snapshots: object) -> Config:
    return Config.model_validate({"snapshots": {"directory": str(tmp_path / "snapshots"), **snapshots}})


def _forge(folder: Path, payload: bytes) -> None:
    """What anyone who can write the snapshot folder can do: a new payload, its hash updated."""
    (folder / PAYLOAD).write_bytes(payload)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["sha256"] = sha256(payload).hexdigest()
    (folder / MANIFEST).write_text(json.dumps(manifest))


def test_with_the_default_config_a_forged_payload_is_refused_and_never_unpickled(tmp_path):
    store = SnapshotStore.from_config(_default_config(tmp_path).snapshots, "events-0")
    manifest = store.save("genuine", reason="checkpoint", offsets={"events:0": 10})
    assert manifest.hmac_sha256 is not None
    tripwire = tmp_path / "unpickled"
    _forge(store.directory / manifest.id, pickle.dumps(_Tripwire(str(tripwire))))
    with pytest.raises(SnapshotError, match="wrong HMAC signature"):
        store.load(manifest.id)
    assert not tripwire.exists()
    SnapshotStore(store.directory).save("unsigned", reason="manual")  # a store built without the key
    with pytest.raises(SnapshotError, match="not signed"):
        store.load("00000002-manual")


def test_the_generated_key_is_kept_beside_the_store_for_its_owner_and_shared_through_the_file(
    tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="stream.snapshots")
    config = _default_config(tmp_path)
    manifest = SnapshotStore.from_config(config.snapshots, "events-0").save("state", reason="manual")
    key_file = tmp_path / "snapshots.key"
    assert config.snapshots.resolved_key_file() == key_file
    assert key_file.stat().st_mode & 0o777 == 0o600 and len(key_file.read_text().strip()) == 64
    assert [r.getMessage() for r in caplog.records if r.name == "stream.snapshots"] == [
        f"generated the snapshot signing key {key_file}; every instance sharing the snapshot directory "
        "must use this key (the same file, or its content as snapshots.hmac_key)"
    ]
    # Another instance sharing the directory (same key file) trusts it; one with another key does not.
    assert (
        SnapshotStore.from_config(_default_config(tmp_path).snapshots, "events-0").load(manifest.id)
        == "state"
    )
    other = _default_config(tmp_path, key_file=str(tmp_path / "elsewhere.key")).snapshots
    with pytest.raises(SnapshotError, match="signed with another key"):
        SnapshotStore.from_config(other, "events-0").load(manifest.id)


def test_a_key_file_others_may_read_or_an_empty_one_is_refused_naming_the_key(tmp_path):
    config = _default_config(tmp_path).snapshots
    check_signing_key(config)  # the check at start leaves a missing key file to the first store
    assert not config.resolved_key_file().exists()
    SnapshotStore.from_config(config)
    key_file = config.resolved_key_file()
    key_file.chmod(0o644)
    for attempt in (lambda: SnapshotStore.from_config(config), lambda: check_signing_key(config)):
        with pytest.raises(
            ConfigError,
            match=rf"snapshots\.key_file .* may be read or changed by others \(mode 644\): "
            rf"chmod 600 {key_file}$",
        ):
            attempt()
    key_file.write_text("\n")
    key_file.chmod(0o600)
    with pytest.raises(ConfigError, match=r"snapshots\.key_file .* is empty"):
        SnapshotStore.from_config(config)


def test_a_key_is_generated_beside_its_file_in_missing_folders_whatever_the_temporary_folder(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-temporary-folder"))
    key_file = tmp_path / "keys" / "deep" / "snapshots.key"
    config = _default_config(tmp_path, key_file=str(key_file)).snapshots
    manifest = SnapshotStore.from_config(config, "events-0").save("state", reason="manual")
    assert manifest.hmac_sha256 is not None
    assert list(key_file.parent.iterdir()) == [key_file]  # and no temporary file left there


def test_a_key_file_of_raw_bytes_is_a_usable_key(tmp_path):
    key_file = tmp_path / "raw.key"
    key_file.write_bytes(bytes(range(256)))  # not UTF-8
    key_file.chmod(0o600)
    config = _default_config(tmp_path, key_file=str(key_file)).snapshots
    manifest = SnapshotStore.from_config(config, "events-0").save("state", reason="manual")
    assert SnapshotStore.from_config(config, "events-0").load(manifest.id) == "state"


def test_signing_is_turned_off_only_explicitly_and_with_a_warning(tmp_path, caplog):
    config = _default_config(tmp_path, signing=False).snapshots
    for _ in range(2):
        manifest = SnapshotStore.from_config(config, "events-0").save("state", reason="manual")
    assert manifest.hmac_sha256 is None and not config.resolved_key_file().exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "snapshots.signing is false" in warnings[0]


def test_running_unsigned_is_warned_once_per_directory_naming_it(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    bucket = f"s3://bucket-{uuid.uuid4().hex[:8]}/snapshots"
    configs = [
        Config.model_validate({"snapshots": {"directory": directory, "signing": False}}).snapshots
        for directory in ("relative", bucket)
    ]
    for config in configs * 2:
        assert signing_key(config) is None
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"snapshots.signing is false: anyone who can write {directory} can run code in this service "
        "through a snapshot"
        for directory in (tmp_path / "relative", bucket)
    ]


@pytest.mark.parametrize(
    ("snapshots", "message"),
    [
        ({"hmac_key": ""}, r"snapshots\.hmac_key: .*must not be empty"),
        ({"hmac_key": "  "}, r"snapshots\.hmac_key: .*must not be empty"),
        ({"signing": False, "hmac_key": "k"}, "signing is false, so hmac_key and key_file would not be used"),
        ({"hmac_key": "k", "key_file": "k.key"}, "give hmac_key or key_file, not both"),
        ({"directory": "s", "key_file": "s/events-0/key"}, "key_file s/events-0/key is inside directory s"),
    ],
)
def test_key_settings_that_would_not_protect_are_refused(snapshots, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides={f"snapshots.{key}": value for key, value in snapshots.items()})


def test_a_signed_snapshot_copied_into_another_partitions_folder_is_refused(place):
    config = place.config(hmac_key="shared").snapshots
    theirs_store = SnapshotStore.from_config(config, "events-1")
    theirs = theirs_store.save("partition 1", reason="drift")
    ours = SnapshotStore.from_config(config, "events-0")
    place.copy(theirs_store, theirs.entry, ours)
    assert [m.id for m in ours.list()] == [theirs.id]  # listed: only loading checks signatures
    refused = re.escape(
        f"snapshot {theirs.id} has a wrong HMAC signature for events-0: changed, copied from another "
        "partition's folder, or signed with another key (instances sharing a snapshot directory must "
        "share the key)"
    )
    with pytest.raises(SnapshotError, match=f"^{refused}$"):
        ours.load(theirs.id)


def test_a_manifest_naming_another_folder_is_never_used_or_written_through(place):
    store = place.store("events-0")
    manifest = store.save("state", reason="manual")
    planted = manifest.model_copy(update={"id": "../victim"})
    place.plant(store, manifest.entry, MANIFEST, planted.model_dump_json().encode())
    refused = re.escape(
        f"snapshot {manifest.id!r} has a manifest that disagrees with its folder's name (copied or "
        "renamed); it will not be used"
    )
    for operation in (store.get, store.pin, store.load):
        with pytest.raises(SnapshotError, match=f"^{refused}$"):
            operation(manifest.id)
    assert place.folder().children() == ["events-0"]  # nothing was written beside the partition


def test_a_manifest_that_is_not_valid_is_an_error_naming_the_snapshot_and_what_is_wrong(place):
    store = place.store()
    manifest = store.save("state", reason="manual")
    place.plant(store, manifest.entry, MANIFEST, b'{"id": 5}')
    invalid = (
        rf"^snapshot {manifest.id!r} has an invalid manifest: "
        r"\d+ validation errors for SnapshotManifest\nid\n"
    )
    with pytest.raises(SnapshotError, match=invalid):
        store.get(manifest.id)
    assert place.store().list() == []  # left out of listings


def _gone_meanwhile(entry: str, file: str) -> bytes:
    """A read of a file another instance removed since it was listed or looked up."""
    raise FileNotFoundError(2, "No such file or directory")


def test_a_manifest_gone_between_its_stamp_and_its_read_is_left_out(place, monkeypatch):
    """Another instance removed the snapshot while this one listed: as if it had never been there."""
    place.store().save("state", reason="manual")
    lister = place.store()  # nothing read yet

    monkeypatch.setattr(lister.folder, "read", _gone_meanwhile)
    assert lister.list() == []


def test_a_snapshot_folder_that_is_a_link_is_neither_listed_nor_followed(tmp_path):
    store = SnapshotStore(tmp_path / "events-0")
    outside = SnapshotStore(tmp_path / "outside").save("theirs", reason="manual")
    (store.directory / outside.id).symlink_to(tmp_path / "outside" / outside.id)
    before = (tmp_path / "outside" / outside.id / MANIFEST).read_bytes()
    assert store.list() == []
    for operation in (store.get, store.pin, store.load, store.delete):
        with pytest.raises(SnapshotNotFound):
            operation(outside.id)
    assert (tmp_path / "outside" / outside.id / MANIFEST).read_bytes() == before


def test_removing_an_entry_that_is_a_link_never_touches_what_it_points_to(tmp_path: Path) -> None:
    folder, outside = open_folder(tmp_path / "events-0"), open_folder(tmp_path / "outside")
    outside.write_entry("00000001-manual", {PAYLOAD: b"theirs", MANIFEST: b"{}"})
    (tmp_path / "events-0" / "00000001-manual").symlink_to(tmp_path / "outside" / "00000001-manual")
    folder.remove_entry("00000001-manual", MANIFEST)
    assert outside.read("00000001-manual", MANIFEST) == b"{}"
    assert outside.read("00000001-manual", PAYLOAD) == b"theirs"


SCOPE_ROOT = Path(tempfile.mkdtemp(prefix="snapshot-scopes-"))
SCOPE_CONFIG = Config.model_validate({"snapshots": {"directory": str(SCOPE_ROOT / "snapshots")}}).snapshots
(SCOPE_ROOT / "snapshots").mkdir()
(SCOPE_ROOT / "snapshots" / "linked-0").symlink_to(SCOPE_ROOT)


@settings(deadline=None)
@example(scope="..")
@example(scope="../outside-0")
@example(scope="/tmp/x-0")
@example(scope="events-0/..")
@example(scope="events-0\n")
@example(scope="")
@example(scope="linked-0")
@given(scope=st.text(st.characters(categories=["L", "N", "P", "S", "Cc", "Zs"]), max_size=40))
def test_any_scope_that_is_not_a_partition_folder_is_not_found_and_nothing_is_created(scope):
    if SCOPE.fullmatch(scope) and scope != "linked-0":
        return
    before = sorted(str(path) for path in SCOPE_ROOT.rglob("*"))
    with pytest.raises(SnapshotNotFound, match="no partition"):
        SnapshotStore.from_config(SCOPE_CONFIG, scope)
    assert sorted(str(path) for path in SCOPE_ROOT.rglob("*")) == before


def test_partition_folders_are_listed_by_name_and_nothing_else(tmp_path):
    config = _default_config(tmp_path).snapshots
    for name in ("events-0", "events.v2-11", "<img src=x onerror=alert(1)>-0", "junk", ".tmp-0"):
        (tmp_path / "snapshots" / name).mkdir(parents=True)
    (tmp_path / "snapshots" / "linked-1").symlink_to(tmp_path)
    (tmp_path / "snapshots" / "file-2").write_text("")
    assert list_scopes(config) == [".tmp-0", "events-0", "events.v2-11"]


def test_partitions_in_s3_are_listed_by_name_like_folders(place):
    config = place.config(signing=False).snapshots
    for scope in ("events-0", "events.v2-11", "junk", "events-1X", "events-2 "):  # the last three: junk
        place.store(scope).save("x", reason="manual")
    assert list_scopes(config) == ["events-0", "events.v2-11"]


# -- fencing: only a partition's current owner writes its snapshots -------------------------------


def test_a_takeover_by_an_unnamed_owner_fences_off_the_earlier_one_all_the_same(place):
    earlier = place.store("events-0")
    earlier.take_ownership(0, "instance-a")
    place.store("events-0").take_ownership(0)  # a tool that takes the partition over, unnamed
    with pytest.raises(SnapshotFenced, match=r"^partition events-0 was taken over by another instance \("):
        earlier.save("a1", reason="checkpoint")


def test_a_fenced_owner_can_neither_write_nor_delete_and_its_late_writes_are_never_seen(place):
    zombie = place.store("events-0", hmac_key="k")
    zombie.take_ownership(0, "instance-a")
    base = zombie.save("a1", reason="checkpoint", offsets={"events:0": 10})
    # Instance b restores from a's checkpoint and takes the partition over.
    owner = place.store("events-0", hmac_key="k")
    owner.take_ownership(base.sequence, "instance-b")
    written = owner.save("b2", reason="checkpoint", sequence=2, offsets={"events:0": 20})
    # a, paused past its session, resumes: whatever it tries, b's history stays b's.
    since = Ownership.model_validate_json(owner.folder.read_own(OWNERSHIP)).since
    fenced = re.escape(
        f"partition events-0 was taken over by instance-b (epoch 2, since {since}); this instance "
        "(epoch 1) no longer writes its snapshots"
    )
    for attempt in (
        lambda: zombie.save("a2", reason="checkpoint", sequence=2, offsets={"events:0": 25}),
        lambda: zombie.save("a3", reason="drift", sequence=3),
        lambda: zombie.delete(base.id),
        lambda: zombie.discard_after(0),
    ):
        with pytest.raises(SnapshotFenced, match=f"^{fenced}$"):
            attempt()
    # Even a write that got past the check (paused between the check and the write) is not seen.
    zombie._check_owner = lambda: Ownership(epoch=1, ranges=[(1, 1)])  # as it saw it before the pause
    zombie.save("a2", reason="checkpoint", sequence=2, offsets={"events:0": 25})
    zombie.save("a3", reason="drift", sequence=3)
    for reader in (owner, place.store("events-0", hmac_key="k")):
        assert [(m.id, m.epoch) for m in reader.list()] == [(base.id, 1), (written.id, 2)]
        assert reader.load(written.id) == "b2" and reader.get(written.id).offsets == {"events:0": 20}
        with pytest.raises(SnapshotNotFound):
            reader.load("00000003-drift")
    # One the zombie is still writing (no manifest yet) is not the owner's to judge: it stays.
    place.plant(owner, "00000004-drift.e1", PAYLOAD, b"half written")
    owner.save("b3", reason="checkpoint", sequence=3)  # the owner's retention sweeps the leftovers
    assert sorted(place.store("events-0").folder.entries()) == [
        base.entry,
        written.entry,
        "00000003-checkpoint.e2",
        "00000004-drift.e1",
    ]


def test_an_owner_taken_over_right_after_its_check_never_discards_what_the_new_owner_wrote(
    place: Place,
) -> None:
    first = place.store("events-0")
    first.take_ownership(0, "a")
    base = first.save("a1", reason="checkpoint")
    second = place.store("events-0")
    second.take_ownership(base.sequence, "b")
    theirs = [second.save(n, reason="checkpoint") for n in range(2)]
    # b's takeover lands between a's check and its removals: a goes on as the owner it was.
    first._check_owner = lambda: Ownership(epoch=1, ranges=[(1, 1)])
    assert first.discard_after(base.sequence) == []
    expected = [(base.id, 1), *((m.id, 2) for m in theirs)]
    assert [(m.id, m.epoch) for m in place.store("events-0").list()] == expected


def test_discarding_clears_unreadable_entries_past_the_sequence_but_returns_only_snapshot_ids(
    place: Place,
) -> None:
    store = place.store()
    kept, later = store.save("kept", reason="checkpoint"), store.save("later", reason="checkpoint")
    place.plant(store, "00000003-checkpoint", PAYLOAD, pickle.dumps("unfinished"))  # no manifest
    place.plant(store, "00000004-drift", MANIFEST, b"{damaged")
    assert store.discard_after(kept.sequence) == [later.id]
    assert store.folder.entries() == [kept.entry]


def test_an_unreadable_ownership_file_is_an_error_naming_it(place):
    store = place.store("events-0")
    store.folder.write_own(OWNERSHIP, b"{not json")
    where = re.escape(f"{place.location}/events-0/{OWNERSHIP}")
    with pytest.raises(SnapshotError, match=rf"^{where} is not valid: "):
        store.list()


def test_a_new_owner_keeps_the_history_before_its_restore_point_and_pins_after_it(place):
    first = place.store("events-0")
    first.take_ownership(0, "a")
    history = [first.save(n, reason="drift") for n in range(3)]
    first.pin(history[2].id)
    later = first.save("after the commit", reason="checkpoint")
    second = place.store("events-0")
    assert second.discard_after(history[1].sequence) == [later.id]  # the pinned one stays
    second.take_ownership(history[1].sequence, "b")
    assert [m.id for m in second.list()] == [m.id for m in history]
    assert second.load(history[2].id) == 2 and second.list(pinned=True)[0].epoch == 1


def test_ownership_remembers_only_the_epochs_that_still_decide_something(place):
    store = place.store("events-0", keep_last=1)
    for restore in range(6):
        store.take_ownership(store.next_sequence() - 1, f"i{restore}")
        store.save(restore, reason="checkpoint")
    ownership = Ownership.model_validate_json(store.folder.read_own(OWNERSHIP))
    assert ownership.epoch == 6 and [epoch for epoch, _ in ownership.ranges] == [5, 6]
    assert [m.id for m in store.list()] == ["00000006-checkpoint"]
    # With nothing stored, no earlier epoch decides anything: the new one alone is remembered.
    store.delete("00000006-checkpoint")
    before = datetime.now(UTC)
    store.take_ownership(10, "i6")
    ownership = Ownership.model_validate_json(store.folder.read_own(OWNERSHIP))
    assert (ownership.epoch, ownership.instance, ownership.ranges) == (7, "i6", [(7, 11)])
    assert ownership.since is not None and before <= ownership.since <= datetime.now(UTC)


def test_an_unreachable_bucket_is_a_write_error_and_a_config_error_naming_the_key(s3_place):
    check_snapshot_bucket(s3_place.config(signing=False).snapshots)  # at the configured endpoint
    missing = Place(s3_place.location.replace("s3://", "s3://no-such-bucket-"), s3_place.endpoint_url)
    with pytest.raises(
        SnapshotWriteError, match=r"cannot write a snapshot \(manual\) in s3://no-such-bucket-.*NoSuchBucket"
    ):
        missing.store().save("x", reason="manual")
    with pytest.raises(ConfigError, match=r"snapshots.directory: cannot list s3://no-such-bucket-"):
        check_snapshot_bucket(missing.config(signing=False).snapshots)


def test_a_restore_below_an_earlier_owners_start_keeps_its_own_snapshots_visible(place):
    first = place.store("events-0")
    first.take_ownership(0, "a")
    for n in range(3):
        first.save(n, reason="checkpoint")
    second = place.store("events-0")
    second.take_ownership(3, "b")
    second.save(3, reason="checkpoint")
    # The checkpoint the commit names is damaged: the next owner falls back below b's start.
    third = place.store("events-0")
    third.take_ownership(2, "c")
    assert third.discard_after(2) == ["00000003-checkpoint", "00000004-checkpoint"]
    mine = third.save("c3", reason="drift")
    assert (mine.id, mine.epoch) == ("00000003-drift", 3)
    assert [m.id for m in place.store("events-0").list()] == [
        "00000001-checkpoint", "00000002-checkpoint", "00000003-drift"
    ]  # fmt: skip
    assert place.store("events-0").load(mine.id) == "c3"


def test_a_pin_outlives_a_restore_that_writes_the_snapshot_again(place):
    first = place.store("events-0", keep_concepts=1)
    first.take_ownership(0, "a")
    base = first.save("base", reason="checkpoint")
    pinned = first.pin(first.save("concept", reason="drift").id)
    # A restore from the checkpoint before it re-learns the same events and writes it again.
    second = place.store("events-0", keep_concepts=1)
    second.take_ownership(base.sequence, "b")
    again = second.save("concept", reason="drift", sequence=pinned.sequence)
    second.save("next concept", reason="drift")  # keep_concepts=1: only a pin keeps it now
    kept = {m.id: m for m in place.store("events-0").list()}
    assert again.pinned and kept[pinned.id].pinned and kept[pinned.id].epoch == 2


def test_an_ownership_the_storage_cannot_write_is_a_write_error_naming_the_folder(place, monkeypatch):
    store = place.store("events-0")

    def failing(name, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.folder, "write_own", failing)
    where = re.escape(f"{place.location}/events-0")
    with pytest.raises(SnapshotWriteError, match=rf"^cannot take the ownership of {where}: .*No space left"):
        store.take_ownership(0, "a")


def test_a_snapshot_deleted_while_it_is_read_is_not_found(place, monkeypatch):
    """Another instance (or the API's delete) removed it between the lookup and the read."""
    store = place.store()
    manifest = store.save("state", reason="manual")

    monkeypatch.setattr(store.folder, "read", _gone_meanwhile)
    missing = re.escape(f"no snapshot {manifest.id!r} in {place.location}")
    with pytest.raises(SnapshotNotFound, match=f"^{missing}$"):
        store.get(manifest.id)


def test_a_storage_that_fails_to_read_a_manifest_is_an_error_not_a_missing_snapshot(place, monkeypatch):
    store = place.store()
    store.save("state", reason="checkpoint")
    reader = place.store()

    def failing(entry, file):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(reader.folder, "read", failing)
    with pytest.raises(OSError, match="Input/output error"):
        reader.list()  # a restore retries instead of taking an older checkpoint for this one


def test_with_snapshots_in_s3_a_missing_key_file_is_refused_not_generated(s3_place, tmp_path):
    config = s3_place.config(key_file=str(tmp_path / "shared.key")).snapshots
    for attempt in (lambda: SnapshotStore.from_config(config, "events-0"), lambda: check_signing_key(config)):
        with pytest.raises(
            ConfigError,
            match=r"snapshots.key_file .*shared.key does not exist: with snapshots in S3 every instance must "
            r"read the same key; put it there on each machine, or give snapshots.hmac_key$",
        ):
            attempt()
    assert not (tmp_path / "shared.key").exists()


# -- storage: the folder interface on both backends, and what is S3's own ------------------------


def test_a_folder_answers_from_the_storage_not_from_its_last_listing(place):
    folder, other = place.folder("events-0"), place.folder("events-0")  # other: another process
    for entry in ("kept", "removed", "rewritten", "gone"):
        folder.write_entry(entry, {PAYLOAD: b"payload", MANIFEST: b"{}"})
    assert sorted(folder.entries()) == ["gone", "kept", "removed", "rewritten"]  # S3: stamps noted
    other.remove_entry("removed", MANIFEST)
    assert not folder.exists("removed", MANIFEST) and not folder.exists("removed", PAYLOAD)
    folder.remove_entry("removed", MANIFEST)  # removed meanwhile: not an error
    other.remove_entry("gone", MANIFEST)
    with pytest.raises(FileNotFoundError):
        folder.read("gone", PAYLOAD)
    assert folder.stamp("gone", PAYLOAD) is None and folder.size("gone", PAYLOAD) is None
    folder.replace("rewritten", PAYLOAD, b"a longer payload")
    assert folder.size("rewritten", PAYLOAD) == len(b"a longer payload")
    folder.remove_entry("kept", MANIFEST)
    assert folder.stamp("kept", MANIFEST) is None and folder.stamp("kept", PAYLOAD) is None
    assert not folder.is_entry_link("rewritten")
    assert other.entries() == ["rewritten"]


def test_a_store_is_made_with_its_missing_folders_and_names_its_folder_when_a_snapshot_is_not_there(place):
    store = place.store("team/events/events-0")  # locally: folders made, parents too
    assert store.save("x", reason="drift").id == "00000001-drift"
    with pytest.raises(
        SnapshotNotFound,
        match=rf"^no snapshot '00000009-drift' in {re.escape(place.location)}/team/events/events-0$",
    ):
        store.get("00000009-drift")


def test_an_s3_folder_lists_only_the_next_level_under_its_own_prefix(s3_place):
    bucket = s3_place.location.removeprefix("s3://").partition("/")[0]

    def folder(prefix: str) -> Folder:
        return open_folder(f"s3://{bucket}/{prefix}", S3Settings(endpoint_url=s3_place.endpoint_url))

    files = {PAYLOAD: b"payload", MANIFEST: b"{}"}
    folder("deep/snapshots/events-0").write_entry("00000001-drift", files)
    folder("deep/snapshots/events-0").write_own(OWNERSHIP, b"{}")  # a file of its own: no entry
    folder("deep/snapshots/events-1").write_entry("00000002-drift", files)
    folder("deep/snapshots-old/events-0").write_entry("00000003-drift", files)  # a neighbouring prefix
    folder("top-0").write_entry("00000004-drift", files)
    root = folder("")
    assert sorted(root.children()) == sorted(root.entries()) == ["deep", "top-0"]
    snapshots = folder("deep/snapshots")
    assert sorted(snapshots.children()) == sorted(snapshots.entries()) == ["events-0", "events-1"]
    partition = snapshots.child("events-0")
    assert partition.children() == partition.entries() == ["00000001-drift"]


@pytest.mark.parametrize(
    ("url", "location", "name"),
    [
        ("s3://bucket", "s3://bucket", ""),
        ("s3://bucket/", "s3://bucket", ""),
        ("s3://bucket/snapshots/", "s3://bucket/snapshots", "snapshots"),
        ("s3://bucket//team/a/X-snapshots-X/", "s3://bucket/team/a/X-snapshots-X", "X-snapshots-X"),
    ],
)
def test_an_s3_folder_is_named_by_its_url_without_slashes_around_the_prefix(
    url, location, name, monkeypatch, tmp_path
):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)  # AWS itself; nothing is asked of it here
    monkeypatch.setenv("HOME", str(tmp_path))
    folder = open_folder(url)
    assert (folder.location, folder.name) == (location, name)
    partition = folder.child("events-0")
    assert (partition.location, partition.name) == (f"{location}/events-0", "events-0")


def test_an_s3_url_without_a_bucket_is_refused_saying_how_to_write_it():
    config = Config.model_validate({"snapshots": {"directory": "s3:///snapshots", "signing": False}})
    with pytest.raises(
        ConfigError,
        match=r"snapshots.directory: cannot list s3:///snapshots: 's3:///snapshots' names no bucket: "
        r"write s3://bucket/prefix",
    ):
        check_snapshot_bucket(config.snapshots)


def test_every_s3_failure_is_an_os_error_naming_what_failed(s3_place, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")  # every request is refused
    folder = s3_place.folder("events-0")
    where, file = folder.location, f"{folder.location}/e/{PAYLOAD}"
    for attempt, named in (
        (folder.children, where),
        (folder.entries, where),
        (lambda: folder.stamp("e", PAYLOAD), file),
        (lambda: folder.exists("e", PAYLOAD), file),
        (lambda: folder.read("e", PAYLOAD), file),
        (lambda: folder.read_own(OWNERSHIP), f"{where}/{OWNERSHIP}"),
        (lambda: folder.replace("e", PAYLOAD, b"p"), f"cannot write {file}"),
        (lambda: folder.write_own(OWNERSHIP, b"{}"), f"cannot write {where}/{OWNERSHIP}"),
        (lambda: folder.write_entry("e", {PAYLOAD: b"p", MANIFEST: b"{}"}), f"cannot delete in {where}"),
        (lambda: folder.remove_entry("e", MANIFEST), f"cannot delete in {where}"),
        (lambda: folder.remove_entry("e"), where),
    ):
        with pytest.raises(OSError) as refused:
            attempt()
        assert type(refused.value) is OSError  # a failure, not a missing file
        assert str(refused.value).startswith(f"{named}: ")


class _Crash(Exception):
    """The process dying between two requests."""


def test_an_interrupted_s3_rewrite_or_removal_leaves_no_marker_vouching_for_its_entry(s3_place, monkeypatch):
    import obstore

    folder, reader = s3_place.folder("events-0"), s3_place.folder("events-0")
    folder.write_entry("e", {PAYLOAD: b"old", MANIFEST: b"old"})

    def crash(*args, **kwargs):
        raise _Crash

    with monkeypatch.context() as dying:  # dies before the new payload is written
        dying.setattr(obstore, "put", crash)
        with pytest.raises(_Crash):
            folder.write_entry("e", {PAYLOAD: b"new", MANIFEST: b"new"})
    assert not reader.exists("e", MANIFEST) and reader.read("e", PAYLOAD) == b"old"
    folder.write_entry("e", {PAYLOAD: b"new", MANIFEST: b"new"})
    with monkeypatch.context() as dying:  # dies after the first request of a removal
        dying.setattr(obstore, "list", crash)
        with pytest.raises(_Crash):
            folder.remove_entry("e", MANIFEST)
    assert not reader.exists("e", MANIFEST) and reader.read("e", PAYLOAD) == b"new"


def test_a_removal_interrupted_after_its_first_step_leaves_no_snapshot_behind(
    place: Place, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manifest goes first: what an interrupted removal leaves is an entry nobody lists."""
    import obstore

    store = place.store()
    manifest = store.save("state", reason="checkpoint")

    def crash(*args: object, **kwargs: object) -> None:
        raise _Crash

    with monkeypatch.context() as dying:  # dies at the removal's second step
        if place.endpoint_url is None:
            dying.setattr(shutil, "rmtree", crash)  # the folder, after its manifest
        else:
            dying.setattr(obstore, "list", crash)  # listing the keys, after deleting the manifest
        with pytest.raises(_Crash):
            store.delete(manifest.id)
    assert store.folder.exists(manifest.entry, PAYLOAD)  # interrupted indeed
    assert place.store().list() == []
    with pytest.raises(SnapshotNotFound):
        place.store().get(manifest.id)


class _NoSuchKey(BaseHTTPRequestHandler):
    """Answers every GET "no such key", and records where it went and how it was signed."""

    def do_GET(self) -> None:
        self.server.requests.append((self.command, self.path, self.headers.get("Authorization", "")))
        body = b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>NoSuchKey</Code></Error>"
        self.send_response(404)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def no_aws_environment(monkeypatch, tmp_path) -> Path:
    """No AWS settings in the environment and an empty home; the home's path."""
    for name in [name for name in os.environ if name.startswith("AWS_")]:
        monkeypatch.delenv(name)
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.fixture
def s3_recorder(no_aws_environment) -> Iterator[ThreadingHTTPServer]:
    """An S3 endpoint (``.endpoint``) that records the requests it gets (``.requests``)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NoSuchKey)
    server.requests = []
    server.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def _signed_request(recorder: ThreadingHTTPServer, settings: S3Settings) -> tuple[str, str, str]:
    """The request a folder's first read makes: method, path, and the Authorization header."""
    assert open_folder("s3://bucket/snapshots/events-0", settings).read_own(OWNERSHIP) is None
    [request] = recorder.requests
    return request


@pytest.mark.parametrize("endpoint_from", ["snapshots.s3.endpoint_url", "AWS_ENDPOINT_URL"])
def test_s3_requests_go_to_the_configured_endpoint_signed_for_the_configured_region(
    s3_recorder, monkeypatch, endpoint_from
):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDFROMENVIRONMENT")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    if endpoint_from == "AWS_ENDPOINT_URL":
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3_recorder.endpoint)
        settings = S3Settings(region="eu-west-3")
    else:
        settings = S3Settings(endpoint_url=s3_recorder.endpoint, region="eu-west-3")
    method, path, authorization = _signed_request(s3_recorder, settings)
    assert (method, path) == ("GET", f"/bucket/snapshots/events-0/{OWNERSHIP}")
    assert re.match(r"AWS4-HMAC-SHA256 Credential=AKIDFROMENVIRONMENT/\d{8}/eu-west-3/s3/", authorization)


_PROFILE = "aws_access_key_id = AKIDFROMPROFILE\naws_secret_access_key = secret\n"


@pytest.mark.parametrize(
    "profile", ["~/.aws/credentials", "~/.aws/config", "AWS_SHARED_CREDENTIALS_FILE", "AWS_PROFILE"]
)
def test_without_credentials_in_the_environment_an_aws_profile_signs_the_requests(
    s3_recorder, no_aws_environment, monkeypatch, tmp_path, profile
):
    if profile.startswith("~"):
        (no_aws_environment / profile.removeprefix("~/")).write_text(f"[default]\n{_PROFILE}")
    elif profile == "AWS_SHARED_CREDENTIALS_FILE":
        (tmp_path / "shared").write_text(f"[default]\n{_PROFILE}")
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "shared"))
    else:  # a named profile in a config file elsewhere
        (tmp_path / "config").write_text(f"[profile team]\n{_PROFILE}")
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
        monkeypatch.setenv("AWS_PROFILE", "team")
    _, _, authorization = _signed_request(s3_recorder, S3Settings(endpoint_url=s3_recorder.endpoint))
    assert authorization.startswith("AWS4-HMAC-SHA256 Credential=AKIDFROMPROFILE/")


def test_aws_profiles_are_read_only_when_the_environment_has_no_credentials_and_boto3_is_there(
    no_aws_environment, monkeypatch
):
    """The S3 client reads the environment's credentials (and refreshes web identity) itself."""
    from obstore.auth.boto3 import Boto3CredentialProvider

    assert stream.storage._profile_credentials() is None  # no profile at all
    (no_aws_environment / ".aws" / "credentials").write_text(f"[default]\n{_PROFILE}")
    assert isinstance(stream.storage._profile_credentials(), Boto3CredentialProvider)
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        with monkeypatch.context() as environment:
            environment.setenv(variable, "set")
            assert stream.storage._profile_credentials() is None
    monkeypatch.setitem(sys.modules, "boto3", None)  # not installed
    assert stream.storage._profile_credentials() is None
