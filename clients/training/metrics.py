"""Evaluation metrics for a binary classifier, in numpy (no scikit-learn).

:func:`roc_auc` is the area under the ROC curve computed from ranks (the
Mann-Whitney U statistic divided by n_pos * n_neg; Hanley and McNeil, Radiology
1982): tied scores get their average rank, so a tie between a positive and a
negative counts one half. :func:`accuracy` thresholds probabilities at 0.5, or at
a given threshold. :func:`youden_threshold` chooses the threshold that maximises
Youden's J = TPR - FPR (Youden, Cancer 1950) on validation data: on data with few
positives the accuracy at 0.5 mostly counts the majority class.
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
