"""The processing guarantee (stream/checkpoint.py) on an in-memory Kafka that dies at any step.

Each case kills the service at one client call or snapshot file operation, starts a new one on
the same broker and snapshot folder, and lets it finish. Exactly-once: what a read_committed
reader sees is every event's prediction once, byte for byte what an uninterrupted run predicts,
and the final model equals that run's. At-least-once: predictions may repeat, but never differ,
and the model is the same. The broker tests (tests/test_service.py) prove the same end to end.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import tests.slow_models
from connectors.base import Message, TopicPartition
from stream.checkpoint import KEEP_ALIVE_SECONDS, PartitionId, restore_point
from stream.config import Config
from stream.errors import NotOwnedError
from stream.events import encode_record, validate_event
from stream.prequential import Engine
from stream.service import Service
from stream.snapshots import OWNERSHIP, Ownership, SnapshotStore
from tests.fake_connector import FakeKafka, FakeSource, Killed, Record
from tests.kafka_helpers import drifting_events
from tests.model_equality import canonical_pickle
from tests.test_delayed_service import _check_exactly_once_for as check_exactly_once_for
from tests.test_delayed_service import _config as delayed_config
from tests.test_delayed_service import delayed_stream

EVENTS = drifting_events(1_200, seed=11)  # three concepts: at least one drift, several checkpoints
# Where a crash can fall: every client call of the protocol and every file operation of a
# snapshot (payload and manifest writes alternate; a rename puts a snapshot in place).
EXACTLY_ONCE_STEPS = [
    ("poll", 3), ("send", 1), ("send", 567), ("send", 1_199), ("begin", 2), ("begin", 9),
    ("transaction.commit", 1), ("transaction.commit", 4), ("transaction.committed", 2),
    ("transaction.committed", 5), ("snapshot.write", 1), ("snapshot.write", 2), ("snapshot.write", 5),
    ("snapshot.rename", 1), ("snapshot.rename", 3),
]  # fmt: skip
AT_LEAST_ONCE_STEPS = [
    ("send", 600), ("flush", 2), ("flushed", 3), ("source.commit", 1), ("source.commit", 4),
    ("snapshot.write", 3), ("snapshot.rename", 2),
]  # fmt: skip


def _config(
    tmp_path: Path, guarantee: str, service: dict | None = None, keep_last: int = 10, **drift: object
) -> Config:
    return Config.model_validate({
        "model": {"task": "binary", "pipeline": ["tree.HoeffdingTreeClassifier"]},
        "drift": {"policy": "best", **drift},
        "kafka": {"input_topic": "events", "predictions_topic": "predictions", "dead_letter_topic": "dead"},
        "snapshots": {"directory": str(tmp_path / "snapshots"), "keep_last": keep_last},
        "service": {"guarantee": guarantee, "checkpoint_every_events": 400, "commit_every_seconds": 0.001,
                    **(service or {})},
    })  # fmt: skip


def _reference(config: Config) -> tuple[list[bytes], Engine]:
    """An uninterrupted run of the same model (computed once per model, drift and retention
    configuration)."""
    return _reference_of(
        config.model_dump_json(include={"model", "drift", "metrics"}), config.snapshots.keep_last
    )


@functools.cache
def _reference_of(config_json: str, keep_last: int) -> tuple[list[bytes], Engine]:
    config = Config.model_validate_json(config_json)
    engine = Engine(config, SnapshotStore(tempfile.mkdtemp(prefix="reference-"), keep_last))
    return [encode_record(engine.process(validate_event(e, "binary"))) for e in EVENTS], engine


def _run(kafka: FakeKafka, config: Config) -> Service:
    service = Service(config, kafka.connector(), "test")
    kafka.on_idle = service.request_stop
    service.run()
    return service


def _crash_then_finish(config: Config, step: str, at: int, file_steps: list) -> FakeKafka:
    kafka = FakeKafka()
    file_steps.append(kafka)
    kafka.append("events", [json.dumps(event).encode() for event in EVENTS])
    kafka.plan.step, kafka.plan.at = step, at
    with pytest.raises(Killed):
        _run(kafka, config)
    kafka.plan.step = ""  # the restarted service runs to the end
    _run(kafka, config)
    return kafka


def _final_model(config: Config):
    store = SnapshotStore.from_config(config.snapshots, PartitionId("events", 0).scope)
    manifest, state = restore_point(store, {PartitionId("events", 0).key: 10**12})
    assert manifest.reason == "shutdown"
    return state


def _decisions(state) -> list[tuple]:
    """The policy's decisions, with snapshot ids reduced to their reason (the service's own
    checkpoint snapshots take sequence numbers that a bare engine does not)."""

    def name(candidate: str) -> str:
        return candidate.split("-")[-1] if candidate.startswith("snapshot:") else candidate

    return [
        (d["event"], d["action"], name(d["winner"]), {name(c): loss for c, loss in d["candidates"].items()})
        for d in state.decisions
    ]


# ADWIN, and a detector with a warning zone: warning snapshots and a challenger; few kept, so
# that snapshots a crashed run left behind would crowd out the ones its restart writes again.
DETECTORS = ["drift.ADWIN", "drift.binary.EDDM"]


@pytest.mark.parametrize("detector", DETECTORS)
@pytest.mark.parametrize(("step", "at"), EXACTLY_ONCE_STEPS)
def test_exactly_once_survives_a_crash_at_every_protocol_step(tmp_path, file_steps, step, at, detector):
    config = _config(tmp_path, "exactly_once", keep_last=2, detector=detector)
    expected, reference = _reference(config)
    kafka = _crash_then_finish(config, step, at, file_steps)
    assert kafka.values("predictions") == expected
    state = _final_model(config)
    assert canonical_pickle(state.model) == canonical_pickle(reference.state.model)
    assert _decisions(state) == _decisions(reference.state) and state.drifts >= 1


@pytest.mark.parametrize("detector", DETECTORS)
@pytest.mark.parametrize(("step", "at"), AT_LEAST_ONCE_STEPS)
def test_at_least_once_repeats_only_identical_predictions_after_a_crash(
    tmp_path, file_steps, step, at, detector
):
    config = _config(tmp_path, "at_least_once", keep_last=2, detector=detector)
    expected, reference = _reference(config)
    kafka = _crash_then_finish(config, step, at, file_steps)
    by_id = {json.loads(line)["id"]: line for line in expected}
    published = kafka.values("predictions")
    assert {json.loads(line)["id"] for line in published} == by_id.keys()
    assert all(by_id[json.loads(line)["id"]] == line for line in published)
    assert canonical_pickle(_final_model(config).model) == canonical_pickle(reference.state.model)


def test_a_crash_point_that_is_never_reached_fails_the_run(tmp_path, file_steps):
    with pytest.raises(pytest.fail.Exception):
        _crash_then_finish(_config(tmp_path, "exactly_once"), "send", 10**9, file_steps)


def test_a_restart_applies_the_new_drift_configuration_to_the_restored_state(tmp_path):
    kafka = FakeKafka()
    kafka.append("events", [json.dumps(event).encode() for event in EVENTS[:600]])
    _run(kafka, _config(tmp_path, "exactly_once", buffer_size=200, candidates=5))
    kafka.append("events", [json.dumps(event).encode() for event in EVENTS[600:]])
    changed = _config(tmp_path, "exactly_once", policy="reset", buffer_size=50, candidates=2)
    _run(kafka, changed)

    state = _final_model(changed)
    assert state.monitor.buffer.maxlen == 50 and state.recent_snapshots.maxlen == 2
    after_restart = [d for d in state.decisions if d["event"] > 600]
    assert after_restart, "the second run decided no drift: the test shows nothing"
    assert all(d["policy"] == "reset" and set(d["candidates"]) == {"fresh"} for d in after_restart)
    assert all(d["buffer_size"] == 50 for d in after_restart)


def test_the_service_dead_letters_events_over_max_event_bytes_with_the_reason(tmp_path):
    kafka = FakeKafka()
    small = json.dumps(EVENTS[0]).encode()
    large = json.dumps({**EVENTS[1], "id": "large", "x": {**EVENTS[1]["x"], "pad": "p" * 400}}).encode()
    kafka.append("events", [small, large, small])
    config = _config(tmp_path, "exactly_once", service={"max_event_bytes": 300})
    _run(kafka, config)
    (letter,) = [json.loads(value) for value in kafka.values("dead")]
    assert letter["error"] == f"event of {len(large)} bytes exceeds service.max_event_bytes=300"
    assert letter["source"]["offset"] == 1 and len(kafka.values("predictions")) == 2


def test_periodic_checkpoints_never_compete_as_rollback_candidates(tmp_path):
    kafka = FakeKafka()
    kafka.append("events", [json.dumps(event).encode() for event in EVENTS])
    config = _config(tmp_path, "exactly_once")
    service = _run(kafka, config)
    # Every 400 events, and at the end; each commit is one transaction.
    store = SnapshotStore.from_config(config.snapshots, "events-0")
    assert [m.offsets["events:0"] for m in store.list(reason="checkpoint")] == [400, 800, 1_200]
    assert service.counters.checkpoints == len(EVENTS) // 400 + 1
    assert service.counters.commits == kafka.plan.calls["transaction.committed"] > 4
    assert service.counters.predictions == len(EVENTS) == len(kafka.values("predictions"))
    state = _final_model(config)
    store = SnapshotStore.from_config(config.snapshots, "events-0")
    assert store.list(reason="checkpoint"), "no checkpoint was taken: the test shows nothing"
    candidates = {name for decision in state.decisions for name in decision["candidates"]}
    assert any(name.startswith("snapshot:") for name in candidates)
    assert all(name.split("-")[-1] in ("warning", "drift", "manual") for name in candidates if ":" in name)


def test_a_snapshot_whose_state_disagrees_with_its_manifest_is_not_restored(tmp_path, caplog):
    from types import SimpleNamespace as State

    store = SnapshotStore(tmp_path)
    store.save(State(offsets={"events:0": 100}), reason="checkpoint", offsets={"events:0": 100})
    # The manifest says 200 but the state has learned up to 150: restoring it would skip 50 events.
    store.save(State(offsets={"events:0": 150}), reason="checkpoint", offsets={"events:0": 200})
    manifest, state = restore_point(store, {"events:0": 200})
    assert manifest.id == "00000001-checkpoint" and state.offsets == {"events:0": 100}
    assert (
        "snapshot 00000002-checkpoint: its state and manifest disagree on the offset; skipped"
        in caplog.messages
    )
    # A state with no offsets at all (not a learner's) is skipped the same way.
    store.save(State(), reason="checkpoint", offsets={"events:0": 200})
    assert restore_point(store, {"events:0": 200})[0].id == "00000001-checkpoint"
    assert (
        "snapshot 00000003-checkpoint: its state and manifest disagree on the offset; skipped"
        in caplog.messages
    )


def test_a_manual_rollback_is_checkpointed_at_once_and_survives_a_crash(tmp_path, caplog):
    kafka = FakeKafka()
    # 800 events: checkpointed at 800, so only the rollback itself asks for the next checkpoint.
    kafka.append("events", [json.dumps(event).encode() for event in EVENTS[:800]])
    config = _config(tmp_path, "exactly_once")
    service = Service(config, kafka.connector(), "test")
    store = SnapshotStore.from_config(config.snapshots, "events-0")
    rolled: list[str] = []
    caplog.set_level("INFO", logger="stream.checkpoint")

    def roll_back_then_die() -> None:
        with pytest.raises(
            NotOwnedError, match=r"^this instance does not own 'events-1'; it owns \['events-0'\]$"
        ):
            service.rollback("events-1", "00000001-drift")
        target = store.list(reason="drift")[0].id
        manifest = service.rollback("events-0", target)
        rolled.extend([target, manifest.id])
        raise Killed("right after the rollback")

    kafka.on_idle = roll_back_then_die
    with pytest.raises(Killed):
        service.run()
    target, rollback_snapshot = rolled
    # The restart finds the rolled-back model, not the one the events had taught.
    restarted = Service(config, kafka.connector(), "test")
    restored: list = []

    def look_then_stop() -> None:
        restored.append(restarted.owned("events-0").engine.state)
        restarted.request_stop()

    kafka.on_idle = look_then_stop
    restarted.run()
    assert canonical_pickle(restored[0].model) == canonical_pickle(store.load(target).model)
    assert restored[0].rollbacks == 1 and restored[0].model_version == 2
    assert store.get(rollback_snapshot).note == f"manual rollback to {target}"
    assert f"rolled events:0 back to {target}" in caplog.messages
    # What it predicts next says which model made the prediction.
    kafka.append("events", [json.dumps(event).encode() for event in EVENTS[800:]])
    _run(kafka, config)
    predictions = [json.loads(value) for value in kafka.values("predictions")]
    assert {p["model_version"] for p in predictions[:800]} == {1}
    assert predictions[800]["model_version"] == 2


def test_the_restore_point_is_the_named_checkpoint_else_the_latest_valid_snapshot_not_beyond_the_commit(
    tmp_path, caplog
):
    from types import SimpleNamespace as State

    store = SnapshotStore(tmp_path)

    def save(offset: int, reason: str = "checkpoint") -> str:
        return store.save(State(offsets={"events:0": offset}), reason=reason, offsets={"events:0": offset}).id

    older, drift, named, beyond = save(100), save(150, "drift"), save(200), save(300)
    save(120, "manual")  # newer by sequence, older by offset
    store.save(State(offsets={"events:1": 250}), reason="checkpoint", offsets={"events:1": 250})

    assert restore_point(store, {"events:0": 200}, checkpoint_id=named)[0].id == named
    # Without a name: the highest offset not beyond the commit (never `beyond`, never another partition's).
    assert restore_point(store, {"events:0": 299})[0].id == named
    # The named one damaged: the next best, and the log says why.
    (tmp_path / named / "state.pkl").write_bytes(b"damaged")
    manifest, state = restore_point(store, {"events:0": 200}, checkpoint_id=named)
    assert (manifest.id, state.offsets) == (drift, {"events:0": 150})
    assert any(
        m.startswith(f"cannot restore from snapshot {named}: snapshot {named} is corrupted")
        for m in caplog.messages
    )
    assert restore_point(store, {"events:0": 120})[0].id.endswith("manual")
    assert restore_point(store, {"events:0": 110})[0].id == older
    assert restore_point(store, {"events:0": 300})[0].id == beyond
    assert restore_point(store, {"events:0": 99}) is None


def test_a_first_start_restores_a_new_model_without_looking_for_a_snapshot(tmp_path, caplog):
    """No commit names a checkpoint: none is looked up by name, nor warned about as missing."""
    kafka = FakeKafka()
    kafka.append("events", [json.dumps(event).encode() for event in EVENTS[:10]])
    caplog.set_level("DEBUG", logger="stream.checkpoint")
    config = _config(tmp_path, "exactly_once")
    _run(kafka, config)
    assert (
        "restored events:0 from a new model at offset 0; re-learned 0 events up to the committed offset 0"
        in caplog.messages
    )
    # The restore took the partition's first ownership epoch, in this instance's name.
    assert "events:0: snapshot ownership epoch 1" in caplog.messages
    owner_file = Path(config.snapshots.directory, "events-0", OWNERSHIP)
    ownership = Ownership.model_validate_json(owner_file.read_bytes())
    assert (ownership.epoch, ownership.instance) == (1, "test")
    checkpoint_records = [record for record in caplog.records if record.name == "stream.checkpoint"]
    assert [record.getMessage() for record in checkpoint_records if record.levelno > logging.INFO] == []


def test_a_partition_started_over_without_a_commit_keeps_every_snapshot_it_finds(tmp_path):
    """A group whose commits are gone (a new group id, expired offsets) starts a new model; the
    snapshots of the earlier history stay listed, the latest too: the new owner fences none off."""
    config = _config(tmp_path, "exactly_once")
    first = FakeKafka()
    first.append("events", [json.dumps(event).encode() for event in EVENTS[:300]])
    _run(first, config)
    earlier = [m.id for m in SnapshotStore.from_config(config.snapshots, "events-0").list()]
    assert earlier, "the first run left no snapshot: the test shows nothing"
    again = FakeKafka()
    again.append("events", [json.dumps(event).encode() for event in EVENTS[:300]])
    _run(again, config)
    assert again.values("predictions") == first.values("predictions")  # a new model, all over again
    listed = [m.id for m in SnapshotStore.from_config(config.snapshots, "events-0").list()]
    assert set(earlier) < set(listed)


def test_each_partition_is_restored_from_the_checkpoint_its_commit_names_and_says_so(tmp_path, caplog):
    kafka = FakeKafka(partitions=2)
    kafka.append("events", [json.dumps(event).encode() for event in EVENTS[:400]])
    kafka.log_start[("events", 1)] = 50  # retention took the first 50 records of partition 1
    config = _config(tmp_path, "exactly_once")
    caplog.set_level("INFO", logger="stream.checkpoint")
    _run(kafka, config)
    assert {
        "restored events:0 from a new model at offset 0; re-learned 0 events up to the committed offset 0",
        "restored events:1 from a new model at offset 50; re-learned 0 events up to the committed offset 50",
    } <= set(caplog.messages)
    assert len(kafka.values("predictions")) == 400 - 50

    # Die mid-way through more events, after some commits that named no new checkpoint.
    kafka.append("events", [json.dumps(event).encode() for event in EVENTS[400:1_000]])
    kafka.plan.step, kafka.plan.at = "send", 550
    with pytest.raises(Killed):
        _run(kafka, config)
    kafka.plan.step = ""
    committed = {p: kafka.group_offsets[("stream", ("events", p))] for p in (0, 1)}
    stores = {p: SnapshotStore.from_config(config.snapshots, f"events-{p}") for p in (0, 1)}
    # A snapshot at the same offset as the named checkpoint, newer, of another model: the commit's
    # name decides.
    offset, named = committed[0]
    impostor = Engine(config, SnapshotStore(tempfile.mkdtemp())).state
    impostor.offsets["events:0"] = stores[0].get(named).offsets["events:0"]
    stores[0].save(impostor, reason="manual", offsets=dict(impostor.offsets))

    expected = {
        partition: (named, stores[partition].get(named).offsets[f"events:{partition}"], offset)
        for partition, (offset, named) in committed.items()
    }
    caplog.clear()
    # No periodic checkpoint until it stops: a partition that re-learned nothing goes on naming
    # the restored checkpoint; one that re-learned is checkpointed at the first tick after its
    # restore (its first output committed first), so that the next restore (a crash loop, say)
    # starts there.
    unhurried = _config(tmp_path, "exactly_once", service={"checkpoint_every_events": 10**6})
    restarted = Service(unhurried, kafka.connector(), "test")
    at_idle: list = []

    def look_then_stop() -> None:
        at_idle.append({p: kafka.group_offsets[("stream", ("events", p))] for p in (0, 1)})
        at_idle.append(restarted.owned("events-0").since_checkpoint)
        restarted.request_stop()

    kafka.on_idle = look_then_stop
    restarted.run()
    for partition, (named, start, offset) in expected.items():
        assert (
            f"restored events:{partition} from snapshot {named} at offset {start}; "
            f"re-learned {offset - start} events up to the committed offset {offset}"
        ) in caplog.messages
        now_offset, now_named = at_idle[0][partition]
        assert now_offset > offset
        checkpointed = stores[partition].get(now_named).offsets[f"events:{partition}"]
        if offset > start:
            assert now_named != named and offset <= checkpointed < now_offset
        else:
            assert now_named == named
    assert {offset > start for _, start, offset in expected.values()} == {True, False}
    # Counted from the restore or the checkpoint after it: the events processed since, not those
    # re-learned.
    now_offset, now_named = at_idle[0][0]
    checkpointed = stores[0].get(now_named).offsets["events:0"]
    assert at_idle[1] == now_offset - max(committed[0][0], checkpointed)
    assert restarted.counters.relearned == sum(offset - start for _, start, offset in expected.values()) > 0


def _check_each_partition_as_if_uninterrupted(
    kafka: FakeKafka, config: Config, count: int, exactly_once: bool = True
) -> None:
    """Each of the first ``count`` EVENTS (spread over two partitions in turn) is predicted, once
    with ``exactly_once``, as an uninterrupted run of its partition alone predicts it."""
    published = [json.loads(value) for value in kafka.values("predictions")]
    ids = [p["id"] for p in published]
    if exactly_once:
        assert sorted(ids) == sorted(e["id"] for e in EVENTS[:count])
    else:
        assert set(ids) == {e["id"] for e in EVENTS[:count]}
    for partition in (0, 1):
        engine = Engine(config, SnapshotStore(tempfile.mkdtemp()))
        events = EVENTS[partition:count:2]
        expected = [encode_record(engine.process(validate_event(e, "binary"))) for e in events]
        mine = [encode_record(p) for p in published if p["id"] in {e["id"] for e in events}]
        if exactly_once:
            assert mine == expected
        else:  # repeated, but never different
            by_id = {e["id"]: record for e, record in zip(events, expected, strict=True)}
            assert all(record == by_id[json.loads(record)["id"]] for record in mine)


def _changing_the_group_at_batches(
    changes: dict[int, list[TopicPartition]],
) -> Callable[[FakeSource, list[Message]], None]:
    """An ``on_poll`` hook: the group gives the member ``changes[n]`` during the poll that fetched
    the n-th batch of records, which the service then drops. ``changes`` is emptied as it goes."""
    batches = 0

    def on_poll(source: FakeSource, messages: list[Message]) -> None:
        nonlocal batches
        if messages:
            batches += 1
            if batches in changes:
                source.rebalance(changes.pop(batches))

    return on_poll


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
def test_a_batch_polled_with_a_rebalance_is_fetched_again_from_the_partitions_kept(tmp_path, guarantee):
    """Real clients run the rebalance callbacks inside the poll that fetched a batch: the service
    drops the batch, and only seeking each partition back to its next offset brings its records
    back (else they are never predicted nor learned)."""
    kafka = FakeKafka(partitions=2)
    kafka.interleave = 10  # every batch holds records of both partitions
    kafka.append("events", [json.dumps(event).encode() for event in EVENTS[:900]])
    config = _config(tmp_path, guarantee)
    service = Service(config, kafka.connector(), "test")
    both = [("events", 0), ("events", 1)]
    changes = {3: both[:1], 6: both}  # partition 1 taken away, then given back
    kafka.on_poll = _changing_the_group_at_batches(changes)
    kafka.on_idle = service.request_stop
    service.run()
    assert changes == {}, "the group did not change as planned: the test shows nothing"
    _check_each_partition_as_if_uninterrupted(kafka, config, 900, exactly_once=guarantee == "exactly_once")


def test_a_restore_that_re_learned_is_checkpointed_and_committed_at_the_next_tick(tmp_path):
    """A crash after such a restore's next tick re-learns none of what it re-learned; the restore
    counts as one more checkpoint."""
    kafka = FakeKafka()
    kafka.append("events", [json.dumps(event).encode() for event in EVENTS[:300]])
    # Checkpointed once (at the first commit due after 200 events), committed up to 300 or just
    # before: the partition given back re-learns the events in between.
    config = _config(tmp_path, "exactly_once", service={"checkpoint_every_events": 200})
    store = SnapshotStore.from_config(config.snapshots, "events-0")
    service = Service(config, kafka.connector(), "test")
    counted: list[tuple[int, int, int, int]] = []

    def count() -> None:
        """Checkpoints and re-learned events so far, the committed offset and its checkpoint's."""
        offset, named = kafka.group_offsets[("stream", ("events", 0))]
        checkpointed = store.get(named).offsets["events:0"]
        counted.append((service.counters.checkpoints, service.counters.relearned, offset, checkpointed))

    def die() -> None:
        count()
        raise Killed("right after the restore")

    steps = iter([  # the partition taken away, given back, one more tick, then the process dies
        lambda source: source.rebalance([]),
        lambda source: (count(), source.rebalance([("events", 0)])),
        lambda source: None,
        lambda source: die(),
    ])  # fmt: skip
    kafka.on_idle = lambda: next(steps)(service.checkpointer.source)
    with pytest.raises(Killed):
        service.run()
    (checkpoints, relearned, committed, checkpointed), after = counted
    assert checkpoints == 1 and 200 <= checkpointed < committed <= 300
    assert after[:2] == (checkpoints + 1, relearned + committed - checkpointed)
    offset, restores_checkpoint = after[2:]
    # At the first tick after the restore: after the first event it processed, if any came.
    assert committed <= restores_checkpoint <= committed + 1
    assert _run(kafka, config).counters.relearned == offset - restores_checkpoint


