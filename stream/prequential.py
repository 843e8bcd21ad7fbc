"""The prequential engine: for each event predict, learn, then emit the prediction.

One :class:`Engine` drives one model. Its whole mutable state is a :class:`LearnerState` (the
model, its metrics, its drift monitor and counters); a snapshot is that state pickled, so
restoring a snapshot resumes exactly where it was taken, and the same events, config and seeds
always give byte-identical predictions. The configuration is not part of the state: the engine
applies its own to a restored state (drift buffer size, candidate count, detector).

>>> import tempfile
>>> from stream.config import Config
>>> from stream.events import Event, InvalidEvent
>>> from stream.snapshots import SnapshotStore
>>> engine = Engine(Config(), SnapshotStore(tempfile.mkdtemp()))
>>> engine.process(Event(x={"a": 1.0}, y=True, id="e-1"))
{'id': 'e-1', 'y_pred': False, 'y_proba': {False: 0.5, True: 0.5}, 'model_version': 1, 'y': True}
>>> engine.process(Event(x={"a": 1.0}, id="e-2"))["y_pred"]
True
>>> engine.state.events, engine.state.labelled
(2, 1)
"""

from __future__ import annotations

import copy
import heapq
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, TypeVar, overload

from pydantic import BaseModel

from stream import pickling
from stream.config import Config
from stream.drift import DECIDE, DRIFT, WARNING, DriftMonitor, loss_of
from stream.errors import ModelFailure
from stream.events import Event, InvalidEvent
from stream.journal import Journal, JournalEntry
from stream.metrics import MetricTracker
from stream.models import build_model, predict_one_is_argmax
from stream.snapshots import Reason, SnapshotError, SnapshotManifest, SnapshotStore

logger = logging.getLogger(__name__)

MAX_DECISIONS_KEPT = 1000
# How far back healing looks for the event that broke a model, before the one it broke on.
SUSPECTS_BEFORE = 3
# The newest points of the metric history kept: it is pickled into every snapshot, so it must not
# grow with the stream (a point every 500 labels at 1,000 labels/s is 172,800 points a day).
MAX_HISTORY_KEPT = 1000
# Snapshots that mark a concept and compete when a drift is decided; periodic checkpoints would
# crowd them out of the last N.
CANDIDATE_REASONS = frozenset({"warning", "drift", "manual"})
BROKEN_BEFORE_CHECKPOINT = "it would not answer after its next update, found before a checkpoint"


@dataclass
class LearnerState:
    """Everything that changes as the engine learns; pickled whole into each snapshot."""

    model: Any
    metrics: MetricTracker
    monitor: DriftMonitor | None
    next_sequence: int = 1
    events: int = 0
    labelled: int = 0
    errors: int = 0
    model_version: int = 1
    warnings: int = 0
    drifts: int = 0
    snapshots: int = 0
    rollbacks: int = 0
    resets: int = 0
    last_snapshot_id: str | None = None
    label_kind: str | None = None  # multiclass: the type of the labels the model learns
    recent_snapshots: deque = field(default_factory=deque)
    offsets: dict[str, int] = field(default_factory=dict)
    examples_learned: int = 0  # delayed labels: the examples written in the learning order (changelog)
    history: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Pickled:
    """A snapshot numbered and pickled, not saved yet; ``left_behind`` is the state pickled, which
    the engine no longer uses (it goes on with a copy unpickled from ``payload``)."""

    reason: Reason
    sequence: int
    parent: str | None
    payload: bytes
    left_behind: LearnerState


class LearnerSummary(BaseModel):
    """What an engine has done so far: counters, metrics, the policy's decisions, metric history."""

    events: int
    labelled: int
    errors: int
    metrics: dict[str, float]
    warnings: int
    drifts: int
    snapshots: int
    rollbacks: int
    resets: int
    model_version: int
    decisions: list[dict[str, Any]]
    history: list[dict[str, Any]]


Summary = TypeVar("Summary", bound=LearnerSummary)


def _finite(values: dict[str, float]) -> dict[str, float]:
    return {name: value for name, value in values.items() if math.isfinite(value)}


