from __future__ import annotations

import re
import sys

import pytest
from river import linear_model, preprocessing

from stream.config import Config, ModelConfig
from stream.errors import ConfigError, ModelError
from stream.models import build_model, check_config, predict_one_is_argmax, resolve_river_class


def test_class_paths_resolve_inside_river_only():
    assert resolve_river_class("linear_model.LogisticRegression") is linear_model.LogisticRegression
    assert resolve_river_class("river.preprocessing.StandardScaler") is preprocessing.StandardScaler
    for outside in ("os.system", "subprocess.Popen", "builtins.eval", "../x.Y"):
        with pytest.raises(ModelError):
            resolve_river_class(outside)


def test_unknown_class_or_parameter_is_a_clear_error():
    with pytest.raises(ModelError, match="has no class 'Nope'"):
        build_model(ModelConfig(pipeline=["linear_model.Nope"]))
    with pytest.raises(ModelError, match=r"cannot build linear_model\.LogisticRegression"):
        build_model(ModelConfig(pipeline=[{"linear_model.LogisticRegression": {"learning_rate": 1}}]))


def test_the_model_must_fit_the_task():
    with pytest.raises(ModelError, match="task 'regression' needs a Regressor"):
        build_model(ModelConfig(task="regression", pipeline=["linear_model.LogisticRegression"]))
    with pytest.raises(ModelError, match="binary only"):
        build_model(ModelConfig(task="multiclass", pipeline=["linear_model.LogisticRegression"]))
    build_model(ModelConfig(task="anomaly", pipeline=["anomaly.HalfSpaceTrees"]))