def test_a_restore_that_re_learned_is_checkpointed_though_no_event_follows(tmp_path):
    """Every event committed, the last checkpoint before them: the partition given back re-learns
    the events after it, and its checkpoint at the next tick holds them all."""
    kafka = FakeKafka()
    kafka.append("events", [json.dumps(event).encode() for event in EVENTS[:300]])
    config = _config(tmp_path, "exactly_once", service={"checkpoint_every_events": 200})
    store = SnapshotStore.from_config(config.snapshots, "events-0")
    service = Service(config, kafka.connector(), "test")
    seen: list[tuple[int, int]] = []  # the committed offset and its checkpoint's
    idle_after_restore = 0

    def at_idle() -> None:
        nonlocal idle_after_restore
        offset, named = kafka.group_offsets[("stream", ("events", 0))]
        source = service.checkpointer.source
        if not seen and offset == 300:  # all committed: the partition taken away, then given back
            seen.append((offset, store.get(named).offsets["events:0"]))
            source.rebalance([])
            source.rebalance([("events", 0)])
        elif service.counters.relearned and (idle_after_restore := idle_after_restore + 1) == 2:
            seen.append((offset, store.get(named).offsets["events:0"]))  # one tick after the restore
            service.request_stop()

    kafka.on_idle = at_idle
    service.run()
    (committed, checkpointed), after = seen
    assert committed == 300 and 200 <= checkpointed < committed
    assert service.counters.relearned == committed - checkpointed
    assert after == (300, 300)


