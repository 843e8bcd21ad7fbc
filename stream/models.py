"""Build River estimators from configuration.

A pipeline is a list of River class paths, each with optional parameters, resolved only inside
the ``river`` package (a config file cannot name arbitrary code that way). User code comes in
explicitly through ``factory: "module:function"``.

>>> model = build_model(ModelConfig(task="binary", pipeline=[
...     "preprocessing.StandardScaler", {"linear_model.LogisticRegression": {"l2": 0.01}}]))
>>> [type(step).__name__ for step in model.steps.values()]
['StandardScaler', 'LogisticRegression']
>>> model['LogisticRegression'].l2
0.01

Nested estimators are written the same way, as a one-key mapping:

>>> build_model(ModelConfig(task="multiclass", pipeline=[
...     {"ensemble.BaggingClassifier": {"model": {"tree.HoeffdingTreeClassifier": {}},
...                                     "n_models": 3, "seed": 1}}])).n_models
3
"""

from __future__ import annotations

import functools
import importlib
import operator
import re
from typing import Any

from river import base

from stream.config import ModelConfig, StepSpec, Task
from stream.errors import ModelError

_CLASS_PATH = re.compile(r"^(river\.)?([a-z_][a-z0-9_]*\.)+[A-Z][A-Za-z0-9_]*$")


def resolve_river_class(path: str) -> type:
    """``"linear_model.LogisticRegression"`` (or ``"river.linear_model..."``) -> the class."""
    if not _CLASS_PATH.match(path):
        raise ModelError(f"{path!r} is not a River class path like 'linear_model.LogisticRegression'")
    module_path, _, class_name = path.removeprefix("river.").rpartition(".")
    try:
        module = importlib.import_module(f"river.{module_path}")
    except ImportError:
        raise ModelError(f"River has no module 'river.{module_path}' (in {path!r})") from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise ModelError(f"'river.{module_path}' has no class {class_name!r}")
    return cls


def _build_value(value: Any) -> Any:
    if isinstance(value, dict) and len(value) == 1:
        ((name, params),) = value.items()
        if isinstance(name, str) and _CLASS_PATH.match(name) and isinstance(params, dict | None):
            return build_step({name: params or {}})
    if isinstance(value, list):
        return [_build_value(item) for item in value]
    return value


def build_step(spec: StepSpec) -> Any:
    """One River object from ``"module.Class"`` or ``{"module.Class": {param: value}}``."""
    if isinstance(spec, str):
        path, params = spec, {}
    elif len(spec) == 1:
        ((path, params),) = spec.items()
    else:
        raise ModelError(f"a step is one 'module.Class' key with its parameters, got {list(spec)}")
    cls = resolve_river_class(path)
    kwargs = {name: _build_value(value) for name, value in (params or {}).items()}
    try:
        return cls(**kwargs)
    except TypeError as error:
        raise ModelError(f"cannot build {path} with {sorted(kwargs)}: {error}") from None


def _call_factory(reference: str) -> Any:
    module_name, _, function_name = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ModelError(f"cannot import factory module {module_name!r}: {error}") from None
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise ModelError(f"{reference!r}: {module_name} has no callable {function_name!r}")
    return factory()


def check_task(model: Any, task: Task) -> None:
    """Refuse a model that cannot do the configured task."""
    expected = {
        "binary": base.Classifier,
        "multiclass": base.Classifier,
        "regression": base.Regressor,
        "anomaly": base.AnomalyDetector,
    }[task]
    final = model[-1] if hasattr(model, "steps") else model
    if not isinstance(final, expected):
        raise ModelError(
            f"task {task!r} needs a {expected.__name__}; the model ends with {type(final).__name__}"
        )
    if task == "multiclass" and not final._multiclass:
        raise ModelError(f"{type(final).__name__} is binary only; it cannot do task 'multiclass'")


def build_model(config: ModelConfig) -> Any:
    """The estimator the config describes, checked against its task."""
    if config.factory is not None:
        model = _call_factory(config.factory)
        if not isinstance(model, base.Estimator):
            raise ModelError(
                f"factory {config.factory!r} returned {type(model).__name__}, not a River estimator"
            )
    else:
        model = functools.reduce(operator.or_, (build_step(step) for step in config.pipeline))
    check_task(model, config.task)
    return model


def predict_one_is_argmax(model: Any) -> bool:
    """True when ``predict_one`` is River's default argmax of ``predict_proba_one``.

    Then one ``predict_proba_one`` call gives both the label and the probabilities, with the
    same tie-breaking as ``predict_one`` (``max`` over the same dict order).
    """
    final = model[-1] if hasattr(model, "steps") else model
    return type(final).predict_one is base.Classifier.predict_one
