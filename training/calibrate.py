"""Train a Cosine Adapter calibrator (and fit its baselines) on a dataset's top-K candidates.

Candidates are the index's top-K for each training query; labels come from the qrels (grade >= 2 is
relevant on graded qrels, >= 1 on binary ones; unjudged counts as not relevant, as TREC does). Loss:
binary cross-entropy with class balancing (positive weight = negatives / positives), Adam, full batch,
early stopping on a validation split of queries. Capacity (linear or one hidden layer) and the weight
decay that shrinks the query-dependent part toward the global map are chosen on the validation
queries, with the global map itself among the choices. Class balancing shifts the probabilities, so
an intercept correction is fitted on the validation queries afterwards (unweighted BCE): the output is
a calibrated probability again. One global threshold is then chosen for a target recall or precision.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score

from retrieval.calibration import (
    BASELINES,
    Calibrator,
    baseline_scores,
    cosine_stats,
    threshold_for_precision,
    threshold_for_recall,
)
from retrieval.data import Dataset, relevant_grade
from retrieval.encoder import Encoder
from retrieval.errors import SiftrankError
from retrieval.index import Index

log = logging.getLogger(__name__)


# --features: (query embedding, top-K cosine statistics) as inputs of the map's query network
FEATURES = {"auto": (True, True), "global": (False, False), "embedding": (True, False), "stats": (False, True),
            "embedding+stats": (True, True)}


def feature_flags(name: str) -> tuple[bool, bool]:
    """(use_embedding, use_stats) for a ``--features`` name; an unknown name is one error."""
    if name not in FEATURES:
        raise SiftrankError(f"--features must be one of {', '.join(FEATURES)}, not '{name}'")
    return FEATURES[name]


@dataclass
class CandidateSet:
    """Top-K candidates of a set of queries with their raw cosines and binary labels."""

    qids: list[str]
    query_vectors: np.ndarray
    cosines: list[np.ndarray]
    doc_ids: list[list[str]]
    labels: list[np.ndarray]
    k: int = 0

    @staticmethod
    def check_judgments(dataset: Dataset) -> None:
        """Refuse qrels without a single relevant judgment before anything is encoded."""
        rel = relevant_grade(dataset.qrels)
        if not any(g >= rel for docs in dataset.qrels.values() for g in docs.values()):
            raise SiftrankError(f"{dataset.qrels_path}: no relevant judgments, so the training candidates contain "
                                "no relevant pairs: check the qrels")

    @classmethod
    def retrieve(cls, dataset: Dataset, encoder: Encoder, index: Index, k: int) -> CandidateSet:
        """Encode the dataset's (judged) queries, search the top ``k``, label hits from the qrels."""
        cls.check_judgments(dataset)
        index.check_encoder(encoder.identity())
        qids = list(dataset.queries)
        vectors = encoder.encode_queries([dataset.queries[q] for q in qids])
        scores, ids = index.search(vectors, k)
        rel = relevant_grade(dataset.qrels)
        labels = [np.array([dataset.qrels.get(q, {}).get(d, 0) >= rel for d in row], dtype=np.float32) for q, row in zip(qids, ids)]
        cosines = [np.asarray(s[: len(row)], dtype=np.float32) for s, row in zip(scores, ids)]
        return cls(qids, vectors, cosines, ids, labels, k)

    def subset(self, rows: np.ndarray | list[int]) -> CandidateSet:
        rows = list(rows)
        return CandidateSet([self.qids[i] for i in rows], self.query_vectors[rows], [self.cosines[i] for i in rows],
                            [self.doc_ids[i] for i in rows], [self.labels[i] for i in rows], self.k)

    def __len__(self) -> int:
        return len(self.qids)

    @property
    def positives(self) -> int:
        return int(sum(float(y.sum()) for y in self.labels))

    def flat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(cosine, label, query row) of every pair."""
        lengths = [len(c) for c in self.cosines]
        return (np.concatenate(self.cosines), np.concatenate(self.labels), np.repeat(np.arange(len(lengths)), lengths))


FEATURE_SETS: dict[str, tuple[bool, bool]] = {"global": (False, False), "embedding": (True, False),
                                               "stats": (False, True), "embedding+stats": (True, True)}


@dataclass
class CalibratorTrainer:
    """Fits a :class:`Calibrator` with validation-chosen features, capacity and shrinkage, plus baselines.

    Candidates for the query part: the query embedding (the paper's input), top-K cosine statistics
    (our addition) or both, as allowed by ``use_embedding`` / ``use_stats``; each with a linear or
    one-hidden-layer network and several weight decays. The global map is always a candidate, so with
    too few queries the choice falls back to it. The winner has the best validation PR-AUC (the
    measure the filter is for), and must beat the global map significantly (:meth:`beats_global`);
    early stopping inside each candidate uses the validation BCE.
    """

    family: str = "power"
    use_embedding: bool = True
    use_stats: bool = True
    hidden_grid: tuple[int, ...] = (0, 32)
    decay_grid: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
    target_recall: float | None = 0.95
    target_precision: float | None = None
    balance: bool = True
    seed: int = 0
    lr: float = 0.02
    max_epochs: int = 600
    patience: int = 60
    val_fraction: float = 0.2
    max_pairs: int = 150_000  # negatives beyond this are subsampled (and re-weighted) for speed
    alpha: float = 0.05  # family-wise error of preferring a query-dependent map to the global one
    selection: list[dict[str, Any]] = field(default_factory=list)
    best_by_features: dict[str, Calibrator] = field(default_factory=dict)
    shrinkage: dict[str, Any] = field(default_factory=dict)

    def feature_sets(self) -> list[str]:
        return [name for name, (emb, stats) in FEATURE_SETS.items()
                if (not emb or self.use_embedding) and (not stats or self.use_stats)]

    def split(self, train: CandidateSet) -> tuple[CandidateSet, CandidateSet]:
        """Fit and validation queries (seeded); with too few queries both are the whole set."""
        order = np.random.default_rng(self.seed).permutation(len(train))
        n_val = max(2, int(round(self.val_fraction * len(train)))) if len(train) >= 4 else 0
        fit_set, val_set = train.subset(order[n_val:]), train.subset(order[:n_val])
        if n_val == 0 or fit_set.positives == 0 or val_set.positives == 0:
            return train, train
        return fit_set, val_set

    def fit(self, train: CandidateSet, encoder: dict[str, Any] | None = None) -> Calibrator:
        if train.positives == 0:
            raise SiftrankError("the training candidates contain no relevant pairs: check the qrels and K")
        if (self.target_recall is None) == (self.target_precision is None):
            raise SiftrankError("choose exactly one of a target recall or a target precision")
        fit_set, val_set = self.split(train)
        stats = np.stack([cosine_stats(c) for c in fit_set.cosines])
        mean, std = stats.mean(axis=0), stats.std(axis=0) + 1e-6
        val_labels = np.concatenate(val_set.labels)
        self.selection, self.best_by_features = [], {}
        best: tuple[float, Calibrator, dict[str, Any]] | None = None
        for features in self.feature_sets():
            emb, use_stats = FEATURE_SETS[features]
            grid = [(0, 0.0)] if features == "global" else [(h, d) for h in self.hidden_grid for d in self.decay_grid]
            for hidden, decay in grid:
                calibrator = Calibrator(self.family, embedding_dim=train.query_vectors.shape[1], use_embedding=emb,
                                        use_stats=use_stats, hidden=hidden if features != "global" else 0, k=train.k,
                                        stats_mean=mean, stats_std=std, encoder=encoder)
                torch_seed(self.seed)
                val_bce = self._train(calibrator, fit_set, val_set, decay)
                scores = np.concatenate(calibrator.relevance(val_set.query_vectors, val_set.cosines))
                val_ap = float(average_precision_score(val_labels, scores))
                row = {"features": features, "hidden": hidden, "decay": decay, "val_bce": val_bce, "val_pr_auc": val_ap}
                self.selection.append(row)
                log.info("calibrator %s %s", self.family, row)
                if features not in self.best_by_features or val_ap > self.best_by_features[features].extra["val_pr_auc"]:
                    calibrator.extra = {"val_pr_auc": val_ap}
                    self.best_by_features[features] = calibrator
                if best is None or val_ap > best[0] + 1e-9:
                    best = (val_ap, calibrator, row)
        assert best is not None
        baselines = self.fit_baselines(train)
        global_map = self.best_by_features["global"]
        if best[1] is not global_map and not self.beats_global(best[1], global_map, val_set):
            best = (global_map.extra["val_pr_auc"], global_map, next(r for r in self.selection if r["features"] == "global"))
        # A global map has 2-3 parameters, like Platt: it is refitted on all training queries, whose
        # intercept and threshold it may then use. A query-dependent map keeps held-out validation for both.
        torch_seed(self.seed)
        self._train(global_map, train, train, 0.0)
        self.finish(global_map, train)
        for name, calibrator in self.best_by_features.items():
            if name != "global":
                self.finish(calibrator, val_set)
        for calibrator in self.best_by_features.values():
            calibrator.extra.update({"baselines": baselines, "target_recall": self.target_recall,
                                     "target_precision": self.target_precision})
        chosen = best[1]
        chosen.extra.update({"selection": self.selection, "chosen": best[2], "shrinkage": self.shrinkage})
        return chosen

    def beats_global(self, candidate: Calibrator, global_map: Calibrator, val_set: CandidateSet, reps: int = 200) -> bool:
        """Keep a query-dependent map only if its validation PR-AUC beats the global map's by more than
        z standard errors of the paired difference (query bootstrap), with z from a Bonferroni correction
        over the query-dependent candidates compared (the winner of many is optimistic on the data that
        chose it). With few validation queries the error is large and the choice shrinks to the global map."""
        from scipy.stats import norm

        a = candidate.relevance(val_set.query_vectors, val_set.cosines)
        b = global_map.relevance(val_set.query_vectors, val_set.cosines)
        y = val_set.labels
        observed = _ap(a, y) - _ap(b, y)
        rng = np.random.default_rng(self.seed)
        diffs = []
        for _ in range(reps):
            rows = rng.integers(0, len(y), len(y))
            if sum(float(y[i].sum()) for i in rows) == 0:
                continue
            diffs.append(_ap([a[i] for i in rows], [y[i] for i in rows]) - _ap([b[i] for i in rows], [y[i] for i in rows]))
        error = float(np.std(diffs)) if diffs else float("inf")
        compared = max(1, sum(1 for row in self.selection if row["features"] != "global"))
        z = float(norm.ppf(1 - self.alpha / compared))
        keep = observed > z * error
        self.shrinkage = {"val_pr_auc_gain": observed, "standard_error": error, "z": z, "kept_query_part": keep}
        return keep

    def finish(self, calibrator: Calibrator, val_set: CandidateSet) -> None:
        """Intercept correction and the global threshold, both on validation queries: on the queries the
        map was fitted on, scores are optimistic and the target recall would not transfer."""
        fit_intercept(calibrator, val_set)
        scores = np.concatenate(calibrator.relevance(val_set.query_vectors, val_set.cosines))
        calibrator.threshold = self._threshold(scores, np.concatenate(val_set.labels))

    def _threshold(self, scores: np.ndarray, labels: np.ndarray) -> float:
        if self.target_recall is not None:
            return threshold_for_recall(scores, labels, self.target_recall)
        return threshold_for_precision(scores, labels, float(self.target_precision))  # type: ignore[arg-type]

    def fit_baselines(self, data: CandidateSet) -> dict[str, dict[str, float]]:
        """Thresholds (and Platt's a, b) of the query-independent baselines, on the same data and target."""
        labels = np.concatenate(data.labels)
        platt = Calibrator("linear", use_embedding=False, k=data.k)
        torch_seed(self.seed)
        self._train(platt, data, data, 0.0)
        fit_intercept(platt, data)
        a, b, _ = platt.map_parameters(data.query_vectors[:1], data.cosines[:1])[0]
        # sigmoid(a (c+1)/2 + b) = sigmoid(a/2 c + (a/2 + b)): store it as a map of raw cosine
        out: dict[str, dict[str, float]] = {"platt": {"a": float(a) / 2, "b": float(a) / 2 + float(b)}}
        for name in BASELINES:
            spec = out.get(name, {})
            scores = np.concatenate(baseline_scores(name, spec, data.cosines))
            threshold = self._threshold(scores, labels)
            out[name] = {**spec, "threshold": threshold}
            if name == "top_k":
                out[name]["k"] = int(round(1.0 / threshold))
        return out

    def _train(self, calibrator: Calibrator, fit_set: CandidateSet, val_set: CandidateSet, decay: float) -> float:
        """Full-batch Adam with early stopping on the validation BCE; returns the best validation BCE."""
        import torch

        net = calibrator.net
        f_feat, f_cos, f_idx, f_y, f_w = _tensors(calibrator, fit_set, self.max_pairs, self.seed)
        v_feat, v_cos, v_idx, v_y, v_w = _tensors(calibrator, val_set, self.max_pairs, self.seed + 1)
        positives = float(f_y.sum())
        negatives = float(f_w[f_y == 0].sum())
        pos_weight = negatives / max(positives, 1.0) if self.balance else 1.0
        f_w = torch.where(f_y > 0, torch.full_like(f_w, pos_weight), f_w)
        v_w = torch.where(v_y > 0, torch.full_like(v_w, pos_weight), v_w)
        optimiser = torch.optim.Adam(net.parameters(), lr=self.lr)
        decayed = [p for name, p in net.named_parameters() if name.startswith("delta") and p.dim() > 1]
        best_loss, best_state, since = float("inf"), copy.deepcopy(net.state_dict()), 0
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        for epoch in range(self.max_epochs):
            optimiser.zero_grad()
            loss = bce(net(f_feat, f_cos, f_idx), f_y, weight=f_w, reduction="sum") / f_w.sum()
            if decay and decayed:
                loss = loss + decay * sum((p * p).sum() for p in decayed)
            loss.backward()
            optimiser.step()
            if epoch % 10 == 9:
                with torch.no_grad():
                    val = float(bce(net(v_feat, v_cos, v_idx), v_y, weight=v_w, reduction="sum") / v_w.sum())
                if val < best_loss - 1e-6:
                    best_loss, best_state, since = val, copy.deepcopy(net.state_dict()), 0
                else:
                    since += 10
                    if since >= self.patience:
                        break
        net.load_state_dict(best_state)
        return best_loss


def _ap(scores: list[np.ndarray], labels: list[np.ndarray]) -> float:
    return float(average_precision_score(np.concatenate(labels), np.concatenate(scores)))


def _tensors(calibrator: Calibrator, data: CandidateSet, max_pairs: int, seed: int):
    """Features, cosines, query rows, labels and weights of the pairs; beyond ``max_pairs`` a random
    share of the negatives is kept and weighted by the inverse share, so the loss stays unbiased."""
    import torch

    cos, y, idx = data.flat()
    weights = np.ones_like(y)
    if len(y) > max_pairs:
        negatives = np.nonzero(y == 0)[0]
        share = max(1e-3, (max_pairs - (y > 0).sum()) / len(negatives))
        keep_neg = np.random.default_rng(seed).random(len(negatives)) < share
        keep = np.sort(np.concatenate([np.nonzero(y > 0)[0], negatives[keep_neg]]))
        weights = np.where(y > 0, 1.0, 1.0 / share).astype(np.float32)
        cos, y, idx, weights = cos[keep], y[keep], idx[keep], weights[keep]
    feats = calibrator.features(data.query_vectors, data.cosines)
    return (torch.from_numpy(feats), torch.from_numpy(cos.astype(np.float32)), torch.from_numpy(idx),
            torch.from_numpy(y), torch.from_numpy(weights.astype(np.float32)))


def fit_intercept(calibrator: Calibrator, data: CandidateSet, steps: int = 50) -> float:
    """Shift every logit by one constant so the unweighted BCE on ``data`` is minimal (Newton, 1-D convex).

    Undoes the prior shift of class-balanced training: the relevance is a calibrated probability again.
    """
    calibrator.net.bias.zero_()
    z = np.concatenate(calibrator.logits(calibrator.features(data.query_vectors, data.cosines), data.cosines)).astype(np.float64)
    y = np.concatenate(data.labels).astype(np.float64)
    delta = 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(z + delta)))
        grad, hess = float((p - y).sum()), float((p * (1 - p)).sum()) + 1e-9
        delta -= grad / hess
        if abs(grad / hess) < 1e-7:
            break
    calibrator.net.bias.fill_(delta)
    return delta


def torch_seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