def _delayed_broker_of_two_partitions(events: list[dict], labels: list[dict]) -> FakeKafka:
    kafka = FakeKafka(partitions=2, batch=60)
    kafka.interleave = 7  # every batch holds records of all four partitions
    kafka.append("events", [json.dumps(event).encode() for event in events])  # event n on partition n % 2
    kafka.create("labels")
    partition_of = {event["id"]: n % 2 for n, event in enumerate(events)}
    for label in labels:  # co-partitioned: each label on its event's partition
        kafka.logs[("labels", partition_of[label["id"]])].append(Record(None, json.dumps(label).encode()))
    return kafka


PARTITION_0 = [("events", 0), ("labels", 0)]
BOTH_PARTITIONS = [*PARTITION_0, ("events", 1), ("labels", 1)]


def test_with_delayed_labels_a_batch_polled_with_a_rebalance_is_fetched_again_labels_too(tmp_path):
    events, labels = delayed_stream(400, seed=9)
    kafka = _delayed_broker_of_two_partitions(events, labels)
    config = delayed_config(tmp_path)
    service = Service(config, kafka.connector(), "test")
    changes = {3: PARTITION_0, 6: BOTH_PARTITIONS}
    kafka.on_poll = _changing_the_group_at_batches(changes)
    kafka.on_idle = service.request_stop
    service.run()
    assert changes == {}, "the group did not change as planned: the test shows nothing"
    for partition in (0, 1):
        check_exactly_once_for(kafka, config, events[partition::2], partition)


