"""The relevance filter: a Cosine Adapter that turns raw cosine into a relevance probability.

After Rossi et al., "Relevance Filtering for Embedding-based Retrieval" (CIKM 2024). For a query q
with top-K raw cosines c, a small network g reads the query's features (its embedding and, as our
ablation, statistics of its top-K cosine list) and outputs the parameters of a monotone map f:

    x = input(c)                         cosine moved to [0, 1], or a per-query normalisation of it:
                                         minmax (c - min) / (max - min), zscore sigmoid((c - mean) / std),
                                         gap 1 + (c - max) / 2, rank 1 - (rank - 1) / K, or
                                         joint: sum_i w_i x_i over cosine, minmax, zscore and gap with
                                         learned global weights w = softmax(m) (see INPUTS)
    linear     f = a x + b               a = softplus(.) > 0
    sqrt       f = a sqrt(x) + b
    quadratic  f = a x^2 + b
    power      f = a x^p + b             p = softplus(.) + 0.05 > 0
    relevance  s = sigmoid(f)

Parameters are a global vector plus a query-dependent correction g(features) whose last layer starts
at zero and is weight-decayed: with too few training queries the decay shrinks it to the global map,
and with no query part at all the linear family is exactly global Platt scaling. Every map is strictly
increasing in c (every input is an increasing function of c within one query; ``rank`` is
non-decreasing, ties aside), so the ranking inside a query never changes; one global threshold on s
filters. A per-query input makes even the global map query-dependent without learned query parameters.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.artifacts import Manifest, atomic_dir
from retrieval.errors import SiftrankError

FAMILIES: tuple[str, ...] = ("linear", "sqrt", "quadratic", "power")
INPUTS: tuple[str, ...] = ("cosine", "minmax", "zscore", "gap", "rank", "joint")
#: the inputs the ``joint`` input mixes (convex weights, learned): raw and query-normalised cosine together
JOINT_PARTS: tuple[str, ...] = ("cosine", "minmax", "zscore", "gap")
WEIGHTS_FILE = "calibrator.safetensors"
N_STATS = 6


def cosine_stats(cosines: np.ndarray) -> np.ndarray:
    """Cheap statistics of one query's top-K cosine list (our ablation feature set), sorted first."""
    c = -np.sort(-np.asarray(cosines, dtype=np.float32))
    if c.size == 0:
        return np.zeros(N_STATS, dtype=np.float32)
    top10 = c[: min(10, c.size)]
    return np.array([c[0], top10.mean(), c.mean(), c.std(), c[0] - top10[-1], top10[-1] - c[-1]], dtype=np.float32)