def test_a_factory_builds_user_code(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(
        "from river import tree\n"
        "def make():\n    return tree.HoeffdingTreeClassifier(grace_period=50)\n"
        "def not_a_model():\n    return 42\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model(ModelConfig(factory="my_models:make"))
    assert model.grace_period == 50
    with pytest.raises(ModelError, match="not a River estimator"):
        build_model(ModelConfig(factory="my_models:not_a_model"))
    sys.modules.pop("my_models", None)


def test_argmax_shortcut_only_where_predict_one_is_the_default():
    assert predict_one_is_argmax(build_model(ModelConfig(pipeline=["tree.HoeffdingTreeClassifier"])))
    one_vs_one = {"multiclass.OneVsOneClassifier": {"classifier": {"linear_model.LogisticRegression": {}}}}
    assert not predict_one_is_argmax(build_model(ModelConfig(task="multiclass", pipeline=[one_vs_one])))
    # Regressors have their own predict_one; anomaly detectors none at all.
    others = [("regression", "linear_model.LinearRegression"), ("anomaly", "anomaly.HalfSpaceTrees")]
    for task, estimator in others:
        assert not predict_one_is_argmax(build_model(ModelConfig(task=task, pipeline=[estimator])))


# -- check_config: what serve, replay and `config --check` build and try before they start ---------

FACTORIES = """
import os
from subprocess import run
from river import compose, linear_model, preprocessing

system = os.system

def text_for_a_number():
    return linear_model.LogisticRegression(l2="abc")

def squares_age(x):
    return {"age2": x["age"] ** 2}

def reads_a_named_feature():
    return compose.FuncTransformer(squares_age) | linear_model.LogisticRegression()

def unpicklable():
    return compose.FuncTransformer(lambda x: x) | linear_model.LogisticRegression()

def needs_an_argument(l2):
    return linear_model.LogisticRegression(l2=l2)

def fails():
    raise RuntimeError("no model today")

def a_regressor():
    return linear_model.LinearRegression()
"""


@pytest.fixture
def user_factories(tmp_path, monkeypatch):
    (tmp_path / "user_factories.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "user_factories"
    sys.modules.pop("user_factories", None)


def _check(**sections):
    check_config(Config.model_validate(sections))


@pytest.mark.parametrize(
    ("factory", "reason"),
    [
        ("os:system", "'os:system' is in the standard library"),
        ("subprocess:run", "'subprocess:run' is in the standard library"),
        ("builtins:print", "'builtins:print' is in the standard library"),
        ("user_factories:system", "'user_factories:system' is a builtin_function_or_method, not a function"),
        ("user_factories:run", "'user_factories:run' is subprocess.run, of the standard library"),
        ("user_factories:compose", "'user_factories:compose' is a module, not a function"),
        ("river.linear_model:LogisticRegression", "is a class, not a function"),
        ("user_factories:needs_an_argument", "cannot be called without arguments: missing a required"),
        ("user_factories:nothing", "module 'user_factories' has no 'nothing'"),
        ("no_such_module:make", "cannot import factory module 'no_such_module'"),
        ("user_factories:fails", "'user_factories:fails' raised RuntimeError('no model today')"),
        (
            "user_factories:a_regressor",
            "task 'binary' needs a Classifier; the model ends with LinearRegression",
        ),
        ("user_factories:text_for_a_number", "the model fails on a trial event"),
        ("user_factories:unpicklable", "resets clone the model and snapshots pickle it, which fails"),
    ],
)
def test_a_factory_is_a_function_of_user_code_that_returns_a_working_model(factory, reason, user_factories):
    with pytest.raises(ConfigError, match=rf"^model\.factory: .*{re.escape(reason)}"):
        _check(model={"factory": factory})


def test_a_model_reading_a_feature_the_trial_events_lack_passes(user_factories):
    _check(model={"factory": "user_factories:reads_a_named_feature"})


def test_a_parameter_of_the_wrong_kind_is_refused_with_its_step():
    with pytest.raises(
        ConfigError, match=r"^model\.pipeline\[1\]: .* parameter 'l2' takes a number, got 'abc'$"
    ):
        _check(
            model={
                "pipeline": [
                    "preprocessing.StandardScaler",
                    {"linear_model.LogisticRegression": {"l2": "abc"}},
                ]
            }
        )
    with pytest.raises(
        ConfigError, match=r"^model\.pipeline\[0\]: .* 'with_std' takes true or false, got 'no'$"
    ):
        _check(
            model={
                "pipeline": [
                    {"preprocessing.StandardScaler": {"with_std": "no"}},
                    "linear_model.LogisticRegression",
                ]
            }
        )
    nested = {
        "ensemble.BaggingClassifier": {"model": {"tree.HoeffdingTreeClassifier": {"grace_period": "50"}}}
    }
    with pytest.raises(
        ConfigError, match=r"^model\.pipeline\[0\]: tree\.HoeffdingTreeClassifier parameter 'grace_period'"
    ):
        _check(model={"pipeline": [nested]})
    # A number by default, but text is allowed too (the annotation says so): the model decides.
    _check(
        model={
            "task": "multiclass",
            "pipeline": [{"ensemble.SRPClassifier": {"subspace_size": "sqrt", "n_models": 2}}],
        }
    )


@pytest.mark.parametrize(
    ("task", "names", "reason"),
    [
        ("binary", ["Foo"], "unknown metric 'Foo'"),
        ("binary", ["base"], "unknown metric 'base'"),
        ("binary", ["ConfusionMatrix"], "ConfusionMatrix cannot be used as a metric: NotImplementedError()"),
        ("multiclass", ["ClassificationReport"], "ClassificationReport cannot be used as a metric"),
        ("binary", ["MAE"], "MAE is not a classification metric, which task 'binary' needs"),
        ("multiclass", ["F1"], "F1 is not a multi-class metric, which task 'multiclass' needs"),
        ("regression", ["Accuracy", "MAE"], "Accuracy is not a regression metric"),
        ("anomaly", ["Accuracy"], "Accuracy is not a binary metric of scores"),
        ("anomaly", ["F1"], "F1 needs labels; an anomaly detector gives scores"),
    ],
)
def test_a_metric_must_score_the_tasks_predictions(task, names, reason):
    with pytest.raises(ConfigError, match=rf"^metrics\.names: {re.escape(reason)}"):
        _check(model={"task": task, "pipeline": [TASK_MODELS[task]]}, metrics={"names": names})


TASK_MODELS = {
    "binary": "linear_model.LogisticRegression",
    "multiclass": "tree.HoeffdingTreeClassifier",
    "regression": "linear_model.LinearRegression",
    "anomaly": "anomaly.HalfSpaceTrees",
}


@pytest.mark.parametrize(
    ("task", "names"),
    [
        ("binary", ["Accuracy", "ROCAUC", "F1", "LogLoss", "MCC"]),
        ("multiclass", ["Accuracy", "MacroF1", "CohenKappa"]),
        ("regression", ["MAE", "RMSE", "R2"]),
        ("anomaly", ["ROCAUC"]),
    ],
)
def test_the_usual_metrics_pass(task, names):
    _check(model={"task": task, "pipeline": [TASK_MODELS[task]]}, metrics={"names": names})


@pytest.mark.parametrize(
    ("task", "detector", "reason"),
    [
        ("binary", "drift.datasets.AirlinePassengers", "is not a drift detector"),
        ("binary", "drift.DriftRetrainingClassifier", "is not a drift detector"),
        ("binary", "linear_model.LogisticRegression", "is not a drift detector"),
        ("binary", "drift.Nope", "'river.drift' has no class 'Nope'"),
        ("binary", {"drift.ADWIN": {"delta": "small"}}, "drift.ADWIN parameter 'delta' takes a number"),
        ("regression", "drift.binary.DDM", "drift.binary.DDM takes 0/1 input"),
    ],
)
def test_the_detector_must_be_a_river_drift_detector_fit_for_the_loss(task, detector, reason):
    pipeline = "linear_model.LinearRegression" if task == "regression" else "linear_model.LogisticRegression"
    with pytest.raises(ConfigError, match=rf"^drift\.detector: .*{re.escape(reason)}"):
        _check(model={"task": task, "pipeline": [pipeline]}, drift={"detector": detector})


def test_the_default_config_and_every_task_pass(tmp_path):
    _check(snapshots={"directory": str(tmp_path / "snapshots")})
    _check(
        model={"task": "multiclass", "pipeline": ["tree.HoeffdingTreeClassifier"]},
        drift={"detector": "drift.binary.DDM"},
    )
    _check(
        model={
            "task": "regression",
            "pipeline": ["preprocessing.StandardScaler", "linear_model.LinearRegression"],
        }
    )
    _check(model={"task": "anomaly", "pipeline": ["anomaly.HalfSpaceTrees"]})