def test_a_partition_taken_away_again_while_it_is_restored_is_left_to_the_next_round(tmp_path, monkeypatch):
    """Its restore ends, but it is not sought (a client refuses a seek on a partition it does not
    own, its labels' too); the next round of the loop restores what is left."""
    events, labels = delayed_stream(400, seed=9)
    kafka = _delayed_broker_of_two_partitions(events, labels)
    config = delayed_config(tmp_path)
    service = Service(config, kafka.connector(), "test")
    changes = {2: PARTITION_0, 4: BOTH_PARTITIONS, 7: BOTH_PARTITIONS}
    kafka.on_poll = _changing_the_group_at_batches(changes)
    kafka.on_idle = service.request_stop
    taken_again: list[bool] = []
    read_range = FakeSource.read_range

    def reading(self: FakeSource, partition: TopicPartition, *args: float) -> Iterator[Message]:
        # Partition 1 given back at batch 4 reads its join's changelog: the group takes it away again.
        if partition == (config.kafka.join_topic, 1) and 4 not in changes and not taken_again:
            taken_again.append(True)
            self.rebalance(PARTITION_0)
        return read_range(self, partition, *args)

    monkeypatch.setattr(FakeSource, "read_range", reading)
    service.run()
    assert changes == {} and taken_again, "the group did not change as planned: the test shows nothing"
    for partition in (0, 1):
        check_exactly_once_for(kafka, config, events[partition::2], partition)


