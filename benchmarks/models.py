"""The models every benchmark runs, by name: the same factories for the bare loop, the engine
(as ``model.factory``), the service and the peers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from river import forest, linear_model, preprocessing, tree


def logistic() -> Any:
    return preprocessing.StandardScaler() | linear_model.LogisticRegression()


def hoeffding_tree() -> Any:
    return tree.HoeffdingTreeClassifier()


def adaptive_random_forest() -> Any:
    return forest.ARFClassifier(n_models=10, seed=42)


MODELS: dict[str, Callable[[], Any]] = {"lr": logistic, "ht": hoeffding_tree, "arf": adaptive_random_forest}
# For the engine's config (``model.factory``): the same models, by their function names here.
FACTORIES = {"lr": "logistic", "ht": "hoeffding_tree", "arf": "adaptive_random_forest"}
LABELS = {
    "lr": "StandardScaler|LogisticRegression",
    "ht": "HoeffdingTreeClassifier",
    "arf": "ARFClassifier(10)",
}
