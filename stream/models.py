"""Build River estimators from configuration.

A pipeline is a list of River class paths, each with optional parameters, resolved only inside
the ``river`` package (a config file cannot name arbitrary code that way). User code comes in
explicitly through ``factory: "module:function"``: a function of the user's own module (never one
of the standard library), called without arguments, whose result must be a River estimator.

:func:`check_config` builds and tries everything a configuration describes (model, metrics,
drift detector, snapshot directory) before a service or replay starts; every error names its key.

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

Every error names the key it concerns:

>>> check_config(Config.model_validate({"model": {"pipeline": [
...     "preprocessing.StandardScaler", {"linear_model.LogisticRegression": {"l2": "abc"}}]}}))
Traceback (most recent call last):
...
stream.errors.ConfigError: model.pipeline[1]: ... parameter 'l2' takes a number, got 'abc'
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import operator
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from river import base

from stream import pickling
from stream.config import Config, ModelConfig, StepSpec, Task, check_snapshot_directory
from stream.errors import ConfigError, MetricError, ModelError
from stream.metrics import check_metrics
from stream.snapshots import check_signing_key
from stream.storage import check_snapshot_bucket

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


def _admits_text(annotation: Any) -> bool:
    """Whether a parameter's annotation (River's are mostly strings) lets it take a str."""
    return re.search(r"\bstr\b|Literal", str(annotation)) is not None


def _check_parameters(cls: type, path: str, params: dict[str, Any]) -> None:
    """Refuse text for a parameter whose default is a number or a boolean (a quoted number, a
    typo) unless its annotation allows text: River would take it and fail on every event."""
    try:
        parameters = inspect.signature(cls).parameters
    except (TypeError, ValueError):  # no signature to read: the constructor decides
        return
    for name, value in params.items():
        parameter = parameters.get(name)
        if parameter is None or not isinstance(value, str) or _admits_text(parameter.annotation):
            continue
        if isinstance(parameter.default, bool | int | float):
            kind = "true or false" if isinstance(parameter.default, bool) else "a number"
            raise ModelError(f"{path} parameter {name!r} takes {kind}, got {value!r}")


def build_step(spec: StepSpec) -> Any:
    """One River object from ``"module.Class"`` or ``{"module.Class": {param: value}}``."""
    if isinstance(spec, str):
        path, params = spec, {}
    elif len(spec) == 1:
        ((path, params),) = spec.items()
    else:
        raise ModelError(f"a step is one 'module.Class' key with its parameters, got {list(spec)}")
    cls = resolve_river_class(path)
    _check_parameters(cls, path, params or {})
    kwargs = {name: _build_value(value) for name, value in (params or {}).items()}
    try:
        return cls(**kwargs)
    except TypeError as error:
        raise ModelError(f"cannot build {path} with {sorted(kwargs)}: {error}") from None


def _in_standard_library(module_name: str) -> bool:
    top_level = module_name.partition(".")[0]
    return top_level in sys.stdlib_module_names or top_level in sys.builtin_module_names


def _factory_function(reference: str) -> Callable[[], Any]:
    """The function ``module:function`` names, if a factory may be it: a Python function (not a
    class, builtin or other callable) outside the standard library, that needs no arguments.
    So ``os:system`` or ``subprocess:run`` is refused before anything is called."""
    module_name, _, function_name = reference.partition(":")
    if _in_standard_library(module_name):
        raise ModelError(f"{reference!r} is in the standard library; a factory is a function of your own")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # the user's module: whatever its import raises
        raise ModelError(f"cannot import factory module {module_name!r}: {error!r}") from None
    factory = getattr(module, function_name, None)
    if factory is None:
        raise ModelError(f"module {module_name!r} has no {function_name!r}")
    if not inspect.isfunction(factory):
        kind = "class" if isinstance(factory, type) else type(factory).__name__
        raise ModelError(f"{reference!r} is a {kind}, not a function")
    if _in_standard_library(factory.__module__ or ""):
        where = f"{factory.__module__}.{factory.__qualname__}"
        raise ModelError(f"{reference!r} is {where}, of the standard library")
    try:
        inspect.signature(factory).bind()
    except TypeError as error:
        raise ModelError(f"{reference!r} cannot be called without arguments: {error}") from None
    return factory


def _call_factory(reference: str) -> Any:
    factory = _factory_function(reference)
    try:
        model = factory()
    except Exception as error:  # user code: what it raises is the configuration's problem
        raise ModelError(f"{reference!r} raised {error!r}") from None
    if not isinstance(model, base.Estimator):
        raise ModelError(f"{reference!r} returned {type(model).__name__}, not a River estimator")
    return model


@contextlib.contextmanager
def _naming(key: str) -> Iterator[None]:
    """Prefix a :class:`ModelError` raised inside with the configuration key it concerns."""
    try:
        yield
    except ModelError as error:
        raise ModelError(f"{key}: {error}") from None


def _model_key(config: ModelConfig) -> str:
    return "model.factory" if config.factory is not None else "model.pipeline"


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
    """The estimator the config describes, checked against its task; errors name the key."""
    if config.factory is not None:
        with _naming("model.factory"):
            model = _call_factory(config.factory)
    else:
        steps = []
        for index, spec in enumerate(config.pipeline):
            with _naming(f"model.pipeline[{index}]"):
                steps.append(build_step(spec))
        model = functools.reduce(operator.or_, steps)
    with _naming(_model_key(config)):
        check_task(model, config.task)
    return model


def build_detector(spec: StepSpec, task: Task) -> Any:
    """The drift detector ``drift.detector`` describes: a class of ``river.drift`` or
    ``river.drift.binary`` (0/1 input, so not for a regression loss); errors name the key."""
    with _naming("drift.detector"):
        path = spec if isinstance(spec, str) else next(iter(spec), "")
        cls = resolve_river_class(path)
        if not issubclass(cls, base.DriftDetector | base.BinaryDriftDetector):
            raise ModelError(
                f"{path} is not a drift detector (a class from river.drift or river.drift.binary)"
            )
        if task == "regression" and issubclass(cls, base.BinaryDriftDetector):
            raise ModelError(f"{path} takes 0/1 input; a regression loss needs e.g. drift.ADWIN")
        return build_step(spec)


# Two events with numeric features, and labels of each task: every River estimator of the task
# takes them (each was tried, River 0.26), so a failure on them is the configuration's fault.
_TRIAL_FEATURES = ({"a": 1.0, "b": 2.0}, {"a": 2.0, "b": 0.5})
_TRIAL_LABELS: dict[Task, tuple[Any, Any]] = {
    "binary": (True, False),
    "multiclass": ("a", "b"),
    "regression": (1.0, 2.0),
    "anomaly": (True, False),
}


def _try_model(model: Any, task: Task) -> None:
    """Use ``model`` as the engine does: predict and learn two trial events, clone, pickle.

    A ``KeyError`` passes: the model reads a feature the trial events lack, which only real
    events can settle.
    """
    try:
        for x, y in zip(_TRIAL_FEATURES, _TRIAL_LABELS[task], strict=True):
            if task == "anomaly":
                model.score_one(x)
                model.learn_one(x)
                continue
            if task != "regression":
                model.predict_proba_one(x)
            model.predict_one(x)
            model.learn_one(x, y)
    except KeyError:
        pass
    except Exception as error:  # whatever the model raises: it would raise it on every event
        raise ModelError(f"the model fails on a trial event {x}: {error!r}") from None
    try:
        pickling.dumps(model.clone())
        pickling.dumps(model)
    except Exception as error:
        raise ModelError(f"resets clone the model and snapshots pickle it, which fails: {error!r}") from None


def _try_detector(detector: Any) -> None:
    """Feed ``detector`` trial losses, as the drift monitor does."""
    try:
        for loss in (0.0, 1.0, 0.0):
            detector.update(loss)
    except Exception as error:
        raise ModelError(f"drift.detector: fails on a trial loss: {error!r}") from None


def check_config(config: Config) -> None:
    """Build and try what ``config`` describes, as a service or replay would use it; raise
    :class:`ConfigError` with one line naming the key of the first problem.

    Without it such a problem surfaces inside the service loop, on every event or restore,
    where it looks like a passing failure and is retried for ever.
    """
    task = config.model.task
    try:
        model = build_model(config.model)
        with _naming(_model_key(config.model)):
            _try_model(model, task)
        check_metrics(config.metrics.resolved_names(task), task)
        if task != "anomaly":  # an anomaly detector has no loss to watch: no detector is built
            _try_detector(build_detector(config.drift.detector, task))
    except (ModelError, MetricError) as error:
        raise ConfigError(str(error)) from None
    if config.snapshots.in_s3:
        check_snapshot_bucket(config.snapshots)
    else:
        check_snapshot_directory(Path(config.snapshots.directory))
    check_signing_key(config.snapshots)
    if config.kafka.label_topic is not None and task == "anomaly":
        raise ConfigError(
            "kafka.label_topic: delayed labels are for supervised tasks (binary, multiclass, "
            "regression); an anomaly detector learns every event as it comes"
        )
    if config.kafka.label_topic is not None and config.service.guarantee != "exactly_once":
        raise ConfigError(
            "kafka.label_topic: delayed labels need service.guarantee exactly_once (the order of "
            "learning is written in the transaction that commits the offsets)"
        )
    if config.kafka.label_topic in (config.kafka.input_topic, *config.kafka.output_topics):
        raise ConfigError(
            f"kafka.label_topic: {config.kafka.label_topic!r} is already the input or an output topic"
        )


def predict_one_is_argmax(model: Any) -> bool:
    """True when ``predict_one`` is River's default argmax of ``predict_proba_one``.

    Then one ``predict_proba_one`` call gives both the label and the probabilities, with the
    same tie-breaking as ``predict_one`` (``max`` over the same dict order).
    """
    final = model[-1] if hasattr(model, "steps") else model
    return getattr(type(final), "predict_one", None) is base.Classifier.predict_one
