"""Train a Cosine Adapter calibrator (and fit its baselines) on a dataset's top-K candidates.

Candidates are the index's top-K for each training query; labels come from the qrels (grade >= 2 is
relevant on graded qrels, >= 1 on binary ones; unjudged counts as not relevant, as TREC does). Loss:
binary cross-entropy with class balancing (positive weight = negatives / positives), Adam, full batch.
The map's input (raw cosine or a per-query normalisation), the query part and its shrinkage toward
the global map are chosen by query-level cross-validation on the training queries; the threshold for
a target recall or precision comes from the out-of-fold scores of all of them (cross-fitting).
Class balancing shifts the probabilities, so an intercept is refitted afterwards (unweighted BCE):
the output is a calibrated probability again.
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
    INPUTS,
    Calibrator,
    baseline_scores,
    cosine_stats,
    map_input,
    threshold_for_precision,
    threshold_for_recall,
)
from retrieval.data import Dataset, query_folds, relevant_grade
from retrieval.encoder import Encoder
from retrieval.errors import SiftrankError
from retrieval.hits import Hit
from retrieval.stages.base import FirstStage, QueryBatch
from retrieval.stages.cosine_filter import fill_cosines

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
        """Refuse qrels without a single relevant judgment, or with fewer than two judged queries (the
        selection cross-validates over queries), before anything is encoded."""
        if len(dataset.queries) < 2:
            raise SiftrankError(f"calibration needs at least 2 training queries, got {len(dataset.queries)}")
        rel = relevant_grade(dataset.qrels)
        if not any(g >= rel for docs in dataset.qrels.values() for g in docs.values()):
            raise SiftrankError(f"{dataset.qrels_path}: no relevant judgments, so the training candidates contain "
                                "no relevant pairs: check the qrels")

    @classmethod
    def retrieve(cls, dataset: Dataset, stage: FirstStage, encoder: Encoder, k: int) -> CandidateSet:
        """The top ``k`` of ``stage`` (any first stage) for every query of ``dataset``, labelled (see :meth:`from_hits`)."""
        cls.check_judgments(dataset)
        qids = list(dataset.queries)
        batch = QueryBatch(qids, [dataset.queries[q] for q in qids], encoder)
        return cls.from_hits(dataset, batch, stage.retrieve(batch, k), encoder, k)

    @classmethod
    def from_hits(cls, dataset: Dataset, batch: QueryBatch, hits: list[list[Hit]], encoder: Encoder, k: int) -> CandidateSet:
        """The first stage's top-``k`` hits of ``batch`` (training queries of ``dataset``), labelled from the
        qrels; hits without a cosine (BM25, hybrid) get it from their passages."""
        cls.check_judgments(dataset)
        cosines = fill_cosines(hits, batch.vectors, encoder, dataset.store)
        ids = [[h.id for h in ranked] for ranked in hits]
        rel = relevant_grade(dataset.qrels)
        labels = [np.array([dataset.qrels.get(q, {}).get(d, 0) >= rel for d in row], dtype=np.float32)
                  for q, row in zip(batch.qids, ids)]
        return cls(list(batch.qids), batch.vectors, cosines, ids, labels, k)

    @classmethod
    def join(cls, parts: list[CandidateSet]) -> CandidateSet:
        """The queries of several candidate sets (e.g. each fold's, scored by its own encoder) as one."""
        return cls([q for c in parts for q in c.qids], np.concatenate([c.query_vectors for c in parts]),
                   [x for c in parts for x in c.cosines], [x for c in parts for x in c.doc_ids],
                   [x for c in parts for x in c.labels], parts[0].k)

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
    """Fits a :class:`Calibrator` whose input, features and shrinkage are chosen by query-level
    cross-validation on the training queries, with a cross-fitted threshold, plus the baselines.

    1. The map's input: raw cosine or a per-query normalisation (min-max, z-score, gap to the top,
       rank; ``retrieval.calibration.INPUTS``), each as one global monotone map — already
       query-dependent without learned query parameters. Min-max stays unless another input beats it
       on out-of-fold PR-AUC by a query-bootstrap test (:meth:`choose_input`).
    2. On the best input, the query part: the query embedding (the paper's input) and/or top-K cosine
       statistics (ours), linear or hidden, with a ridge penalty pulling its parameters toward the
       global map. The penalty is ``decay * |W|^2 / n_queries`` on the mean pair loss, so its pull
       falls as training queries grow: with 43 queries it holds the map near the global one, with 800
       it lets it move. The global map is itself a candidate (infinite shrinkage).
    3. The winner is the simplest candidate within one standard error of the best mean held-out-fold
       PR-AUC (:meth:`one_standard_error`).
    4. The threshold for the target recall (or precision) is chosen on the out-of-fold scores of every
       training query (each scored by the fold model that did not see it), then the winner is refitted
       on all training queries for the number of epochs early stopping chose in the folds.
    """

    family: str = "power"
    use_embedding: bool = True
    use_stats: bool = True
    inputs: tuple[str, ...] = INPUTS
    hidden_grid: tuple[int, ...] = (0,)
    decay_grid: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0)
    target_recall: float | None = 0.95
    target_precision: float | None = None
    balance: bool = True
    seed: int = 0
    lr: float = 0.02
    max_epochs: int = 600
    patience: int = 60
    folds: int | None = None  # inner folds: None = 5 below 200 training queries, else 3
    max_pairs: int = 150_000  # negatives beyond this are subsampled (and re-weighted) for speed
    default_input: str = "minmax"  # the input kept unless another beats it (``choose_input``)
    input_alpha: float = 0.05
    selection: list[dict[str, Any]] = field(default_factory=list)
    best_by_features: dict[str, Calibrator] = field(default_factory=dict)

    @classmethod
    def named(cls, features: str, **options: Any) -> CalibratorTrainer:
        """A trainer for a feature-set name (``--features`` / the recipe's ``features``: auto, global, embedding,
        stats, embedding+stats); an unknown name is one error."""
        use_embedding, use_stats = feature_flags(features)
        return cls(use_embedding=use_embedding, use_stats=use_stats, **options)

    def feature_sets(self) -> list[str]:
        return [name for name, (emb, stats) in FEATURE_SETS.items()
                if name != "global" and (not emb or self.use_embedding) and (not stats or self.use_stats)]

    def inner_folds(self, train: CandidateSet) -> list[tuple[CandidateSet, CandidateSet, np.ndarray]]:
        """(fit, held, held rows) of a seeded query-level k-fold over the training queries."""
        rows = [str(i) for i in range(len(train))]
        folds = max(2, min(self.folds or (5 if len(train) < 200 else 3), len(train)))
        parts = [np.array([int(r) for r in part]) for part in query_folds(rows, folds, self.seed)]
        out = []
        for i, held in enumerate(parts):
            fit = np.concatenate([p for j, p in enumerate(parts) if j != i])
            out.append((train.subset(fit), train.subset(held), held))
        return out

    def fit(self, train: CandidateSet, encoder: dict[str, Any] | None = None) -> Calibrator:
        if train.positives == 0:
            raise SiftrankError("the training candidates contain no relevant pairs: check the qrels and K")
        if (self.target_recall is None) == (self.target_precision is None):
            raise SiftrankError("choose exactly one of a target recall or a target precision")
        if len(train) < 2:
            raise SiftrankError(f"calibration needs at least 2 training queries, got {len(train)}")
        stats = np.stack([cosine_stats(c) for c in train.cosines])
        self._stats = (stats.mean(axis=0), stats.std(axis=0) + 1e-6)
        self._encoder, self._dim, self._k = encoder, train.query_vectors.shape[1], train.k
        folds = self.inner_folds(train)
        self.selection, self.best_by_features = [], {}
        runs: dict[tuple, dict[str, Any]] = {}
        for name in self.inputs:  # 1. the input, as one global map each
            runs[(name, "global", 0, 0.0)] = self._cross_validate(train, folds, name, "global", 0, 0.0)
        best_input, input_evidence = self.choose_input(runs, train.labels)
        for features in self.feature_sets():  # 2. the query part on that input, with shrinkage
            for hidden in self.hidden_grid:
                for decay in sorted(self.decay_grid, reverse=True):  # the most shrunk (simplest) first
                    runs[(best_input, features, hidden, decay)] = self._cross_validate(train, folds, best_input, features,
                                                                                       hidden, decay)
        best_key = self.one_standard_error({k: v for k, v in runs.items() if k[0] == best_input})
        baselines = self.fit_baselines(train)
        chosen = None
        for features in ["global"] + self.feature_sets():  # 3. refit the best of each feature set (the ablation)
            keys = [k for k in runs if k[1] == features and (features != "global" or k[0] == best_input)]
            if not keys:
                continue
            key = max(keys, key=lambda k: runs[k]["cv_pr_auc"])
            calibrator = self._final(train, key, runs[key])
            calibrator.extra = {"cv_pr_auc": runs[key]["cv_pr_auc"], "baselines": baselines,
                                "target_recall": self.target_recall, "target_precision": self.target_precision}
            self.best_by_features[features] = calibrator
            if key == best_key:
                chosen = calibrator
        if chosen is None:  # the winner is a global map on another input than the best one (ties)
            chosen = self._final(train, best_key, runs[best_key])
            chosen.extra = {"cv_pr_auc": runs[best_key]["cv_pr_auc"], "baselines": baselines,
                            "target_recall": self.target_recall, "target_precision": self.target_precision}
        row = next(r for r in self.selection if (r["input"], r["features"], r["hidden"], r["decay"]) == best_key)
        chosen.extra.update({"selection": self.selection, "chosen": row, "input_choice": input_evidence,
                             "input_weights": chosen.input_weights(),
                             "threshold_from": f"out-of-fold scores of {len(train)} training queries ({len(folds)} folds)"})
        return chosen

    def choose_input(self, runs: dict[tuple, dict[str, Any]], labels: list[np.ndarray]) -> tuple[str, dict[str, Any]]:
        """The map's input: the per-query normalised ``default_input`` unless another input's out-of-fold
        PR-AUC beats it by a query-bootstrap test (p < ``input_alpha``); among those that do, the best. A prior,
        not a cure: on DL19 raw cosine and on SciFact z-score still win by a wide margin, and neither map
        transfers to the other collection (docs/calibration/transfer.md)."""
        default = self.default_input if self.default_input in self.inputs else self.inputs[0]
        oof = {name: runs[(name, "global", 0, 0.0)]["oof"] for name in self.inputs}
        evidence: dict[str, Any] = {"default": default, "pooled_oof_pr_auc": {}, "p_beats_default": {}}
        better = []
        for name in self.inputs:
            difference, p = bootstrap_pr_auc(oof[default], oof[name], labels, self.seed)
            evidence["pooled_oof_pr_auc"][name] = round(_ap(oof[name], labels), 4)
            if name != default:
                evidence["p_beats_default"][name] = round(p, 4)
                if difference > 0 and p < self.input_alpha:
                    better.append(name)
        chosen = max(better, key=lambda n: evidence["pooled_oof_pr_auc"][n]) if better else default
        return chosen, {**evidence, "chosen": chosen}

    def one_standard_error(self, runs: dict[tuple, dict[str, Any]]) -> tuple:
        """The simplest candidate whose cross-validated PR-AUC is within one standard error of the best
        (the one-standard-error rule): the best of many candidates is optimistic on the folds that chose
        it, most with few queries. Simplicity: the global map, then query parts from the most to the least
        shrunk (``runs`` in that order, all on the chosen input)."""
        order = list(runs)
        best = max(order, key=lambda key: runs[key]["cv_pr_auc"])
        error = runs[best]["cv_pr_auc_std"] / np.sqrt(max(1, runs[best]["folds"] - 1))
        return next(key for key in order if runs[key]["cv_pr_auc"] >= runs[best]["cv_pr_auc"] - error)

    def _new(self, input: str, features: str, hidden: int) -> Calibrator:
        emb, use_stats = FEATURE_SETS[features]
        mean, std = self._stats
        return Calibrator(self.family, embedding_dim=self._dim, use_embedding=emb, use_stats=use_stats, hidden=hidden,
                          k=self._k, stats_mean=mean, stats_std=std, encoder=self._encoder, input=input)

    def _cross_validate(self, train: CandidateSet, folds, input: str, features: str, hidden: int, decay: float) -> dict[str, Any]:
        """Mean held-out-fold PR-AUC of one candidate, its out-of-fold scores, and the epochs early stopping chose."""
        oof: list[np.ndarray] = [np.zeros(0)] * len(train)
        aps, epochs = [], []
        for fit_set, held, rows in folds:
            calibrator = self._new(input, features, hidden)
            torch_seed(self.seed)
            _, epoch = self._train(calibrator, fit_set, held, decay)
            fit_intercept(calibrator, fit_set)
            scores = calibrator.relevance(held.query_vectors, held.cosines)
            # out-of-fold scores on a scale every fold model shares: the share of its own fit pairs scoring
            # at or below them (pooling raw probabilities of different fold models would mix scales)
            reference = np.sort(np.concatenate(calibrator.relevance(fit_set.query_vectors, fit_set.cosines)))
            for row, score in zip(rows, scores):
                oof[row] = np.searchsorted(reference, score, side="right") / reference.size
            if held.positives:
                aps.append(_ap(scores, held.labels))
            epochs.append(epoch)
        result = {"input": input, "features": features, "hidden": hidden, "decay": decay,
                  "cv_pr_auc": float(np.mean(aps)) if aps else 0.0, "cv_pr_auc_std": float(np.std(aps)) if aps else 0.0,
                  "folds": len(aps),
                  "epochs": int(np.median(epochs))}
        self.selection.append(result)
        log.info("calibrator %s %s", self.family, result)
        return {**result, "oof": oof}

    def _final(self, train: CandidateSet, key: tuple, run: dict[str, Any]) -> Calibrator:
        """Refit on every training query for the cross-validated number of epochs; intercept on all of
        them; threshold from the candidate's out-of-fold scores (cross-fitted): the share of pairs below
        it is chosen out of fold, then read off the refitted map's scores of the training pairs."""
        input, features, hidden, decay = key
        calibrator = self._new(input, features, hidden)
        torch_seed(self.seed)
        self._train(calibrator, train, train, decay, epochs=run["epochs"])
        fit_intercept(calibrator, train)
        share = self._threshold(np.concatenate(run["oof"]), np.concatenate(train.labels))
        scores = np.sort(np.concatenate(calibrator.relevance(train.query_vectors, train.cosines)))
        calibrator.threshold = float(scores[max(0, int(np.ceil(share * scores.size - 1e-9)) - 1)])
        return calibrator

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

    def _train(self, calibrator: Calibrator, fit_set: CandidateSet, val_set: CandidateSet, decay: float,
               epochs: int | None = None) -> tuple[float, int]:
        """Full-batch Adam: early stopping on the validation BCE (returns the best BCE and its epoch), or
        exactly ``epochs`` epochs. The ridge penalty on the query part is ``decay * |W|^2 / n_queries``."""
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
        strength = decay / max(1, len(fit_set))
        best_loss, best_state, best_epoch, since = float("inf"), copy.deepcopy(net.state_dict()), 0, 0
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        for epoch in range(epochs if epochs is not None else self.max_epochs):
            optimiser.zero_grad()
            loss = bce(net(f_feat, f_cos, f_idx), f_y, weight=f_w, reduction="sum") / f_w.sum()
            if strength and decayed:
                loss = loss + strength * sum((p * p).sum() for p in decayed)
            loss.backward()
            optimiser.step()
            if epochs is None and epoch % 10 == 9:
                with torch.no_grad():
                    val = float(bce(net(v_feat, v_cos, v_idx), v_y, weight=v_w, reduction="sum") / v_w.sum())
                if val < best_loss - 1e-6:
                    best_loss, best_state, best_epoch, since = val, copy.deepcopy(net.state_dict()), epoch + 1, 0
                else:
                    since += 10
                    if since >= self.patience:
                        break
        if epochs is None:
            net.load_state_dict(best_state)
        return best_loss, max(best_epoch, 10)


