"""Evaluation metrics for binary and multi-class classifiers and regressions, in numpy (no scikit-learn).

:func:`roc_auc` is the area under the ROC curve computed from ranks (the
Mann-Whitney U statistic divided by n_pos * n_neg; Hanley and McNeil, Radiology
1982): tied scores get their average rank, so a tie between a positive and a
negative counts one half. :func:`accuracy` thresholds probabilities at 0.5, or at
a given threshold. :func:`youden_threshold` chooses the threshold that maximises
Youden's J = TPR - FPR (Youden, Cancer 1950) on validation data: on data with few
positives the accuracy at 0.5 mostly counts the majority class. A multi-class model is
scored by accuracy, balanced accuracy (mean per-class recall) and log loss; a regression by
RMSE, MAE and R².
"""

from __future__ import annotations

import numpy as np


class MetricError(ValueError):
    """Labels or scores that a metric cannot be computed from."""


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.shape != y.shape:
        raise MetricError(f"labels and scores must be vectors of one length, got {y.shape} and {s.shape}")
    if not np.all((y == 0) | (y == 1)):
        raise MetricError("labels must be 0 or 1")
    if not np.all(np.isfinite(s)):
        raise MetricError("scores must be finite")
    return y.astype(bool), s


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (vectorised)."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.concatenate(([True], ordered[1:] != ordered[:-1]))
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    last = np.concatenate((first[1:], [ordered.size])) - 1
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = (first[group] + last[group]) / 2.0 + 1.0
    return ranks


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative) + P(tie) / 2."""
    y, s = _check(labels, scores)
    positives = int(y.sum())
    negatives = y.size - positives
    if positives == 0 or negatives == 0:
        raise MetricError("the AUC needs at least one positive and one negative label")
    rank_sum = float(average_ranks(s)[y].sum())
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def accuracy(labels: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5) -> float:
    """Share of rows where (probability >= threshold) equals the label."""
    y, p = _check(labels, probabilities)
    return float(np.mean((p >= threshold) == y))


def balanced_accuracy(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> float:
    """Mean of the true positive rate and the true negative rate at ``threshold``."""
    y, p = _check(labels, probabilities)
    predicted = p >= threshold
    return float((np.mean(predicted[y]) + np.mean(~predicted[~y])) / 2.0)


def youden_threshold(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The score threshold (predict positive iff score >= it) with the largest TPR - FPR; ties: the highest.

    Vectorised over the distinct scores: sorted descending, each prefix is one candidate.
    """
    y, p = _check(labels, probabilities)
    positives = int(y.sum())
    negatives = y.size - positives
    if positives == 0 or negatives == 0:
        raise MetricError("choosing a threshold needs at least one positive and one negative label")
    order = np.argsort(-p, kind="mergesort")
    scores, truth = p[order], y[order]
    true_positive = np.cumsum(truth)
    false_positive = np.cumsum(~truth)
    last_of_value = np.concatenate((scores[1:] != scores[:-1], [True]))
    j = true_positive[last_of_value] / positives - false_positive[last_of_value] / negatives
    return float(scores[last_of_value][int(np.argmax(j))])


def multiclass_accuracy(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Share of rows whose most probable class (the first on ties) is their label (a class index)."""
    y, p = _check_multiclass(labels, probabilities)
    return float(np.mean(np.argmax(p, axis=1) == y))


def multiclass_balanced_accuracy(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean over the classes present in ``labels`` of each class's recall (the most probable class predicted)."""
    y, p = _check_multiclass(labels, probabilities)
    predicted = np.argmax(p, axis=1)
    present = np.unique(y)
    return float(np.mean([np.mean(predicted[y == label] == label) for label in present]))


def log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean negative log-probability of each row's class (probabilities floored at 1e-15)."""
    y, p = _check_multiclass(labels, probabilities)
    return float(-np.mean(np.log(np.maximum(p[np.arange(y.size), y], 1e-15))))


def _check_multiclass(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    p = np.asarray(probabilities, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 2 or p.shape[0] != y.size:
        raise MetricError(f"labels must be a vector and probabilities a matrix of as many rows, got {y.shape} and {p.shape}")
    if y.dtype.kind not in "iu" or not np.all((y >= 0) & (y < p.shape[1])):
        raise MetricError(f"labels must be class indices 0..{p.shape[1] - 1}")
    if not np.all(np.isfinite(p)):
        raise MetricError("probabilities must be finite")
    return y.astype(np.int64), p


def regression_errors(targets: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """Root mean squared error, mean absolute error and R² (1 - SSE / total sum of squares; 0 spread gives NaN-free 0)."""
    y = np.asarray(targets, dtype=np.float64)
    f = np.asarray(predictions, dtype=np.float64)
    if y.ndim != 1 or f.shape != y.shape or y.size == 0:
        raise MetricError(f"targets and predictions must be non-empty vectors of one length, got {y.shape} and {f.shape}")
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(f))):
        raise MetricError("targets and predictions must be finite")
    residual = y - f
    total = float(np.sum((y - y.mean()) ** 2))
    sse = float(np.dot(residual, residual))
    return {
        "rmse": float(np.sqrt(sse / y.size)),
        "mae": float(np.mean(np.abs(residual))),
        "r2": 1.0 - sse / total if total > 0 else 0.0,
    }