@pytest.mark.parametrize("announced", [True, False], ids=["revoked", "lost"])
def test_partitions_taken_away_and_given_back_lose_and_repeat_nothing(tmp_path, caplog, announced):
    kafka = FakeKafka(partitions=2)
    encoded = [json.dumps(event).encode() for event in EVENTS]
    kafka.append("events", encoded[:600])
    # Commits only with checkpoints (every 400 events): when the rebalance comes, the open
    # transaction still holds the last 200 events' predictions, partition 1's among them.
    config = _config(tmp_path, "exactly_once", service={"commit_every_seconds": 3600})
    service = Service(config, kafka.connector(), "test")
    caplog.set_level("INFO", logger="stream.checkpoint")
    both = [("events", 0), ("events", 1)]
    steps = iter([
        lambda source: (source.rebalance(both[:1], announced), kafka.append("events", encoded[600:900])),
        lambda source: source.rebalance(both),
        lambda source: service.request_stop(),
    ])  # fmt: skip
    kafka.on_idle = lambda: next(steps)(service.checkpointer.source)
    service.run()

    _check_each_partition_as_if_uninterrupted(kafka, config, 900)
    assignments = [m.removeprefix("assignment: ") for m in caplog.messages if m.startswith("assignment: ")]
    assert assignments == ["['events:0', 'events:1']", "['events:0']", "['events:0', 'events:1']"]


