"""Drift policy: watch the model's per-event loss, and after a drift choose the model to go on with.

The detector (any class from ``river.drift`` or ``river.drift.binary``) is fed the loss of each
labelled event: the 0/1 error for classifiers, the absolute error for regressors. A detector
signals a drift some events after the change, so a window of the last events before the signal
still mostly shows the old concept. The decision therefore waits: after a drift the monitor
collects the next W labelled events (the buffer), with the current model's prequential loss on
each, then scores the candidates on that buffer, lower mean loss winning:

- ``current``: its recorded prequential loss on the buffer (it saw each event after predicting it);
- ``snapshot:<id>``: each of the last N snapshots, predicting the buffer (it never learned it);
- ``fresh``: a new model run prequentially over the buffer (and kept, trained on it);
- ``challenger``: a new model trained since the warning, scored by its own prequential loss.

Which candidates compete depends on the policy: ``reset`` takes ``fresh``, ``rollback`` the best
snapshot, ``best`` the best of all (ties keep the current model).

>>> from stream.config import DriftConfig
>>> monitor = DriftMonitor.create(DriftConfig(detector="drift.binary.DDM", buffer_size=50), "binary")
>>> signals = [monitor.update({"a": 1}, True, 0.0) for _ in range(100)]
>>> signals.count(NO_SIGNAL), monitor.detector.__class__.__name__, monitor.buffer.maxlen
(100, 'DDM', 50)

The monitor is state only: the configuration is applied to it when it is made and again on
every restore, so a restarted service follows the configuration it was started with.

>>> monitor.configure(DriftConfig(detector="drift.binary.DDM", buffer_size=80)).buffer.maxlen
80
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stream.config import DriftConfig, PolicyName, Task
from stream.models import build_detector

NO_SIGNAL = "none"
WARNING = "warning"
DRIFT = "drift"
DECIDE = "decide"  # the buffer after a drift is full: time to choose


def loss_of(task: Task, y: Any, y_pred: Any) -> float:
    """0/1 error for classifiers (no prediction counts as an error), absolute error for regressors."""
    if task == "regression":
        return abs(y - y_pred) if y_pred is not None else abs(y)
    return 0.0 if y_pred == y else 1.0


@dataclass
class Decision:
    """What the policy decided at one drift, with every candidate's mean loss on the buffer."""

    event: int
    policy: str
    candidates: dict[str, float]
    winner: str
    action: str  # keep | rollback | reset | challenger
    buffer_size: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "policy": self.policy,
            "candidates": self.candidates,
            "winner": self.winner,
            "action": self.action,
            "buffer_size": self.buffer_size,
        }


@dataclass
class DriftMonitor:
    """The detector, the scoring buffer and the challenger of one model (pickled with it).

    Holds no configuration: :meth:`configure` applies it (buffer size, detector) on creation and
    on every restore; the policy is passed to :meth:`choose`.
    """

    task: Task
    detector: Any
    buffer: deque = field(default_factory=deque)
    challenger: Any = None
    challenger_losses: list[float] = field(default_factory=list)
    in_warning: bool = False
    deciding: bool = False

    @classmethod
    def create(cls, config: DriftConfig, task: Task) -> DriftMonitor:
        return cls(task, build_detector(config.detector, task)).configure(config)

    def configure(self, config: DriftConfig) -> DriftMonitor:
        """Apply ``config`` to this state: the buffer's size, and the detector if it changed.

        A detector of another class or with other parameters starts afresh (its statistics
        belong to the old one); the same detector keeps what it has seen.
        """
        configured = build_detector(config.detector, self.task)
        if type(configured) is not type(self.detector) or (
            configured._get_params() != self.detector._get_params()
        ):
            self.detector = configured
        self.buffer = deque(self.buffer, maxlen=config.buffer_size)
        return self

    def update(self, x: dict, y: Any, loss: float) -> str:
        """Feed one labelled event's loss.

        Returns ``warning`` on entering a warning zone, ``drift`` on a drift, ``decide`` when the
        buffer after a drift is full (``choose`` is then due), ``none`` otherwise.
        """
        if self.challenger is not None:
            self.challenger_losses.append(loss_of(self.task, y, self.challenger.predict_one(x)))
            self.challenger.learn_one(x, y)
        detector = self.detector
        detector.update(loss)
        if detector.drift_detected:
            self.in_warning = False
            self.deciding = True
            self.buffer.clear()
            return DRIFT
        if self.deciding:
            self.buffer.append((x, y, loss))
            if len(self.buffer) == self.buffer.maxlen:
                self.deciding = False
                return DECIDE
        warning = getattr(detector, "warning_detected", False)
        if warning and not self.in_warning:
            self.in_warning = True
            return WARNING
        if not warning and self.in_warning:
            self.in_warning = False
            if not self.deciding:
                self.challenger, self.challenger_losses = None, []
        return NO_SIGNAL

    def start_challenger(self, fresh_model: Any) -> None:
        self.challenger, self.challenger_losses = fresh_model, []

    def _score_on_buffer(self, model: Any) -> float:
        return sum(loss_of(self.task, y, model.predict_one(x)) for x, y, _ in self.buffer) / len(self.buffer)

    def _train_fresh_on_buffer(self, fresh_model: Any) -> float:
        losses = 0.0
        for x, y, _ in self.buffer:
            losses += loss_of(self.task, y, fresh_model.predict_one(x))
            fresh_model.learn_one(x, y)
        return losses / len(self.buffer)

    def choose(
        self,
        policy: PolicyName,
        event: int,
        current: Any,
        snapshots: list[tuple[str, Callable[[], Any]]],
        fresh_model: Any,
    ) -> tuple[Decision, Any]:
        """Score the policy's candidates on the buffer; return the decision and the winning model.

        ``snapshots`` are (id, loader) pairs, loaded only when the policy needs them.
        """
        scores: dict[str, float] = {}
        models: dict[str, Any] = {"current": current}
        if self.buffer:  # nothing to score candidates on: the current model stays
            if policy == "best":
                scores["current"] = sum(loss for *_, loss in self.buffer) / len(self.buffer)
            if policy in ("rollback", "best"):
                for snapshot_id, load in snapshots:
                    model = load()
                    if model is not None:
                        scores[f"snapshot:{snapshot_id}"] = self._score_on_buffer(model)
                        models[f"snapshot:{snapshot_id}"] = model
            if policy in ("reset", "best"):
                scores["fresh"] = self._train_fresh_on_buffer(fresh_model)
                models["fresh"] = fresh_model
            if policy == "best" and self.challenger is not None and self.challenger_losses:
                scores["challenger"] = sum(self.challenger_losses) / len(self.challenger_losses)
                models["challenger"] = self.challenger
        # The first minimum: the current model wins ties, and stays when nothing was scored.
        winner = min(scores, key=scores.__getitem__, default="current")
        action = (
            "keep"
            if winner == "current"
            else "rollback"
            if winner.startswith("snapshot:")
            else "reset"
            if winner == "fresh"
            else "challenger"
        )
        decision = Decision(
            event, policy, {k: round(v, 6) for k, v in scores.items()}, winner, action, len(self.buffer)
        )
        return decision, models[winner]

    def after_decision(self, switched: bool) -> None:
        """The decision is made: the buffer and challenger are spent; a new model gets a new detector."""
        if switched:
            self.detector = self.detector.clone()
        self.buffer.clear()
        self.challenger, self.challenger_losses = None, []
        self.in_warning = False
        self.deciding = False
