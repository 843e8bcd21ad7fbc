"""Cumulative and rolling River metrics, updated the way ``progressive_val_score`` updates them.

A metric that needs labels gets ``y_pred``; one that needs probabilities (ROCAUC, LogLoss) gets
``y_proba`` (or the anomaly score). No update happens while the model cannot predict yet.

>>> tracker = MetricTracker(["Accuracy"], rolling_window=2)
>>> for y, y_pred in [(True, True), (True, False), (False, False)]:
...     tracker.update(y, y_pred, None)
>>> tracker.values()
{'Accuracy': 0.666..., 'Accuracy (rolling 2)': 0.5}
"""

from __future__ import annotations

from typing import Any

from river import metrics, utils

from stream.errors import MetricError


def _metric_class(name: str) -> type[metrics.base.Metric]:
    cls = getattr(metrics, name, None)
    if not (isinstance(cls, type) and issubclass(cls, metrics.base.Metric)):
        raise MetricError(f"river.metrics has no metric {name!r}")
    return cls


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