def _ap(scores: list[np.ndarray], labels: list[np.ndarray]) -> float:
    return float(average_precision_score(np.concatenate(labels), np.concatenate(scores)))


def bootstrap_pr_auc(a: list[np.ndarray], b: list[np.ndarray], labels: list[np.ndarray], seed: int = 0,
                     resamples: int = 300) -> tuple[float, float]:
    """Pooled PR-AUC of scores ``b`` minus ``a`` (per query lists, paired) and a one-sided p-value that ``b``
    is better: the share of query-bootstrap resamples in which it is not."""
    observed = _ap(b, labels) - _ap(a, labels)
    rng = np.random.default_rng(seed)
    n, worse = len(labels), 0
    for _ in range(resamples):
        rows = rng.integers(0, n, n)
        picked = [labels[i] for i in rows]
        if not any(y.any() for y in picked):
            continue
        worse += _ap([b[i] for i in rows], picked) - _ap([a[i] for i in rows], picked) <= 0
    return observed, (worse + 1) / (resamples + 1)


def _tensors(calibrator: Calibrator, data: CandidateSet, max_pairs: int, seed: int):
    """Features, cosines, query rows, labels and weights of the pairs; beyond ``max_pairs`` a random
    share of the negatives is kept and weighted by the inverse share, so the loss stays unbiased."""
    import torch

    _, y, idx = data.flat()
    cos = np.concatenate(map_input(calibrator.input, data.cosines))  # the map's input x in [0, 1]
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
