"""The prequential engine: for each event predict, emit the prediction, then learn.

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

import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from pydantic import BaseModel

from stream.config import Config
from stream.drift import DECIDE, DRIFT, WARNING, DriftMonitor, loss_of
from stream.events import Event, InvalidEvent
from stream.metrics import MetricTracker
from stream.models import build_model, predict_one_is_argmax
from stream.snapshots import Reason, SnapshotError, SnapshotManifest, SnapshotStore

logger = logging.getLogger(__name__)

MAX_DECISIONS_KEPT = 1000
# The newest points of the metric history kept: it is pickled into every snapshot, so it must not
# grow with the stream (a point every 500 labels at 1,000 labels/s is 172,800 points a day).
MAX_HISTORY_KEPT = 1000
# Snapshots that mark a concept and compete when a drift is decided; periodic checkpoints would
# crowd them out of the last N.
CANDIDATE_REASONS = frozenset({"warning", "drift", "manual"})


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
    recent_snapshots: deque = field(default_factory=deque)
    offsets: dict[str, int] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)


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
        self.state = state or self.new_state()
        self._configure()
        self._bind_model()

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

    def process(self, event: Event, emit: Callable[[dict[str, Any]], Any] | None = None) -> dict[str, Any]:
        """Predict, hand the prediction to ``emit``, then learn from the label if there is one.

        An event the model cannot use (say, a string feature for a linear model) raises
        :class:`InvalidEvent` with the model's reason, for the caller to dead-letter. Models are
        deterministic, so a recovery that replays the same event fails the same way.
        """
        try:
            prediction = self.predict(event)
        except Exception as error:
            raise InvalidEvent(
                f"the model cannot predict this event: {type(error).__name__}: {error}"
            ) from error
        if emit is not None:
            emit(prediction)
        self.learn(event, prediction)
        return prediction

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
            if self.task == "anomaly":
                state.model.learn_one(event.x)
            elif y is not None:
                state.model.learn_one(event.x, y)
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
        classifier = self.task in ("binary", "multiclass")
        self._argmax = classifier and predict_one_is_argmax(self.state.model)

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
        state = self.state
        sequence = state.next_sequence
        snapshot_id = f"{sequence:08d}-{reason}"
        parent = state.last_snapshot_id
        state.next_sequence += 1
        state.snapshots += 1
        state.last_snapshot_id = snapshot_id
        if reason in CANDIDATE_REASONS:
            state.recent_snapshots.append(snapshot_id)
        return self.store.save(
            state,
            reason,
            sequence=sequence,
            parent=parent,
            events_seen=state.events,
            labelled_seen=state.labelled,
            model_version=state.model_version,
            offsets=dict(state.offsets),
            metrics=_finite(state.metrics.values()),
            note=note,
        )

    def rollback(self, snapshot_id: str) -> SnapshotManifest:
        """Make a stored snapshot's model the current one (a manual rollback)."""
        restored = self.store.load(snapshot_id)
        self._switch_model(restored.model)
        self.state.rollbacks += 1
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
