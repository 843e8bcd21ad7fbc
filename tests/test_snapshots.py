from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import tempfile
from hashlib import sha256
from pathlib import Path
from typing import get_args

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import stream.snapshots
from stream.config import Config, load_config
from stream.errors import ConfigError, SnapshotError, SnapshotNotFound, SnapshotWriteError
from stream.snapshots import (
    MANIFEST,
    PAYLOAD,
    SCOPE,
    SNAPSHOT_ID,
    Reason,
    SnapshotManifest,
    SnapshotStore,
    list_scopes,
)


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


@pytest.mark.parametrize("hmac_key", [None, "secret"], ids=["unsigned", "signed"])
def test_a_corrupted_or_swapped_payload_is_refused_and_never_unpickled(tmp_path, hmac_key):
    """Signed too: the manifest is untouched, so only the payload's SHA-256 can catch the swap."""
    store = SnapshotStore(tmp_path, hmac_key=hmac_key)
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


def test_a_store_from_the_config_signs_with_the_configured_key_and_refuses_unsigned(tmp_path):
    config = Config.model_validate({"snapshots": {"directory": str(tmp_path), "hmac_key": "k"}})
    signed = SnapshotStore.from_config(config.snapshots, "events-0").save("s", reason="manual")
    assert signed.hmac_sha256 is not None
    SnapshotStore(tmp_path / "events-0").save("unsigned", reason="manual")
    with pytest.raises(SnapshotError, match="not signed"):
        SnapshotStore.from_config(config.snapshots, "events-0").load("00000002-manual")


def test_unsigned_snapshots_are_refused_when_a_key_is_set(tmp_path):
    SnapshotStore(tmp_path).save("unsigned", reason="manual")
    with pytest.raises(SnapshotError, match="not signed"):
        SnapshotStore(tmp_path, hmac_key="k").load("00000001-manual")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("river_version", "0.19.0", r"River 0\.19\.0"), ("python_version", "2.7", r"Python 2\.7")],
)
def test_a_snapshot_from_another_river_or_python_version_is_refused(tmp_path, field, value, message):
    store = SnapshotStore(tmp_path)
    tripwire = tmp_path / "unpickled"
    manifest = store.save(_Tripwire(str(tripwire)), reason="manual")
    tripwire.unlink(missing_ok=True)
    path = tmp_path / manifest.id / MANIFEST
    data = json.loads(path.read_text())
    data[field] = value
    path.write_text(json.dumps(data))
    with pytest.raises(SnapshotError, match=message):
        store.load(manifest.id)
    assert not tripwire.exists()


def test_retention_keeps_the_last_k_rotating_and_every_drift_manual_or_pinned(tmp_path):
    store = SnapshotStore(tmp_path, keep_last=2)
    store.save("p1", reason="periodic")
    store.pin("00000001-periodic")
    for n in range(2, 6):
        store.save(f"p{n}", reason="periodic")
    for n in range(4):  # more of each than keep_last, each followed by rotating ones
        store.save(f"d{n}", reason="drift")
        store.save(f"m{n}", reason="manual")
        store.save(f"p{n}", reason="periodic")
    ids = [m.id for m in store.list()]
    kept = (("drift", 6), ("manual", 7))  # sequences 6 + 3n and 7 + 3n
    drifts_and_manual = [f"{first + 3 * n:08d}-{reason}" for n in range(4) for reason, first in kept]
    assert ids == sorted(["00000001-periodic", *drifts_and_manual, "00000014-periodic", "00000017-periodic"])


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
    staging = Path(events[0][1]).parent
    assert events[2] == ("fsync", str(staging)) and events[3] == ("rename", final)
    assert events[4] == ("fsync", str(tmp_path))  # the rename itself made durable


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


def test_a_copied_snapshot_folder_is_not_listed_so_its_id_never_leads_elsewhere(tmp_path):
    store = SnapshotStore(tmp_path)
    manifest = store.save("x", reason="drift")
    shutil.copytree(tmp_path / manifest.id, tmp_path / "00000007-drift")  # same manifest, other folder
    shutil.copytree(tmp_path / manifest.id, tmp_path / "backup")
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
    store = SnapshotStore(tmp_path, keep_last=3)
    _write_copies(store, store.save("concept", reason="drift"), range(2, 3001), "drift")
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


