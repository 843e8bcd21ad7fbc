from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest

from stream.errors import SnapshotError
from stream.snapshots import MANIFEST, PAYLOAD, SnapshotStore


class _Tripwire:
    """Unpickling this writes a file: proof that a payload was (or was not) unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path(self.path).touch, ())


def test_save_then_load_round_trips_and_records_the_manifest(tmp_path):
    store = SnapshotStore(tmp_path)
    manifest = store.save({"w": [1.5, 2.5]}, reason="drift", events_seen=42, offsets={"t:0": 10})
    assert store.load(manifest.id) == {"w": [1.5, 2.5]}
    stored = store.get(manifest.id)
    assert stored.events_seen == 42 and stored.offsets == {"t:0": 10}
    assert stored.sha256 == manifest.sha256 and len(stored.sha256) == 64
    assert stored.river_version and stored.python_version
    assert [m.id for m in store.list()] == [manifest.id]


def test_writes_leave_no_temporary_folders_and_an_interrupted_write_is_invisible(tmp_path):
    store = SnapshotStore(tmp_path)
    store.save("a", reason="manual")
    assert [p.name for p in tmp_path.iterdir()] == ["00000001-manual"]
    # A crash between writing and renaming leaves only a .tmp folder, which nobody lists or loads.
    (tmp_path / ".tmp-00000002-manual-x").mkdir()
    (tmp_path / ".tmp-00000002-manual-x" / PAYLOAD).write_bytes(b"partial")
    assert [m.id for m in store.list()] == ["00000001-manual"]
    assert store.latest_valid()[0].id == "00000001-manual"


def test_a_corrupted_payload_is_refused_and_never_unpickled(tmp_path):
    store = SnapshotStore(tmp_path)
    tripwire = tmp_path / "unpickled"
    manifest = store.save("genuine", reason="manual")
    (tmp_path / manifest.id / PAYLOAD).write_bytes(pickle.dumps(_Tripwire(str(tripwire))))
    with pytest.raises(SnapshotError, match="SHA-256 does not match"):
        store.load(manifest.id)
    assert not tripwire.exists()


def test_a_tampered_manifest_hash_still_fails_with_a_signing_key(tmp_path):
    """An attacker who rewrites both payload and hash is stopped by the HMAC signature."""
    store = SnapshotStore(tmp_path, hmac_key="secret")
    tripwire = tmp_path / "unpickled"
    manifest = store.save("genuine", reason="manual")
    evil = pickle.dumps(_Tripwire(str(tripwire)))
    (tmp_path / manifest.id / PAYLOAD).write_bytes(evil)
    forged = json.loads((tmp_path / manifest.id / MANIFEST).read_text())
    import hashlib

    forged["sha256"] = hashlib.sha256(evil).hexdigest()
    (tmp_path / manifest.id / MANIFEST).write_text(json.dumps(forged))
    with pytest.raises(SnapshotError, match="wrong HMAC signature"):
        store.load(manifest.id)
    assert not tripwire.exists()


def test_unsigned_snapshots_are_refused_when_a_key_is_set(tmp_path):
    SnapshotStore(tmp_path).save("unsigned", reason="manual")
    with pytest.raises(SnapshotError, match="not signed"):
        SnapshotStore(tmp_path, hmac_key="k").load("00000001-manual")


def test_a_snapshot_from_another_river_version_is_refused(tmp_path):
    store = SnapshotStore(tmp_path)
    tripwire = tmp_path / "unpickled"
    manifest = store.save(_Tripwire(str(tripwire)), reason="manual")
    tripwire.unlink(missing_ok=True)
    path = tmp_path / manifest.id / MANIFEST
    data = json.loads(path.read_text())
    data["river_version"] = "0.19.0"
    path.write_text(json.dumps(data))
    with pytest.raises(SnapshotError, match=r"River 0\.19\.0"):
        store.load(manifest.id)
    assert not tripwire.exists()


def test_latest_valid_skips_damaged_snapshots(tmp_path):
    store = SnapshotStore(tmp_path)
    store.save("old", reason="drift")
    newest = store.save("new", reason="drift")
    (tmp_path / newest.id / PAYLOAD).write_bytes(b"\x00")
    manifest, state = store.latest_valid()
    assert (manifest.id, state) == ("00000001-drift", "old")
    assert store.latest_valid(lambda m: m.events_seen > 0) is None


def test_retention_keeps_the_last_k_rotating_and_every_drift_manual_or_pinned(tmp_path):
    store = SnapshotStore(tmp_path, keep_last=2)
    store.save("p1", reason="periodic")
    store.pin("00000001-periodic")
    for n in range(2, 6):
        store.save(f"p{n}", reason="periodic")
    store.save("d", reason="drift")
    store.save("m", reason="manual")
    ids = [m.id for m in store.list()]
    assert ids == [
        "00000001-periodic",  # pinned
        "00000004-periodic",
        "00000005-periodic",
        "00000006-drift",
        "00000007-manual",
    ]


def test_saving_an_existing_sequence_again_is_idempotent(tmp_path):
    store = SnapshotStore(tmp_path)
    first = store.save("same", reason="checkpoint", sequence=5)
    again = store.save("same", reason="checkpoint", sequence=5)
    assert again.created_at == first.created_at  # the existing snapshot was kept as it was
    replaced = store.save("different", reason="checkpoint", sequence=5)
    assert store.load(replaced.id) == "different"


def test_pin_unpin_delete_and_unknown_ids(tmp_path):
    store = SnapshotStore(tmp_path)
    manifest = store.save("x", reason="warning")
    assert store.pin(manifest.id).pinned
    assert store.list(pinned=True)[0].id == manifest.id
    assert not store.pin(manifest.id, pinned=False).pinned
    store.delete(manifest.id)
    assert store.list() == []
    for bad in ("nope", "../etc", ".tmp-x"):
        with pytest.raises(SnapshotError, match="no snapshot"):
            store.get(bad)


def test_payload_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    SnapshotStore(tmp_path).save("x", reason="manual")
    assert len(synced) >= 3  # payload, manifest, directory


def test_the_signature_covers_the_offsets_a_restore_trusts(tmp_path):
    store = SnapshotStore(tmp_path, hmac_key="k")
    manifest = store.save("state", reason="checkpoint", offsets={"events:0": 100})
    path = tmp_path / manifest.id / MANIFEST
    data = json.loads(path.read_text())
    data["offsets"] = {"events:0": 5000}  # relabel an old snapshot as a newer one
    path.write_text(json.dumps(data))
    with pytest.raises(SnapshotError, match="wrong HMAC signature"):
        store.load(manifest.id)


def test_a_failed_write_leaves_no_temporary_folder(tmp_path, monkeypatch):
    store = SnapshotStore(tmp_path)

    def fail(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("stream.snapshots._write_durably", fail)
    with pytest.raises(OSError):
        store.save("x", reason="manual")
    assert list(tmp_path.iterdir()) == []