def test_with_a_long_commit_interval_only_checkpoints_commit(tmp_path):
    kafka = FakeKafka()
    kafka.append("events", [json.dumps(event).encode() for event in EVENTS])
    config = _config(tmp_path, "exactly_once", service={"commit_every_seconds": 3600})
    service = _run(kafka, config)
    # And the first output, at once.
    assert service.counters.commits == kafka.plan.calls["transaction.committed"] == 5
    assert service.counters.checkpoints == 4


def test_an_idle_service_commits_nothing(tmp_path):
    kafka = FakeKafka()
    kafka.append("events", [json.dumps(event).encode() for event in EVENTS[:300]])
    config = _config(tmp_path, "exactly_once")
    service = Service(config, kafka.connector(), "test")
    idle_polls: list[int] = []

    def idle() -> None:
        idle_polls.append(kafka.plan.calls.get("transaction.committed", 0))
        time.sleep(0.002)  # longer than commit_every_seconds
        if len(idle_polls) == 20:
            service.request_stop()

    kafka.on_idle = idle
    service.run()
    assert idle_polls[1] == idle_polls[-1] > 0  # the last events' commit, then none while idle
    # Nor does one restarted with nothing new to read (until it stops).
    idle_polls.clear()
    service = Service(config, kafka.connector(), "test")
    service.run()
    assert idle_polls[0] == idle_polls[-1]


def test_a_periodic_checkpoint_leaves_a_partition_that_learned_nothing_alone(tmp_path):
    kafka = FakeKafka(partitions=2)
    kafka.create("events")
    kafka.logs[("events", 0)].extend(Record(None, json.dumps(event).encode()) for event in EVENTS[:900])
    config = _config(tmp_path, "exactly_once")
    _run(kafka, config)
    busy, idle = (SnapshotStore.from_config(config.snapshots, f"events-{p}") for p in (0, 1))
    assert [m.reason for m in busy.list()].count("checkpoint") == 2
    assert [m.reason for m in idle.list()] == ["shutdown"]


@pytest.mark.parametrize(
    "detector",
    ["drift.ADWIN", "drift.binary.DDM", "drift.binary.EDDM", "drift.binary.HDDMA", "drift.binary.HDDMW"],
)
def test_every_snapshot_restores_the_state_after_the_event_it_records(tmp_path, detector):
    config = _config(tmp_path / "run", "exactly_once", detector=detector)
    expected, reference = _reference(config)
    kafka = FakeKafka()
    kafka.append("events", [json.dumps(event).encode() for event in EVENTS])
    _run(kafka, config)
    history = SnapshotStore.from_config(config.snapshots, "events-0").list()
    assert {"drift", "checkpoint"} <= {m.reason for m in history}
    assert detector == "drift.ADWIN" or "warning" in {m.reason for m in history}
    for manifest in history:
        # A restart whose commit names this snapshot, with the store as it was when it was written.
        restarted = _config(tmp_path / manifest.id, "exactly_once", detector=detector)
        directory, written = (
            Path(restarted.snapshots.directory, "events-0"),
            Path(config.snapshots.directory, "events-0"),
        )
        for earlier in history[: history.index(manifest) + 1]:
            shutil.copytree(written / earlier.entry, directory / earlier.entry)
        shutil.copy(written / OWNERSHIP, directory / OWNERSHIP)
        replay = FakeKafka()
        replay.append("events", [json.dumps(event).encode() for event in EVENTS])
        offset = manifest.offsets["events:0"]
        replay.group_offsets[("stream", ("events", 0))] = (offset, manifest.id)
        _run(replay, restarted)
        assert replay.values("predictions") == expected[offset:], f"restored from {manifest.id}"
        assert _decisions(_final_model(restarted)) == _decisions(reference.state)