def test_a_store_that_has_listed_sees_what_another_process_changed(tmp_path):
    store, cli = SnapshotStore(tmp_path), SnapshotStore(tmp_path)  # say, `stream snapshots pin`
    first, second = store.save("a", reason="drift"), store.save("b", reason="drift")
    assert [m.pinned for m in store.list()] == [False, False]
    cli.pin(first.id)
    assert [m.id for m in store.list(pinned=True)] == [first.id]
    replaced = cli.save("c", reason="drift", sequence=second.sequence)
    assert [m.sha256 for m in store.list()] == [first.sha256, replaced.sha256]
    (tmp_path / first.id / MANIFEST).write_text("{}")  # edited in place
    assert [m.id for m in store.list()] == [second.id]
    cli.delete(second.id)
    third = cli.save("d", reason="drift")
    assert [m.id for m in store.list()] == [third.id]


def test_listing_and_retention_go_by_sequence_past_eight_digits(tmp_path):
    store = SnapshotStore(tmp_path, keep_last=2)
    for sequence in (99_999_998, 99_999_999, 100_000_000):
        store.save(sequence, reason="checkpoint", sequence=sequence)
    assert [m.sequence for m in store.list()] == [99_999_999, 100_000_000]
    assert store.next_sequence() == 100_000_001


def test_a_manifest_that_disagrees_with_its_folder_name_is_not_listed(tmp_path):
    store = SnapshotStore(tmp_path)
    manifest = store.save("x", reason="drift")
    relabelled = manifest.model_copy(update={"reason": "checkpoint"})
    (tmp_path / manifest.id / MANIFEST).write_text(relabelled.model_dump_json())
    assert store.list() == store.list(reason="checkpoint") == store.list(reason="drift") == []
    assert store.list(reason="") == []


def test_a_write_the_disk_refuses_is_a_snapshot_write_error_and_leaves_nothing_behind(tmp_path, monkeypatch):
    store = SnapshotStore(tmp_path)
    store.save({"w": 1}, reason="checkpoint")

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(stream.snapshots, "_write_durably", full)
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


def test_the_generated_key_is_kept_beside_the_store_for_its_owner_and_shared_through_the_file(tmp_path):
    config = _default_config(tmp_path)
    manifest = SnapshotStore.from_config(config.snapshots, "events-0").save("state", reason="manual")
    key_file = tmp_path / "snapshots.key"
    assert config.snapshots.resolved_key_file() == key_file
    assert key_file.stat().st_mode & 0o777 == 0o600 and len(key_file.read_text().strip()) == 64
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
    SnapshotStore.from_config(config)
    key_file = config.resolved_key_file()
    key_file.chmod(0o644)
    with pytest.raises(
        ConfigError, match=r"snapshots\.key_file .* may be read or changed by others .*chmod 600"
    ):
        SnapshotStore.from_config(config)
    key_file.write_text("\n")
    key_file.chmod(0o600)
    with pytest.raises(ConfigError, match=r"snapshots\.key_file .* is empty"):
        SnapshotStore.from_config(config)


def test_signing_is_turned_off_only_explicitly_and_with_a_warning(tmp_path, caplog):
    config = _default_config(tmp_path, signing=False).snapshots
    for _ in range(2):
        manifest = SnapshotStore.from_config(config, "events-0").save("state", reason="manual")
    assert manifest.hmac_sha256 is None and not config.resolved_key_file().exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "snapshots.signing is false" in warnings[0]


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


def test_a_signed_snapshot_copied_into_another_partitions_folder_is_refused(tmp_path):
    config = _default_config(tmp_path).snapshots
    theirs = SnapshotStore.from_config(config, "events-1").save("partition 1", reason="drift")
    ours = SnapshotStore.from_config(config, "events-0")
    shutil.copytree(tmp_path / "snapshots" / "events-1" / theirs.id, ours.directory / theirs.id)
    assert [m.id for m in ours.list()] == [theirs.id]  # listed: only loading checks signatures
    with pytest.raises(
        SnapshotError, match=r"wrong HMAC signature for events-0: .*copied from another partition"
    ):
        ours.load(theirs.id)


def test_a_manifest_naming_another_folder_is_never_used_or_written_through(tmp_path):
    store = SnapshotStore(tmp_path / "events-0")
    victim = tmp_path / "victim"
    victim.mkdir()
    manifest = store.save("state", reason="manual")
    planted = manifest.model_copy(update={"id": "../victim"})
    (store.directory / manifest.id / MANIFEST).write_text(planted.model_dump_json())
    for operation in (store.get, store.pin, store.load):
        with pytest.raises(SnapshotError, match="disagrees with its folder's name"):
            operation(manifest.id)
    assert list(victim.iterdir()) == []


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
