from __future__ import annotations

import sys

import pytest
from river import linear_model, preprocessing

from stream.config import ModelConfig
from stream.errors import ModelError
from stream.models import build_model, predict_one_is_argmax, resolve_river_class


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