@pytest.mark.parametrize("commits_before_the_crash", [0, 1])
def test_snapshots_a_crashed_run_wrote_beyond_its_last_commit_change_nothing_after_the_restart(
    tmp_path, caplog, commits_before_the_crash
):
    kafka = FakeKafka()
    kafka.append("events", [json.dumps(event).encode() for event in EVENTS])
    # The crashed run checkpointed at other events than its restart does (as time-based
    # checkpoints do), so the ids of what it left interleave with those the restart writes; with
    # two kept per reason, its leftovers would crowd those out of the store.
    crashed = _config(
        tmp_path, "exactly_once", {"checkpoint_every_events": 500, "commit_every_seconds": 3600},
        keep_last=2, detector="drift.binary.EDDM",
    )  # fmt: skip
    # (Its first commit is its first output's, at once.)
    kafka.plan.step, kafka.plan.at = "transaction.commit", commits_before_the_crash + 2
    with pytest.raises(Killed):
        _run(kafka, crashed)
    kafka.plan.step = ""
    store = SnapshotStore.from_config(crashed.snapshots, "events-0")
    committed, checkpoint_id = kafka.group_offsets.get(("stream", ("events", 0)), (0, ""))
    leftovers = [m.id for m in store.list() if m.offsets["events:0"] > committed]
    assert leftovers, "the crashed run left no snapshot beyond its commit: the test shows nothing"

    config = _config(tmp_path, "exactly_once", keep_last=2, detector="drift.binary.EDDM")
    expected, reference = _reference(config)
    caplog.set_level("INFO", logger="stream.checkpoint")
    _run(kafka, config)
    assert kafka.values("predictions") == expected
    assert _decisions(_final_model(config)) == _decisions(reference.state)
    assert any(d["action"] == "rollback" for d in reference.state.decisions)
    if checkpoint_id:  # restored from the committed checkpoint: everything after it was discarded
        (line,) = [m for m in caplog.messages if "discarded" in m]
        assert line == (
            f"events:0: discarded {len(leftovers)} snapshots written after {checkpoint_id}: "
            + ", ".join(leftovers)
        )


def _relearned(messages: list[str]) -> list[int]:
    return [int(re.search(r"re-learned (\d+) events", m).group(1)) for m in messages if "re-learned" in m]


def test_a_crash_loop_re_learns_only_what_the_last_run_did(tmp_path, caplog):
    kafka = FakeKafka()
    kafka.append("events", [json.dumps(event).encode() for event in EVENTS])
    # Commits, but no checkpoint of its own before it dies: as when a crash comes sooner than
    # checkpoint_every_seconds, every time.
    config = _config(
        tmp_path, "exactly_once", {"checkpoint_every_events": 10**6, "checkpoint_every_seconds": 3600}
    )
    expected, reference = _reference(config)
    caplog.set_level("INFO", logger="stream.checkpoint")
    store = SnapshotStore.from_config(config.snapshots, "events-0")
    committed, checkpointed = [0], [0]
    for _ in range(4):
        # Killed at its fourth poll: it has processed two batches of 100 and committed them (up to
        # the last commit due: the last few events may be left over).
        kafka.plan.step, kafka.plan.at = "poll", kafka.plan.calls.get("poll", 0) + 4
        with pytest.raises(Killed):
            _run(kafka, config)
        offset, named = kafka.group_offsets[("stream", ("events", 0))]
        committed.append(offset)
        checkpointed.append(store.get(named).offsets["events:0"] if named else 0)
    kafka.plan.step = ""
    _run(kafka, config)
    # Each restart re-learns from a checkpoint the run before it made after its own restore,
    # never what earlier runs did.
    assert all(
        before <= start <= before + 1 and 100 <= end - before <= 200
        for before, start, end in zip(committed, checkpointed[1:], committed[1:], strict=False)
        if before
    ), (committed, checkpointed)
    assert _relearned(caplog.messages) == [
        0,
        *(end - start for start, end in zip(checkpointed[1:], committed[1:], strict=True)),
    ]
    # The commits before any checkpoint named none, so no restart looked for one in vain.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert kafka.values("predictions") == expected
    assert canonical_pickle(_final_model(config).model) == canonical_pickle(reference.state.model)


