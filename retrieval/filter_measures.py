"""How well a relevance filter separates relevant from irrelevant candidates, over (query, candidate) pairs.

PR-AUC (average precision over all pairs pooled across queries: what a global threshold sees),
P@R95 (the best precision at >= 95% recall on the evaluated pairs, the paper's measure), and, at the
threshold chosen beforehand on training data: the recall and precision reached, the filtering rate
(share of candidates removed) and the mean number of candidates kept per query. ECE (expected
calibration error, 15 equal-width bins) for scores that claim to be probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve

from retrieval.calibration import threshold_for_recall


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Mean |observed rate - predicted probability| over equal-width bins, weighted by bin size."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(probabilities, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.sum() * abs(labels[mask].mean() - probabilities[mask].mean())
    return float(total / max(len(labels), 1))


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean predicted, observed rate, count) per non-empty bin, for reliability diagrams."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(probabilities, edges[1:-1]), 0, bins - 1)
    rows = [(probabilities[which == b].mean(), labels[which == b].mean(), (which == b).sum()) for b in range(bins) if (which == b).any()]
    return tuple(np.array(col) for col in zip(*rows)) if rows else (np.array([]), np.array([]), np.array([]))  # type: ignore[return-value]


@dataclass
class FilterReport:
    """Pair-level quality of one scoring of candidates with one global threshold."""

    scores: list[np.ndarray]
    labels: list[np.ndarray]
    threshold: float
    probabilistic: bool = True

    def summary(self, target_recall: float = 0.95) -> dict[str, float | None]:
        s, y = np.concatenate(self.scores), np.concatenate(self.labels)
        kept = s >= self.threshold
        positives = float(y.sum())
        precision, recall, _ = precision_recall_curve(y, s) if positives else (np.array([0.0]), np.array([0.0]), None)
        reachable = precision[recall >= target_recall]
        return {
            "PR-AUC": float(average_precision_score(y, s)) if positives else 0.0,
            "P@R95": float(reachable.max()) if reachable.size else 0.0,
            "filter_rate": float(1.0 - kept.mean()) if len(s) else 0.0,
            "recall_at_threshold": float(y[kept].sum() / positives) if positives else 0.0,
            "precision_at_threshold": float(y[kept].mean()) if kept.any() else 0.0,
            "ECE": expected_calibration_error(s, y) if self.probabilistic else None,
            "kept_per_query": float(np.mean([(q >= self.threshold).sum() for q in self.scores])) if self.scores else 0.0,
            "threshold": float(self.threshold),
            # where a threshold for the target recall would sit: the share of candidates it removes
            "removed_at_target_recall": float((s < threshold_for_recall(s, y, target_recall)).mean()) if positives else 0.0,
            **self.recall_interval(),
        }

    def recall_interval(self, reps: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, float | None]:
        """Query-bootstrap interval of the recall kept at the threshold (queries resampled with replacement)."""
        kept = np.array([float(y[s >= self.threshold].sum()) for s, y in zip(self.scores, self.labels)])
        total = np.array([float(y.sum()) for y in self.labels])
        if total.sum() == 0:
            return {"recall_ci_low": None, "recall_ci_high": None}
        rows = np.random.default_rng(seed).integers(0, len(total), size=(reps, len(total)))
        sums = total[rows].sum(axis=1)
        recalls = kept[rows].sum(axis=1)[sums > 0] / sums[sums > 0]
        low, high = np.quantile(recalls, [(1 - level) / 2, (1 + level) / 2])
        return {"recall_ci_low": float(low), "recall_ci_high": float(high)}

    def pr_curve(self) -> tuple[np.ndarray, np.ndarray]:
        precision, recall, _ = precision_recall_curve(np.concatenate(self.labels), np.concatenate(self.scores))
        return recall, precision

