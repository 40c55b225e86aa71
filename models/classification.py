"""Classification metrics of a binary quality classifier: ROC AUC and the accuracy of the service's decision rule.

One definition for training (``models.train``), evaluation (``models.evaluation``) and the benchmarks. An undefined
value (AUC with one class present, accuracy of no images) is ``None``, never NaN, so it survives JSON.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


def roc_auc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float | None:
    """Area under the ROC curve by ranks (Mann–Whitney U / (n_pos · n_neg)), ties as mid-ranks.

    ``None`` when only one class is present (the AUC is undefined).
    """
    from scipy.stats import rankdata

    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D of the same length, got {y.shape} and {s.shape}")
    if not np.all(np.isin(y, (0, 1))):
        raise ValueError("labels must be 0 or 1")
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(s)  # average ranks for ties
    u = float(ranks[y == 1].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def classification_accuracy(labels: npt.ArrayLike, probabilities: npt.ArrayLike, threshold: float) -> float | None:
    """Share of images whose decision (positive iff probability >= threshold, as /assess decides) matches the label."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    if y.shape != p.shape:
        raise ValueError("labels and probabilities must have the same length")
    if y.size == 0:
        return None
    return float(np.mean((p >= threshold).astype(np.int64) == y))


def classification_metrics(labels: npt.ArrayLike, probs: npt.ArrayLike, threshold: float = 0.5) -> dict[str, Any]:
    """Accuracy of ``P(positive) >= threshold`` (the service's decision rule) and ROC AUC."""
    labels = np.asarray(labels).astype(int)
    return {
        "accuracy": classification_accuracy(labels, probs, threshold),
        "auc": roc_auc(labels, probs),
        "n": int(labels.size),
        "n_positive": int(labels.sum()),
    }