def map_input(name: str, cosine_lists: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The map's input x in [0, 1] for every candidate of every query (see the module doc); for ``joint`` one
    column per part of :data:`JOINT_PARTS` (the map mixes them)."""
    if name == "joint":
        parts = [map_input(part, cosine_lists) for part in JOINT_PARTS]
        return [np.stack(columns, axis=1) for columns in zip(*parts)]
    out = []
    for raw in cosine_lists:
        c = np.asarray(raw, dtype=np.float64)
        if c.size == 0:
            out.append(c.astype(np.float32))
            continue
        if name == "cosine":
            x = (c + 1) / 2
        elif name == "minmax":
            span = c.max() - c.min()
            x = (c - c.min()) / span if span > 0 else np.ones_like(c)
        elif name == "zscore":
            std = c.std()
            x = 1 / (1 + np.exp(-(c - c.mean()) / std)) if std > 0 else np.full_like(c, 0.5)
        elif name == "gap":
            x = 1 + (c - c.max()) / 2
        elif name == "rank":
            ranks = np.empty(c.size)
            ranks[np.argsort(-c, kind="stable")] = np.arange(c.size)
            x = 1 - ranks / c.size
        else:
            raise SiftrankError(f"calibrator input must be one of {', '.join(INPUTS)}, not '{name}'")
        out.append(np.clip(x, 1e-6, 1.0).astype(np.float32))
    return out


def threshold_for_recall(scores: np.ndarray, labels: np.ndarray, target: float) -> float:
    """The highest threshold t such that keeping ``scores >= t`` keeps at least ``target`` of the positives."""
    order = np.argsort(-scores, kind="stable")
    found = np.cumsum(labels[order])
    total = found[-1] if found.size else 0
    if total == 0:
        raise SiftrankError("no relevant pairs: cannot choose a threshold for a target recall")
    index = int(np.searchsorted(found, np.ceil(target * total - 1e-9)))
    return float(scores[order][min(index, len(order) - 1)])


def threshold_for_precision(scores: np.ndarray, labels: np.ndarray, target: float) -> float:
    """The lowest threshold whose kept set still has precision >= ``target`` (most recall at that precision)."""
    order = np.argsort(-scores, kind="stable")
    precision = np.cumsum(labels[order]) / np.arange(1, len(order) + 1)
    ok = np.nonzero(precision >= target)[0]
    if ok.size == 0:
        raise SiftrankError(f"no threshold reaches precision {target}")
    return float(scores[order][ok[-1]])


def _torch_net(family: str, in_dim: int, hidden: int, parts: int = 0):
    """The adapter network: global raw parameters plus a zero-initialised query-dependent correction; with
    ``parts`` > 0, global mixing weights of that many inputs (softmax, equal at the start)."""
    import torch
    from torch import nn

    class CosineAdapterNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            n_params = 3 if family == "power" else 2
            init = [float(np.log(np.expm1(10.0))), -7.0, float(np.log(np.expm1(0.95)))][:n_params]
            self.base = nn.Parameter(torch.tensor(init, dtype=torch.float32))
            self.delta: nn.Module | None = None
            if in_dim > 0:
                layers: list[nn.Module] = [nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, n_params)] if hidden else \
                    [nn.Linear(in_dim, n_params)]
                last = layers[-1]
                assert isinstance(last, nn.Linear)
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)
                self.delta = nn.Sequential(*layers)
            self.mix = nn.Parameter(torch.zeros(parts)) if parts else None
            self.register_buffer("bias", torch.zeros(()))  # intercept correction fitted after training

        def params(self, features: torch.Tensor) -> torch.Tensor:
            raw = self.base.expand(features.shape[0], -1)
            if self.delta is not None:
                raw = raw + self.delta(features)
            a = nn.functional.softplus(raw[:, 0])
            b = raw[:, 1] + self.bias  # type: ignore[operator]  # a registered buffer (a Tensor)
            p = nn.functional.softplus(raw[:, 2]) + 0.05 if raw.shape[1] > 2 else torch.ones_like(a)
            return torch.stack([a, b, p], dim=1)

        def forward(self, features: torch.Tensor, x: torch.Tensor, query_index: torch.Tensor) -> torch.Tensor:
            """Logits for pairs: map input ``x[i]`` (in [0, 1]) belongs to query ``query_index[i]``."""
            a, b, p = self.params(features)[query_index].unbind(1)
            if self.mix is not None:  # a convex mix of increasing inputs: still increasing in the cosine
                x = (x * torch.softmax(self.mix, dim=0)).sum(dim=1)
            shaped = {"linear": x, "sqrt": x.sqrt(), "quadratic": x * x, "power": x.pow(p)}[family]
            return a * shaped + b

    return CosineAdapterNet()


class Calibrator:
    """Maps a query's raw cosines to relevance probabilities and filters them with one global threshold."""

    artifact_kind = "calibrator"

    def __init__(self, family: str = "power", embedding_dim: int = 384, use_embedding: bool = True,
                 use_stats: bool = False, hidden: int = 0, k: int = 100, threshold: float = 0.5,
                 stats_mean: Sequence[float] | None = None, stats_std: Sequence[float] | None = None,
                 encoder: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
                 input: str = "cosine") -> None:
        if input not in INPUTS:
            raise SiftrankError(f"calibrator input must be one of {', '.join(INPUTS)}, not '{input}'")
        self.input = input
        if family not in FAMILIES:
            raise SiftrankError(f"calibrator family must be one of {', '.join(FAMILIES)}, not '{family}'")
        check_threshold(threshold)
        self.family, self.embedding_dim, self.use_embedding, self.use_stats = family, embedding_dim, use_embedding, use_stats
        self.hidden, self.k, self.threshold = hidden, k, float(threshold)
        self.stats_mean = np.asarray(stats_mean if stats_mean is not None else np.zeros(N_STATS), dtype=np.float32)
        self.stats_std = np.asarray(stats_std if stats_std is not None else np.ones(N_STATS), dtype=np.float32)
        self.encoder = dict(encoder or {})
        self.extra = dict(extra or {})
        self.data: dict[str, Any] = {}  # what it was trained on (written to the manifest)
        self.metrics: dict[str, Any] = {}  # how it did (e.g. a cross-validation report)
        self.net = _torch_net(family, self.feature_dim, hidden, len(JOINT_PARTS) if input == "joint" else 0)

    @property
    def feature_dim(self) -> int:
        return (self.embedding_dim if self.use_embedding else 0) + (N_STATS if self.use_stats else 0)

    def features(self, query_vectors: np.ndarray, cosine_lists: Sequence[np.ndarray]) -> np.ndarray:
        """Per-query features: the query embedding and/or standardised top-K cosine statistics."""
        parts = []
        if self.use_embedding:
            parts.append(np.asarray(query_vectors, dtype=np.float32).reshape(len(cosine_lists), -1))
        if self.use_stats:
            stats = np.stack([cosine_stats(c[: self.k]) for c in cosine_lists]) if len(cosine_lists) else np.zeros((0, N_STATS))
            parts.append(((stats - self.stats_mean) / self.stats_std).astype(np.float32))
        out = np.concatenate(parts, axis=1) if parts else np.zeros((len(cosine_lists), 0), dtype=np.float32)
        if not np.all(np.isfinite(out)):
            raise SiftrankError("calibrator features contain NaN or infinite values")
        return out.astype(np.float32)

    def logits(self, features: np.ndarray, cosine_lists: Sequence[np.ndarray]) -> list[np.ndarray]:
        import torch

        lengths = [len(c) for c in cosine_lists]
        if not lengths:
            return []
        flat = np.concatenate([np.asarray(c, dtype=np.float32) for c in cosine_lists])
        if not np.all(np.isfinite(flat)):
            raise SiftrankError("cosine scores contain NaN or infinite values")
        flat = np.concatenate(map_input(self.input, cosine_lists))
        index = np.repeat(np.arange(len(lengths)), lengths)
        with torch.no_grad():
            out = self.net(torch.from_numpy(features), torch.from_numpy(flat), torch.from_numpy(index)).numpy()
        return np.split(out, np.cumsum(lengths)[:-1])

    def relevance(self, query_vectors: np.ndarray, cosine_lists: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Relevance probability of every candidate, per query (same order as ``cosine_lists``)."""
        logits = self.logits(self.features(query_vectors, cosine_lists), cosine_lists)
        return [1.0 / (1.0 + np.exp(-z)) for z in logits]

    def map_parameters(self, query_vectors: np.ndarray, cosine_lists: Sequence[np.ndarray]) -> np.ndarray:
        """(a, b, p) of each query's map: what makes a score interpretable and debuggable."""
        import torch

        with torch.no_grad():
            return self.net.params(torch.from_numpy(self.features(query_vectors, cosine_lists))).numpy()

    def input_weights(self) -> dict[str, float]:
        """The weight of each part of a ``joint`` input (which signal the map trusts); {} for a single input."""
        import torch

        if self.net.mix is None:
            return {}
        with torch.no_grad():
            return {part: round(float(w), 4) for part, w in zip(JOINT_PARTS, torch.softmax(self.net.mix, dim=0))}

    def check_encoder(self, identity: dict[str, Any]) -> None:
        """Refuse to calibrate cosines from another model than the one the calibrator was trained on."""
        if self.encoder and self.encoder.get("fingerprint") != identity.get("fingerprint"):
            raise SiftrankError(f"calibrator was trained for encoder '{self.encoder.get('model')}' (fingerprint "
                                f"{self.encoder.get('fingerprint')}) but the pipeline's encoder is '{identity.get('model')}' "
                                f"(fingerprint {identity.get('fingerprint')}): retrain it with `siftrank calibrate`")

    # ---- persistence -----------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {"family": self.family, "input": self.input, "embedding_dim": self.embedding_dim, "use_embedding": self.use_embedding,
                "use_stats": self.use_stats, "hidden": self.hidden, "k": self.k, "threshold": self.threshold,
                "stats_mean": self.stats_mean.tolist(), "stats_std": self.stats_std.tolist()}

    def save(self, path: Path, overwrite: bool = False) -> None:
        """Write the artifact (weights + manifest, with :attr:`data` and :attr:`metrics`) atomically."""
        from safetensors.torch import save_file

        with atomic_dir(Path(path), overwrite=overwrite) as tmp:
            save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, str(tmp / WEIGHTS_FILE))
            Manifest(kind=self.artifact_kind, source_model=self.encoder.get("model"), parameters=self.config(),
                     data=self.data, metrics=self.metrics, encoder=self.encoder, extra=self.extra).write(tmp)

    @classmethod
    def load(cls, path: Path) -> Calibrator:
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_dir():
            raise SiftrankError(f"{path}: calibrator directory not found")
        manifest = Manifest.read(path, kind=cls.artifact_kind)
        if not (path / WEIGHTS_FILE).is_file():
            raise SiftrankError(f"{path}: incomplete calibrator (no {WEIGHTS_FILE})")
        calibrator = cls(**manifest.parameters, encoder=getattr(manifest, "encoder", {}), extra=getattr(manifest, "extra", {}))
        calibrator.net.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
        calibrator.manifest = manifest  # type: ignore[attr-defined]
        return calibrator

    def __repr__(self) -> str:
        return f"Calibrator({json.dumps({k: v for k, v in self.config().items() if 'stats_' not in k})})"