def test_a_restore_keeps_the_member_in_its_group_however_long_it_re_learns(tmp_path, caplog):
    kafka = FakeKafka()
    kafka.append("events", [json.dumps(event).encode() for event in EVENTS[:600]])
    config = Config.model_validate({
        "model": {"task": "binary", "factory": "tests.slow_models:slow_tree"},
        "drift": {"policy": "none"},  # no drift snapshot: the restore re-learns from the start
        "kafka": {"input_topic": "events", "predictions_topic": "predictions", "dead_letter_topic": "dead"},
        "snapshots": {"directory": str(tmp_path / "snapshots")},
        "service": {"checkpoint_every_events": 10**6, "checkpoint_every_seconds": 3600,
                    "commit_every_seconds": 0.001},
    })  # fmt: skip

    def die() -> None:
        raise Killed("killed once everything was read")

    service = Service(config, kafka.connector(), "test")
    kafka.on_idle = die
    with pytest.raises(Killed):
        service.run()
    kafka.longest_silence = 0.0
    caplog.set_level("INFO", logger="stream.checkpoint")
    caplog.clear()  # the restart's messages only (logging left at INFO by another test shows the first run's)
    _run(kafka, config)
    relearning = 600 * tests.slow_models.LEARN_SECONDS
    assert _relearned(caplog.messages) == [600]  # one restore, of about 2.4 s, in one piece
    assert kafka.plan.calls["keep_alive"] >= relearning / KEEP_ALIVE_SECONDS - 1
    # Without keep-alives the member would go silent for the whole re-learning (2.4 s); with them,
    # the longest silence is a batch of 100 learned between polls (0.4 s) or one keep-alive
    # interval. Half the re-learning leaves room for a loaded machine or instrumented code.
    assert kafka.longest_silence < relearning / 2


def test_a_manual_snapshot_is_committed_at_once_as_the_checkpoint_a_restart_restores(tmp_path, caplog):
    kafka = FakeKafka()
    kafka.append("events", [json.dumps(event).encode() for event in EVENTS[:300]])  # no checkpoint of its own
    config = _config(tmp_path, "exactly_once")
    service = Service(config, kafka.connector(), "test")
    taken = []

    def snapshot_then_die() -> None:
        with pytest.raises(
            NotOwnedError, match=r"^this instance does not own 'events-1'; it owns \['events-0'\]$"
        ):
            service.take_snapshot("events-1")
        taken.append(service.take_snapshot("events-0"))
        raise Killed("right after the snapshot")

    kafka.on_idle = snapshot_then_die
    with pytest.raises(Killed):
        service.run()
    (manifest,) = taken
    store = SnapshotStore.from_config(config.snapshots, "events-0")
    assert [m.id for m in store.list(reason="manual")] == [manifest.id] and manifest.offsets == {
        "events:0": 300
    }
    assert kafka.group_offsets[("stream", ("events", 0))] == (300, manifest.id)
    caplog.set_level("INFO", logger="stream.checkpoint")
    _run(kafka, config)
    restored = f"restored events:0 from snapshot {manifest.id} at offset 300"
    assert f"{restored}; re-learned 0 events up to the committed offset 300" in caplog.messages


def test_outputs_wait_for_commit_every_seconds_but_the_first_after_a_restore(tmp_path):
    kafka = FakeKafka()
    kafka.append("events", [json.dumps(event).encode() for event in EVENTS[:300]])
    config = _config(
        tmp_path,
        "exactly_once",
        {"commit_every_seconds": 3600, "checkpoint_every_events": 10**6, "checkpoint_every_seconds": 3600},
    )
    visible_at_commits = _visible_at_commits(kafka)
    service = _run(kafka, config)
    # The first output at once (the first after a restore); the rest of the three batches is not
    # committed on its own: the shutdown commits it, then its checkpoint.
    assert service.counters.commits == kafka.plan.calls["transaction.committed"] == 3
    assert visible_at_commits == [1, 300, 300]


def test_a_slow_models_batch_is_committed_on_time_not_after_the_batch(tmp_path):
    kafka = FakeKafka(batch=25)  # a batch learned in 25 x 4 ms = 0.1 s, five commit intervals
    kafka.append("events", [json.dumps(event).encode() for event in EVENTS[:100]])
    config = Config.model_validate({
        "model": {"task": "binary", "factory": "tests.slow_models:slow_tree"},
        "kafka": {"input_topic": "events", "predictions_topic": "predictions", "dead_letter_topic": "dead"},
        "snapshots": {"directory": str(tmp_path / "snapshots")},
        "service": {"checkpoint_every_events": 10**6, "checkpoint_every_seconds": 3600,
                    "commit_every_seconds": 0.02},
    })  # fmt: skip
    visible_at_commits = _visible_at_commits(kafka)
    _run(kafka, config)
    # Committed between batches only, every count would be a multiple of 25.
    assert any(count % 25 for count in visible_at_commits), visible_at_commits
    assert visible_at_commits[-1] == 100 and visible_at_commits == sorted(visible_at_commits)


def _visible_at_commits(kafka: FakeKafka) -> list[int]:
    """How many predictions a reader sees after each transaction commit, from now on."""
    visible: list[int] = []
    reached = kafka.plan.reached

    def note_commits(step: str) -> None:
        reached(step)
        if step == "transaction.committed":
            visible.append(len(kafka.values("predictions")))

    kafka.plan.reached = note_commits  # type: ignore[method-assign]
    return visible


def test_a_snapshot_without_a_labels_offset_counts_as_having_read_none_of_them(tmp_path, caplog):
    """A snapshot from before a label topic was configured restores, its labels read from their
    start; one whose labels offset lies beyond the committed one does not. Nothing named, nothing
    is looked up by name (nor warned about)."""
    from types import SimpleNamespace as State

    store = SnapshotStore(tmp_path)
    before = store.save(State(offsets={"events:0": 100}), reason="checkpoint", offsets={"events:0": 100}).id
    offsets = {"events:0": 120, "labels:0": 5}
    store.save(State(offsets=offsets), reason="checkpoint", offsets=offsets)
    assert restore_point(store, {"events:0": 150, "labels:0": 0})[0].id == before
    assert restore_point(store, {"events:0": 150, "labels:0": 4})[0].id == before
    assert restore_point(store, {"events:0": 150, "labels:0": 0}, checkpoint_id=before)[0].id == before
    assert caplog.messages == []
