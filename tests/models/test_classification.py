"""ROC AUC and decision accuracy: one definition for training, evaluation and benchmarks, checked against sklearn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from models.classification import classification_accuracy, classification_metrics, roc_auc


@pytest.mark.parametrize("trial", range(12))
def test_roc_auc_matches_sklearn_with_and_without_ties(trial):
    rng = np.random.default_rng(trial)
    n = int(rng.integers(2, 200))
    labels = rng.integers(0, 2, n)
    if labels.min() == labels.max():
        labels[0] = 1 - labels[0]
    scores = rng.integers(0, 6, n) / 5.0 if trial % 2 else rng.random(n)  # heavy ties every other trial
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_roc_auc_edges_and_refusals():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert roc_auc([1, 1, 1], [0.1, 0.2, 0.3]) is None  # undefined with one class: None, never NaN
    with pytest.raises(ValueError, match="same length"):
        roc_auc([0, 1], [0.5])
    with pytest.raises(ValueError, match="0 or 1"):
        roc_auc([0, 2], [0.5, 0.6])


def test_accuracy_uses_the_threshold_inclusively_like_assess():
    assert classification_accuracy([1, 0, 1, 0], [0.5, 0.49, 0.2, 0.9], threshold=0.5) == pytest.approx(0.5)
    assert classification_accuracy([], [], threshold=0.5) is None
    metrics = classification_metrics(np.array([1, 0, 1]), np.array([0.9, 0.2, 0.4]), threshold=0.5)
    assert metrics == {"accuracy": pytest.approx(2 / 3), "auc": 1.0, "n": 3, "n_positive": 2}
    assert classification_metrics(np.array([1, 1]), np.array([0.9, 0.4]))["auc"] is None
