"""Cumulative and rolling River metrics, updated the way ``progressive_val_score`` updates them.

A metric that needs labels gets ``y_pred``; one that needs probabilities (ROCAUC, LogLoss) gets
``y_proba`` (or the anomaly score). No update happens while the model cannot predict yet.

>>> tracker = MetricTracker(["Accuracy"], rolling_window=2)
>>> for y, y_pred in [(True, True), (True, False), (False, False)]:
...     tracker.update(y, y_pred, None)
>>> tracker.values()
{'Accuracy': 0.666..., 'Accuracy (rolling 2)': 0.5}

:func:`check_metrics` refuses, naming the key, what cannot score the task's predictions:

>>> check_metrics(["ConfusionMatrix"], "binary")
Traceback (most recent call last):
...
stream.errors.MetricError: metrics.names: ConfusionMatrix cannot be used as a metric: NotImplementedError()
"""

from __future__ import annotations

import numbers
from typing import Any

from river import metrics, utils

from stream.config import Task
from stream.errors import MetricError


def _metric_class(name: str) -> type[metrics.base.Metric]:
    cls = getattr(metrics, name, None)
    if not (isinstance(cls, type) and issubclass(cls, metrics.base.Metric)):
        raise MetricError(f"metrics.names: unknown metric {name!r} (not a metric of river.metrics)")
    return cls


# The kind of metric each task's predictions can be scored with.
_METRIC_KINDS: dict[Task, tuple[type[metrics.base.Metric], str]] = {
    "binary": (metrics.base.ClassificationMetric, "a classification metric"),
    "multiclass": (metrics.base.MultiClassMetric, "a multi-class metric"),
    "regression": (metrics.base.RegressionMetric, "a regression metric"),
    "anomaly": (metrics.base.BinaryMetric, "a binary metric of scores (such as ROCAUC)"),
}
# Three updates as the engine makes them for each task, (y, y_pred, y_proba or anomaly score):
# with a rolling window of two, the third also reverts the first.
_TRIAL_UPDATES: dict[Task, tuple[tuple[Any, Any, Any], ...]] = {
    "binary": (
        (True, True, {False: 0.25, True: 0.75}),
        (False, True, {False: 0.4, True: 0.6}),
        (False, False, {False: 0.7, True: 0.3}),
    ),
    "multiclass": (
        ("a", "a", {"a": 0.75, "b": 0.25}),
        ("b", "a", {"a": 0.6, "b": 0.4}),
        ("b", "b", {"a": 0.3, "b": 0.7}),
    ),
    "regression": ((1.0, 1.5, None), (2.0, 1.0, None), (3.0, 2.5, None)),
    "anomaly": ((True, None, 0.75), (False, None, 0.25), (False, None, 0.5)),
}


def check_metrics(names: list[str], task: Task) -> None:
    """Refuse a metric that is unknown, is not of the task's kind, or does not give a number when
    updated as the engine updates it (``ConfusionMatrix`` is a metric class with no value)."""
    kind, kind_name = _METRIC_KINDS[task]
    for name in names:
        if not issubclass(_metric_class(name), kind):
            raise MetricError(f"metrics.names: {name} is not {kind_name}, which task {task!r} needs")
        try:
            tracker = MetricTracker([name], rolling_window=2)
            for update in _TRIAL_UPDATES[task]:
                tracker.update(*update)
            values = tracker.values().values()
        except Exception as error:  # whatever the metric raises, it would raise on every event
            raise MetricError(f"metrics.names: {name} cannot be used as a metric: {error!r}") from None
        if task == "anomaly" and not tracker._uses_proba[0]:
            raise MetricError(f"metrics.names: {name} needs labels; an anomaly detector gives scores")
        if any(isinstance(value, bool) or not isinstance(value, numbers.Real) for value in values):
            raise MetricError(f"metrics.names: {name} gives no number: {list(values)}")


class MetricTracker:
    """Tracks each configured metric over the whole stream and over a rolling window."""

    def __init__(self, names: list[str], rolling_window: int) -> None:
        self.names = list(names)
        self.rolling_window = rolling_window
        self.cumulative = [_metric_class(name)() for name in names]
        self.rolling = [utils.Rolling(_metric_class(name), window_size=rolling_window) for name in names]
        # Classification metrics such as ROCAUC score probabilities; regression metrics have no
        # ``requires_labels`` and take the prediction, as in ``progressive_val_score``.
        self._uses_proba = [not getattr(metric, "requires_labels", True) for metric in self.cumulative]

    def update(self, y: Any, y_pred: Any, y_proba: Any) -> None:
        for cumulative, rolling, uses_proba in zip(
            self.cumulative, self.rolling, self._uses_proba, strict=True
        ):
            prediction = y_proba if uses_proba else y_pred
            if prediction is None or prediction == {}:
                continue
            cumulative.update(y, prediction)
            rolling.update(y, prediction)

    def values(self) -> dict[str, float]:
        result: dict[str, float] = {}
        for name, cumulative, rolling in zip(self.names, self.cumulative, self.rolling, strict=True):
            result[name] = cumulative.get()
            result[f"{name} (rolling {self.rolling_window})"] = rolling.get()
        return result

    @property
    def primary_rolling(self) -> tuple[str, float]:
        """The first metric's rolling value: what status lines and charts show."""
        return f"{self.names[0]} (rolling {self.rolling_window})", self.rolling[0].get()