class Engine:
    """Predict-then-learn over events, with metrics, drift policy and snapshots."""

    def __init__(self, config: Config, store: SnapshotStore, state: LearnerState | None = None) -> None:
        self.config = config
        self.task = config.model.task
        self.store = store
        self._journal = Journal()
        if state is None:
            state = self.new_state()
            self._journal.start(self.new_state, answered=None)  # a fresh model: nothing to pickle
        self.state = state
        self._last_answered: dict[str, Any] | None = None  # features of the last event predicted
        self.unlearned: list[tuple[Any, str]] = []  # (origin, reason) of events healing unlearned
        self._configure()
        self._bind_model()
        self._max_classes = config.limits.max_proba_classes
        self.last_snapshot_bytes = 0  # the size of the last snapshot written: what the model weighs

    def new_state(self) -> LearnerState:
        config = self.config
        # Anomaly detectors have no loss to watch; with policy "none" drifts are still counted.
        monitor = None if self.task == "anomaly" else DriftMonitor.create(config.drift, self.task)
        return LearnerState(
            model=build_model(config.model),
            metrics=MetricTracker(config.metrics.resolved_names(self.task), config.metrics.rolling_window),
            monitor=monitor,
            next_sequence=self.store.next_sequence(),
        )

    def _configure(self) -> None:
        """Apply this engine's configuration to its state (new or restored from a snapshot)."""
        state = self.state
        state.recent_snapshots = deque(state.recent_snapshots, maxlen=self.config.drift.candidates)
        if state.monitor is not None:
            state.monitor.configure(self.config.drift)

    # -- the loop --------------------------------------------------------------------------

    def process(
        self,
        event: Event,
        emit: Callable[[dict[str, Any]], Any] | None = None,
        origin: Any = None,
        size: int = 0,
    ) -> dict[str, Any]:
        """Predict, learn from the label if there is one, then hand the prediction to ``emit``.

        Each event has one outcome: it is learned and its prediction emitted, or it raises
        :class:`InvalidEvent` with the reason (say, a string feature for a linear model), leaves no
        trace in the state, and the caller dead-letters it. The prediction is made before
        learning (prequential); it is emitted after, once the event is known to be usable.

        A model that stops answering (non-finite outputs or an error for any input, after some
        event's learning broke it) heals: the events learned since the journal's good state are
        learned again, without each one whose learning breaks the model; those are listed in
        :attr:`unlearned` with ``origin`` and the reason, for the caller to dead-letter (their
        predictions were already emitted). ``size`` (the bytes the event came as) counts against
        the journal's memory budget. Models are deterministic, so a recovery that replays the same
        events refuses and heals the same way.
        """
        if self.task == "multiclass" and event.y is not None:
            self._check_label_kind(event.y)
        prediction = self._predict_or_heal(event)
        self._learn_or_refuse(event, prediction, origin, size, None)
        if emit is not None:
            emit(prediction)
        return prediction

    def answer(self, event: Event) -> dict[str, Any]:
        """Predict only, for an event whose label comes later (:mod:`stream.join`); a model that
        stopped answering heals first, as in :meth:`process`. The state does not change."""
        return self._predict_or_heal(event)

    def learn_joined(self, event: Event, prediction: dict[str, Any], origin: Any = None) -> None:
        """Learn an event whose label came later, with ``prediction``, the one made when the event
        came: the metrics and the drift monitor see that one, as River's delayed progressive
        validation does. All or nothing, as in :meth:`process`."""
        if self.task == "multiclass":
            self._check_label_kind(event.y)
        if self._journal.due():
            self._predict_or_heal(event)  # a good state to keep must answer something now
        self._learn_or_refuse(event, prediction, origin, 0, prediction)

    def relearn_example(
        self, seq: int, event: Event, prediction: dict[str, Any] | None, origin: Any = None
    ) -> None:
        """Learn the ``seq``-th example of the learning order again (:mod:`stream.changelog`), as
        it was first: claimed before it is learned (a snapshot taken meanwhile, a drift's, holds
        it), with its kept prediction if it is a joined label's. One the model refused then is
        refused again and leaves no trace either time. ``origin``: what healing names if this
        learning turns out to break the model."""
        self.state.examples_learned = seq
        try:
            if prediction is None:
                self.process(event, origin=origin)
            else:
                self.learn_joined(event, prediction, origin)
        except InvalidEvent as error:
            logger.debug("example %d is refused again: %s", seq, error)

    def _learn_or_refuse(
        self, event: Event, prediction: dict[str, Any], origin: Any, size: int, joined: dict[str, Any] | None
    ) -> None:
        """Learn the event, or leave no trace of it and raise :class:`InvalidEvent`."""
        journal = self._journal
        if journal.due():
            self._keep_good_state(event.x)
        elif journal.answered is None:  # the good state's first answer: nothing learned since it
            journal.answered = event.x
        try:
            self.learn(event, prediction)
        except InvalidEvent:
            self._rebuild(journal.entries)  # all or nothing: no trace of the refused event
            if joined is None:  # the rebuilt state answered this event: keep it, so the next
                self._keep_good_state(event.x)  # refusal rebuilds nothing
            raise
        journal.record(event.x, event.y, event.id, origin, size, joined)
        if self.task == "multiclass" and event.y is not None:
            self.state.label_kind = type(event.y).__name__

    def take_unlearned(self) -> list[tuple[Any, str]]:
        """The ``(origin, reason)`` of the events healing unlearned since the last call, handed over
        once: for the caller to dead-letter (a re-learning caller, which did so before, drops them)."""
        found, self.unlearned = self.unlearned, []
        return found

    def _check_label_kind(self, y: Any) -> None:
        """One kind of label per multiclass model, the first one's: ``true`` and ``1`` are one
        class to Python, and trees cannot order strings among integers."""
        kind = type(y).__name__
        first = getattr(self.state, "label_kind", None)  # absent from states pickled before it was kept
        if first is not None and kind != first:
            raise InvalidEvent(f"label {y!r} is a {kind}; this model's labels are of type {first}")

    def _predict_or_heal(self, event: Event) -> dict[str, Any]:
        try:
            prediction = self.predict(event)
        except Exception as error:
            if self._answers(self._journal.answered, self._last_answered):
                raise InvalidEvent(
                    f"the model cannot predict this event: {type(error).__name__}: {error}"
                ) from error
            # It no longer answers what it answered before: an event learned since broke it.
            self._heal(f"{type(error).__name__}: {error}")
            try:
                prediction = self.predict(event)
            except Exception as again:
                raise InvalidEvent(
                    f"the model cannot predict this event: {type(again).__name__}: {again}"
                ) from again
        self._last_answered = event.x
        return prediction

    def _answers(self, *inputs: dict[str, Any] | None) -> bool:
        """Whether the model gives a finite output for each of ``inputs`` (None: nothing to ask).

        Asked for what the journal's good state answered and what the model answered last: an
        event that breaks a model may well still get an answer for its own features.
        """
        try:
            for x in inputs:
                if x is not None:
                    self.predict(Event(x=x))
        except Exception:
            return False
        return True

    def checkpoint(self, reason: Reason) -> SnapshotManifest:
        """A snapshot a restore may start from: healed first if broken, so a broken model is never
        made durable, nor one that answers but whose next update would break it (a scaler's
        variance gone infinite turns NaN at its next update). Its pickle is the journal's new good
        state (the loop pickles nothing more).

        The trial update that tells runs on the state just pickled: the engine goes on with the
        copy unpickled from the pickle anyway (:meth:`_go_on_from`), so the state left behind is a
        spare copy to try the update on, and a checkpoint pickles and unpickles once, copying
        nothing more."""
        if self._answers(self._journal.answered, self._last_answered):
            pickled = self._pickle(reason)
            if self._survives_an_update(spare=pickled.left_behind.model):
                return self._keep_checkpoint(pickled)
            self.state.next_sequence = pickled.sequence  # the heal keeps it, and rebuilds the rest
        self._heal(BROKEN_BEFORE_CHECKPOINT)
        return self._keep_checkpoint(self._pickle(reason))

    def _keep_checkpoint(self, pickled: _Pickled) -> SnapshotManifest:
        manifest = self._save(pickled)
        self._journal.start(pickled.payload, self._last_answered)
        return manifest

    def _keep_good_state(self, answered: dict[str, Any] | None) -> None:
        """The state as it is now, which answered ``answered``, is the journal's good state."""
        payload = pickling.dumps(self.state)
        self._journal.start(payload, answered)
        self._go_on_from(payload)

    def _go_on_from(self, payload: bytes) -> None:
        """Go on with a copy of the state unpickled from ``payload``, its pickle just made:
        pickling slowed the original's attribute reads for good, and the copy is as fast as a
        freshly built state (:mod:`stream.pickling`). Every caller of what pickles the state uses
        ``self.state`` afresh afterwards (none keeps the old one, but a checkpoint as a spare
        copy to try an update on). The copy is the state as it was: configured, its model bound."""
        self.state = pickling.loads(payload)

    def _survives_an_update(self, spare: Any = None) -> bool:
        """Whether the model still answers after learning the last learned event again, on
        ``spare``: a copy of the model the trial may change (by default a deep copy)."""
        last = self._journal.latest
        if last is None:
            return True
        model = self.state.model
        self.state.model = copy.deepcopy(model) if spare is None else spare
        try:
            self._update_model(last.x, last.y)
            return self._answers(self._journal.answered, last.x)
        except Exception:
            return False
        finally:
            self.state.model = model

    def _heal(self, symptom: str) -> None:
        journal = self._journal
        if not journal.started:
            raise ModelFailure(f"the model stopped answering ({symptom}) and no good state is kept")
        entries, kept, culprit_found = journal.entries, [], False
        self._rebuild(kept)
        if not self._answers(journal.answered):
            raise ModelFailure(
                f"the model stopped answering ({symptom}), and its last good state does not answer "
                "either: not any event's fault"
            )
        # What the model answered last is asked too (a checkpoint finds a model broken for it: an
        # event waiting for its label, say), unless the good state does not answer it either.
        last = self._last_answered if self._answers(self._last_answered) else None

        def unlearn(culprit: JournalEntry) -> None:
            nonlocal culprit_found
            culprit_found = True
            self.state.errors += 1
            reason = f"learning this event broke the model ({symptom}); it was unlearned"
            self.unlearned.append((culprit.origin, reason))
            logger.error("event %s: %s", culprit.id, reason)

        for entry in entries:
            self._relearn(entry)
            if self._answers(journal.answered, entry.x, last):
                kept.append(entry)
                continue
            # The model broke while learning this event; the cause may be an event just before,
            # whose trace only this one's learning turned non-finite (a scaler's infinite variance
            # becomes NaN at its next update): the culprit is the latest whose absence heals.
            found = self._without_a_suspect(
                kept, [entry], lambda x=entry.x: self._answers(journal.answered, x, last)
            )
            if found is None:
                self._rebuild(kept)
                unlearn(entry)
            else:
                suspect, kept = found
                unlearn(suspect)
        if not self._survives_an_update():  # the trace of the last events waits for an update
            found = self._without_a_suspect(kept, [], self._survives_an_update)
            if found is None:
                self._rebuild(kept)
            else:
                suspect, kept = found
                unlearn(suspect)
        if not culprit_found:
            raise ModelFailure(
                f"the model stopped answering ({symptom}), and no event learned since its last good "
                "state is the cause"
            )
        journal.entries = kept

    def _without_a_suspect(
        self, kept: list[JournalEntry], then: list[JournalEntry], healthy: Callable[[], bool]
    ) -> tuple[JournalEntry, list[JournalEntry]] | None:
        """The latest of the last :data:`SUSPECTS_BEFORE` events in ``kept`` without which the state
        (rebuilt from ``kept`` without it, then ``then``) is ``healthy``, and those entries; None if
        none is. The state is left rebuilt from the last entries tried."""
        for suspect in reversed(kept[-SUSPECTS_BEFORE:]):
            entries = [*(entry for entry in kept if entry is not suspect), *then]
            self._rebuild(entries)
            if healthy():
                return suspect, entries
        return None

    def _rebuild(self, entries: list[JournalEntry]) -> None:
        """The state as the journal's good state plus ``entries``, learned again. Where the
        partition stands, the snapshot numbering and the examples written are not learning:
        they are kept as they are, and so is the count of errors (records refused are not learned)."""
        state = self.state
        offsets, next_sequence, examples = dict(state.offsets), state.next_sequence, state.examples_learned
        errors = state.errors
        self.state = self._journal.base_state()
        self.state.offsets, self.state.next_sequence = offsets, next_sequence
        self.state.examples_learned, self.state.errors = examples, errors
        self._configure()
        self._bind_model()
        for entry in entries:
            self._relearn(entry)

    def _relearn(self, entry: JournalEntry) -> None:
        """Predict and learn a journal's event again: the prediction is the one it was learned
        with, since the state before it is the same again (or was kept: a joined label's)."""
        event = Event(x=entry.x, y=entry.y, id=entry.id)
        self.learn(event, self.predict(event) if entry.prediction is None else entry.prediction)

    def predict(self, event: Event) -> dict[str, Any]:
        """The prediction record for one event; the model is not changed."""
        model = self.state.model
        x = event.x
        record: dict[str, Any] = {"id": event.id}
        if event.key is not None:
            record["key"] = event.key
        if self.task in ("binary", "multiclass"):
            proba = model.predict_proba_one(x)
            if self._argmax:
                record["y_pred"] = max(proba, key=proba.get) if proba else None
            else:
                record["y_pred"] = model.predict_one(x)
            if len(proba) > self._max_classes:  # the most probable ones, in the model's order
                proba = dict(heapq.nlargest(self._max_classes, proba.items(), key=itemgetter(1)))
            record["y_proba"] = proba
        elif self.task == "regression":
            record["y_pred"] = model.predict_one(x)
        else:
            record["score"] = model.score_one(x)
        output = record.get("score", record.get("y_pred"))
        if isinstance(output, float) and not math.isfinite(output):
            raise ValueError(f"non-finite output {output}")
        if "y_proba" in record and not math.isfinite(sum(record["y_proba"].values())):
            raise ValueError(f"non-finite probabilities {record['y_proba']}")
        record["model_version"] = self.state.model_version
        if event.y is not None:
            record["y"] = event.y
        return record

    def learn(self, event: Event, prediction: dict[str, Any]) -> None:
        """Learn from ``event`` (whose prediction was made first), then apply the drift policy."""
        state = self.state
        y = event.y
        # The model learns first: if it refuses the event, no counter or metric has moved. Only the
        # model's refusal is the event's fault; anything else (say a full disk) is the caller's.
        try:
            self._update_model(event.x, y)
        except Exception as error:
            raise InvalidEvent(
                f"the model cannot learn this event: {type(error).__name__}: {error}"
            ) from error
        state.events += 1
        if y is None:
            self._periodic_snapshot()
            return
        state.labelled += 1
        if self.task == "anomaly":
            state.metrics.update(y, None, prediction["score"])
        else:
            state.metrics.update(y, prediction["y_pred"], prediction.get("y_proba"))
        if state.labelled % self.config.metrics.history_every == 0:
            name, value = state.metrics.primary_rolling
            state.history.append({"event": state.events, name: value})
            del state.history[:-MAX_HISTORY_KEPT]
        # The drift policy comes last: a snapshot it takes holds this event fully learned.
        if state.monitor is not None:
            self._watch_drift(event.x, y, loss_of(self.task, y, prediction["y_pred"]))
        self._periodic_snapshot()

    def _update_model(self, x: dict[str, Any], y: Any) -> None:
        """The model's own update: an anomaly detector learns every event, others labelled ones."""
        if self.task == "anomaly":
            self.state.model.learn_one(x)
        elif y is not None:
            self.state.model.learn_one(x, y)

    def _periodic_snapshot(self) -> None:
        every = self.config.snapshots.every_events
        if every and self.state.events % every == 0:
            self.snapshot("periodic")

    def record_error(self) -> None:
        """Count an event that could not be decoded (its dead letter is the caller's to write)."""
        self.state.errors += 1

    # -- drift policy ----------------------------------------------------------------------

    def _watch_drift(self, x: dict, y: Any, loss: float) -> None:
        state = self.state
        assert state.monitor is not None
        signal = state.monitor.update(x, y, loss)
        if signal == WARNING:
            state.warnings += 1
            logger.info("warning at event %d", state.events)
            policy = self.config.drift.policy
            if policy == "best" and self.config.drift.challenger:
                state.monitor.start_challenger(state.model.clone())
            # Last: a snapshot holds the state as it is after the event it records as learned.
            if policy != "none":
                self.snapshot("warning")
        elif signal == DRIFT:
            state.drifts += 1
            self._on_drift()
        elif signal == DECIDE:
            self._decide()

    def _on_drift(self) -> None:
        state = self.state
        policy = self.config.drift.policy
        logger.info("drift at event %d (policy %s)", state.events, policy)
        if policy == "none":
            return
        self.snapshot("drift")

    def _decide(self) -> None:
        """The buffer after a drift is full: let the policy pick the model to go on with."""
        state = self.state
        policy = self.config.drift.policy
        assert state.monitor is not None
        if policy in ("none", "snapshot"):
            state.monitor.after_decision(switched=False)
            return
        candidates = [
            (snapshot_id, self._model_loader(snapshot_id)) for snapshot_id in state.recent_snapshots
        ]
        decision, winner = state.monitor.choose(
            policy, state.events, state.model, candidates, state.model.clone()
        )
        state.decisions.append(decision.as_dict())
        del state.decisions[:-MAX_DECISIONS_KEPT]
        logger.info("drift decision at event %d: %s (%s)", state.events, decision.winner, decision.candidates)
        if decision.action == "keep":
            state.monitor.after_decision(switched=False)
            return
        self._switch_model(winner)
        if decision.action == "rollback":
            state.rollbacks += 1
            self.snapshot("rollback", note=f"policy rollback to {decision.winner}")
        else:
            state.resets += 1

    def _model_loader(self, snapshot_id: str) -> Callable[[], Any]:
        def load() -> Any:
            try:
                return self.store.load(snapshot_id).model
            except SnapshotError as error:
                logger.warning("snapshot %s is not a candidate: %s", snapshot_id, error)
                return None

        return load

    def _bind_model(self) -> None:
        """Per-model facts the hot loop needs, worked out once per model rather than per event."""
        self._argmax = predict_one_is_argmax(self.state.model)

    def _switch_model(self, model: Any) -> None:
        state = self.state
        state.model = model
        state.model_version += 1
        self._bind_model()
        if state.monitor is not None:
            state.monitor.after_decision(switched=True)

    # -- snapshots -------------------------------------------------------------------------

    def snapshot(self, reason: Reason, note: str | None = None) -> SnapshotManifest:
        """Write the current state to the store (durably) and remember it as a candidate."""
        return self._save(self._pickle(reason), note)

    def _pickle(self, reason: Reason) -> _Pickled:
        """Number the next snapshot, pickle the state, and go on with a copy unpickled from it."""
        state = self.state
        sequence, parent = state.next_sequence, state.last_snapshot_id
        snapshot_id = f"{sequence:08d}-{reason}"
        state.next_sequence += 1
        state.snapshots += 1
        state.last_snapshot_id = snapshot_id
        if reason in CANDIDATE_REASONS:
            state.recent_snapshots.append(snapshot_id)
        payload = pickling.dumps(state)
        self._go_on_from(payload)
        return _Pickled(reason, sequence, parent, payload, left_behind=state)

    def _save(self, pickled: _Pickled, note: str | None = None) -> SnapshotManifest:
        """Write what :meth:`_pickle` made to the store, durably."""
        state = self.state
        manifest = self.store.save_pickled(
            pickled.payload,
            pickled.reason,
            sequence=pickled.sequence,
            parent=pickled.parent,
            events_seen=state.events,
            labelled_seen=state.labelled,
            model_version=state.model_version,
            offsets=dict(state.offsets),
            examples_learned=state.examples_learned,
            metrics=_finite(state.metrics.values()),
            note=note,
        )
        self.last_snapshot_bytes = manifest.size_bytes
        return manifest

    def rollback(self, snapshot_id: str) -> SnapshotManifest:
        """Make a stored snapshot's model the current one (a manual rollback)."""
        restored = self.store.load(snapshot_id)
        self._switch_model(restored.model)
        self.state.rollbacks += 1
        self._journal.clear()  # no event reproduces a manual rollback: replays must start after it
        return self.snapshot("rollback", note=f"manual rollback to {snapshot_id}")

    # -- reporting -------------------------------------------------------------------------

    @overload
    def summary(self) -> LearnerSummary: ...

    @overload
    def summary(self, model: type[Summary], **extra: Any) -> Summary: ...

    def summary(self, model: type[LearnerSummary] = LearnerSummary, **extra: Any) -> LearnerSummary:
        """The summary as ``model`` (a :class:`LearnerSummary` or a subclass, whose further fields
        ``extra`` gives), validated once."""
        state = self.state
        return model(
            events=state.events,
            labelled=state.labelled,
            errors=state.errors,
            metrics=_finite(state.metrics.values()),
            warnings=state.warnings,
            drifts=state.drifts,
            snapshots=state.snapshots,
            rollbacks=state.rollbacks,
            resets=state.resets,
            model_version=state.model_version,
            decisions=list(state.decisions),
            history=list(state.history),
            **extra,
        )