def check_threshold(threshold: float) -> float:
    """Relevance thresholds are probabilities: refuse anything outside [0, 1] (or NaN)."""
    if not (0.0 <= float(threshold) <= 1.0):
        raise SiftrankError(f"relevance threshold must be within [0, 1], not {threshold}")
    return float(threshold)


BASELINES: tuple[str, ...] = ("raw_cosine", "platt", "minmax", "zscore", "top_k")


def baseline_scores(name: str, spec: dict[str, float], cosine_lists: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Scores of the query-independent baselines (each filtered by one global threshold on them):
    raw cosine; global Platt scaling sigmoid(a c + b); per-query min-max normalised cosine; per-query
    z-score of cosine; and fixed top-k, scored 1/rank so that the threshold 1/k keeps exactly the top k."""
    lists = [np.asarray(c, dtype=np.float64) for c in cosine_lists]
    if name == "raw_cosine":
        return lists
    if name == "platt":
        return [1.0 / (1.0 + np.exp(-(spec["a"] * c + spec["b"]))) for c in lists]
    if name == "minmax":
        return [(c - c.min()) / (c.max() - c.min()) if c.size and c.max() > c.min() else np.ones_like(c) for c in lists]
    if name == "zscore":
        return [(c - c.mean()) / c.std() if c.size and c.std() > 0 else np.zeros_like(c) for c in lists]
    if name == "top_k":
        return [1.0 / np.arange(1, c.size + 1) for c in lists]
    raise SiftrankError(f"unknown baseline '{name}' (known: {', '.join(BASELINES)})")
