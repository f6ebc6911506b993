"""GAPrune: domain-aware pruning of the embedding model, with its baselines in the same code path.

After "GAPrune: Gradient-Alignment Pruning for Domain-Aware Embeddings" (arXiv 2509.10844). With
contrastive triplets (query, positive, hard negative) from a general set (MS MARCO) and a domain set
(SciFact train), InfoNCE with in-batch and hard negatives at temperature 0.05, for every weight j of
the target matrices (default: both FFN matrices of every layer):

    Fisher         F_j = mean over batches of (dL/dθ_j)^2          once on domain, once on general data
    alignment      s_j = avgpool3x3(ĝ_gen ⊙ ĝ_dom)_j                ĝ = the mean gradient / its tensor norm
    DAI            [(F^dom_j − β F^gen_j)·|θ_j| + γ·√|θ_j|]·(1 + α s_j),   β = 1, α = 0.2, γ = 0.5

Everything is computed in fp32, and each term is normalised per tensor (Fisher and |θ| by their
tensor RMS by default, or mean/max; s by its largest magnitude) before combining: the official code
keeps scores in fp16, where the Fisher terms underflow and the ordering collapses to magnitude pruning
(in fp32 at the paper's raw scale they are still negligible next to γ√|θ|: ``normalise="raw"``).
The default β = 0 rather than the paper's 1 was chosen on held-out SciFact-train queries
(benchmarks/prune_select.py): once the Fisher terms really act, subtracting the general Fisher prunes
first the weights that matter most to general data, and those matter to the domain as well. The lowest-DAI
weights are pruned (unstructured, global or per-matrix budget). Baselines: magnitude, random,
domain-Fisher and general-Fisher saliency (F·θ²). Optional retraining keeps the masks. The
structured variant removes whole FFN neurons by summed DAI, so the matrices really shrink.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from retrieval.artifacts import Manifest, atomic_dir
from retrieval.errors import SiftrankError
from training.adapters import FFN_PATTERN
from training.triplets import Triplet, general_triplets, judged_queries, training_pairs

if TYPE_CHECKING:
    from training.stages.context import BuildContext

log = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("gaprune", "magnitude", "random", "fisher-domain", "fisher-general")


def _rms(t):
    """Root mean square computed as max·rms(t/max), so tiny values (squared Fisher) never underflow."""
    peak = t.abs().max()
    return peak * (t / peak).square().mean().sqrt() if peak > 0 else peak


NORMALISERS = {"mean": lambda t: t.mean(), "max": lambda t: t.max(), "rms": _rms, "raw": lambda t: t.new_ones(())}
# Chosen on held-out SciFact-train queries (benchmarks/prune_select.py, docs/pruning/selection.md): the
# paper's β = 1 prunes the weights that matter most for general data first, and those matter for the domain too.
DEFAULT_BETA, DEFAULT_NORMALISE = 0.0, "rms"


def calibration_sets(model: str, domain: Path, domain_split: str, general: Path | None, limit: int = 256,
                     context: BuildContext | None = None) -> tuple[list[Triplet], list[Triplet]]:
    """Domain triplets (one per judged query, the hard negative from the pipeline's first stage over
    ``model``: ``context``'s in a build, else a dense one) and general triplets (none without a general
    folder: methods that need them then fail with a clear error)."""
    from training.stages.context import BuildContext

    general_set = general_triplets(general, limit) if general is not None else []  # cheap checks first: no encoding before bad input is caught
    ctx = context or BuildContext.plain(model, domain, domain_split)
    qids = judged_queries(ctx.dataset)[:limit]
    return training_pairs(ctx.dataset, ctx.ranked_ids(qids, 20), qids, per_query=1), general_set


class Pruner:
    """Scores, masks and (optionally) retrains the target matrices of a sentence-transformers model."""

    artifact_kind = "pruned-encoder"

    def __init__(self, model: str, target: str = FFN_PATTERN, batch_size: int = 16, temperature: float = 0.05,
                 max_length: int = 256, seed: int = 0, beta: float = DEFAULT_BETA, normalise: str = DEFAULT_NORMALISE) -> None:
        import torch

        from retrieval.encoder import load_sentence_transformer, resolve_model_path

        if normalise not in NORMALISERS:
            raise SiftrankError(f"normalisation must be one of {', '.join(NORMALISERS)}, not '{normalise}'")
        if beta < 0:
            raise SiftrankError(f"beta must be >= 0, not {beta}")
        self.source, self.beta, self.normalise = model, beta, normalise
        self.report: dict[str, Any] = {}  # the manifest's parameters, data and metrics (set by prune or distil)
        self.path = resolve_model_path(model)
        torch.manual_seed(seed)
        self.seed = seed
        self.model = load_sentence_transformer(self.path, "cpu")
        self.model.max_seq_length = min(max_length, self.model.max_seq_length or max_length)
        self.batch_size, self.temperature = batch_size, temperature
        pattern = re.compile(target)
        self.targets = {name: p for name, p in self.model.named_parameters() if pattern.search(name) and p.dim() == 2}
        if not self.targets:
            raise SiftrankError(f"target modules '{target}' match no weight matrix of {model}")
        self.fisher: dict[str, dict[str, Any]] = {}
        self.mean_grad: dict[str, dict[str, Any]] = {}

    # ---- gradients ---------------------------------------------------------------------------------
    def loss(self, batch: Sequence[Triplet]):
        """InfoNCE over in-batch and hard negatives (temperature 0.05), as in the paper."""
        return info_nce(self.model, batch, self.temperature)

    def gradients(self, name: str, triplets: Sequence[Triplet]) -> None:
        """Fisher (mean squared batch gradient) and mean gradient of every target weight, in fp32."""
        import torch

        if not triplets:
            raise SiftrankError(f"the {name} calibration set has no triplets")
        self.model.eval()  # no dropout: the Fisher of the model as it will be used
        fisher = {k: torch.zeros_like(p, dtype=torch.float32) for k, p in self.targets.items()}
        mean = {k: torch.zeros_like(p, dtype=torch.float32) for k, p in self.targets.items()}
        batches = [triplets[i:i + self.batch_size] for i in range(0, len(triplets), self.batch_size)]
        for batch in tqdm(batches, desc=f"gradients ({name})", unit="batch"):
            self.model.zero_grad(set_to_none=True)
            self.loss(batch).backward()
            for k, p in self.targets.items():
                g = p.grad.detach().float()
                fisher[k] += g * g / len(batches)
                mean[k] += g / len(batches)
        self.model.zero_grad(set_to_none=True)
        self.fisher[name], self.mean_grad[name] = fisher, mean

    # ---- scores ----------------------------------------------------------------------------------
    def scores(self, method: str = "gaprune", alpha: float = 0.2, beta: float | None = None, gamma: float = 0.5,
               normalise: str | None = None) -> dict[str, Any]:
        """Importance of every target weight (higher = keep) under ``method`` (β and the normalisation
        default to the pruner's)."""
        import torch

        beta = self.beta if beta is None else beta
        normalise = normalise or self.normalise
        if method not in METHODS:
            raise SiftrankError(f"pruning method must be one of {', '.join(METHODS)}, not '{method}'")
        generator = torch.Generator().manual_seed(self.seed)
        out = {}
        for k, p in self.targets.items():
            w = p.detach().float()
            if method == "magnitude":
                out[k] = w.abs()
            elif method == "random":
                out[k] = torch.rand(w.shape, generator=generator)
            elif method in ("fisher-domain", "fisher-general"):
                out[k] = self._need(method.split("-")[1])[0][k] * w * w
            else:
                out[k] = self.dai(k, w, alpha, beta, gamma, normalise)
        return out

    def _need(self, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
        if name not in self.fisher:
            raise SiftrankError(f"compute gradients on the {name} calibration set first")
        return self.fisher[name], self.mean_grad[name]

    def dai(self, key: str, w, alpha: float, beta: float, gamma: float, normalise: str = "mean"):
        """Domain Alignment Importance of one tensor, each term normalised per tensor in fp32."""
        import torch

        f_dom, g_dom = (x[key] for x in self._need("domain"))
        f_gen, g_gen = (x[key] for x in self._need("general"))
        eps = torch.finfo(torch.float32).tiny  # guards empty tensors only: the scale of the terms never matters
        scale = NORMALISERS[normalise]
        magnitude = w.abs() / (scale(w.abs()) + eps)
        fisher = f_dom / (scale(f_dom) + eps) - beta * f_gen / (scale(f_gen) + eps)
        product = (g_gen / (g_gen.norm() + eps)) * (g_dom / (g_dom.norm() + eps))
        pooled = torch.nn.functional.avg_pool2d(product[None, None], 3, stride=1, padding=1)[0, 0]
        alignment = pooled / (pooled.abs().max() + eps)
        return (fisher * magnitude + gamma * magnitude.sqrt()) * (1 + alpha * alignment)

    # ---- masks ---------------------------------------------------------------------------------------
    def masks(self, scores: dict[str, Any], sparsity: float, scope: str = "global") -> dict[str, Any]:
        """Boolean keep-masks pruning the ``sparsity`` share of lowest scores, over all targets or per matrix."""
        import torch

        check_sparsity(sparsity)
        if scope == "global":
            flat = torch.cat([s.flatten() for s in scores.values()])
            cut = torch.kthvalue(flat, max(1, int(sparsity * flat.numel()))).values
            return {k: s > cut for k, s in scores.items()}
        if scope == "matrix":
            return {k: s > torch.kthvalue(s.flatten(), max(1, int(sparsity * s.numel()))).values for k, s in scores.items()}
        raise SiftrankError(f"budget scope must be 'global' or 'matrix', not '{scope}'")

    def apply(self, masks: dict[str, Any]) -> dict[str, float]:
        """Zero the pruned weights; returns the sparsity of every matrix."""
        import torch

        with torch.no_grad():
            for k, mask in masks.items():
                self.targets[k].mul_(mask.to(self.targets[k].dtype))
        return {k: float(1 - m.float().mean()) for k, m in masks.items()}

    def retrain(self, triplets: Sequence[Triplet], steps: int = 100, lr: float = 2e-5, masks: dict[str, Any] | None = None) -> list[float]:
        """``steps`` InfoNCE steps on ``triplets`` (cycled), re-applying the masks after every step."""
        import torch

        if not triplets:
            raise SiftrankError("no triplets to retrain on")
        self.model.train()
        optimiser = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.0)
        rng = np.random.default_rng(self.seed)
        losses = []
        for _ in tqdm(range(steps), desc="retrain", unit="step"):
            batch = [triplets[i] for i in rng.choice(len(triplets), size=min(self.batch_size, len(triplets)), replace=False)]
            optimiser.zero_grad(set_to_none=True)
            loss = self.loss(batch)
            loss.backward()
            optimiser.step()
            if masks:
                self.apply(masks)
            losses.append(float(loss.detach()))
        self.model.eval()
        return losses

    # ---- structured ----------------------------------------------------------------------------------
    def ffn_layers(self) -> list:
        """The model's BERT-style transformer layers (each with ``intermediate`` and ``output``), or an error."""
        return encoder_layers(self.model, str(self.source))

    def remove_neurons(self, scores: dict[str, Any] | list[Any], sparsity: float) -> dict[str, int]:
        """Remove the ``sparsity`` share of FFN neurons of every layer, ranked by summed score of the
        neuron's row in ``intermediate.dense`` and column in ``output.dense`` (``scores`` per parameter), or
        by one score per neuron (``scores`` a list with a vector per layer): smaller dense matrices."""
        import torch

        check_sparsity(sparsity)
        transformer = self.model[0].auto_model
        layers = self.ffn_layers()
        keep_count = max(1, int(round((1 - sparsity) * layers[0].intermediate.dense.out_features)))
        for i, layer in enumerate(layers):
            up, down = layer.intermediate.dense, layer.output.dense
            if isinstance(scores, list):
                neuron = scores[i]
            else:
                key_up = next((k for k in scores if re.search(rf"layer\.{i}\.intermediate\.dense\.weight$", k)), None)
                key_down = next((k for k in scores if re.search(rf"layer\.{i}\.output\.dense\.weight$", k)), None)
                if key_up is None or key_down is None:
                    raise SiftrankError("structured pruning needs scores for both FFN matrices of every layer")
                neuron = scores[key_up].sum(dim=1) + scores[key_down].sum(dim=0)
            keep = torch.sort(torch.topk(neuron, keep_count).indices).values
            layer.intermediate.dense = _slice(up, keep, dim=0)
            layer.output.dense = _slice(down, keep, dim=1)
        transformer.config.intermediate_size = keep_count
        self.targets = {name: p for name, p in self.model.named_parameters() if re.search(FFN_PATTERN, name)}
        return {"intermediate_size": keep_count, "parameters": sum(p.numel() for p in self.model.parameters())}

    # ---- the whole recipe ------------------------------------------------------------------------------
    def prune(self, method: str, sparsity: float, domain_set: Sequence[Triplet], general_set: Sequence[Triplet],
              scope: str = "global", structured: bool = False, retrain_steps: int = 0,
              general_mix: bool = False) -> dict[str, Any]:
        """Gradients (where the method needs them), scores, masks or neuron removal, optional retraining
        (on the domain triplets, with the general ones mixed in when ``general_mix``: quality kept on
        general data); returns what the manifest records."""
        import torch
        from scipy.stats import spearmanr

        if method in ("gaprune", "fisher-domain") and "domain" not in self.fisher:
            self.gradients("domain", domain_set)
        if method in ("gaprune", "fisher-general") and "general" not in self.fisher:
            self.gradients("general", general_set)
        scores = self.scores(method)
        metrics: dict[str, Any] = {}
        if method == "gaprune":  # DAI must not be a function of |w| alone: the Fisher and alignment terms act
            flat = torch.cat([s.flatten() for s in scores.values()])
            weights = torch.cat([p.detach().abs().flatten() for p in self.targets.values()])
            sample = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))[:200_000]
            metrics["spearman_dai_vs_magnitude"] = float(spearmanr(flat[sample].numpy(), weights[sample].numpy())[0])
        masks = None
        per_matrix: dict[str, float] = {}
        if structured:
            metrics.update(self.remove_neurons(scores, sparsity))
        else:
            masks = self.masks(scores, sparsity, scope)
            per_matrix = self.apply(masks)
        if retrain_steps:
            retrain_set = list(domain_set) + (list(general_set) if general_mix else [])
            metrics["retrain_loss_last"] = self.retrain(retrain_set, retrain_steps, masks=masks)[-10:]
        metrics["parameters"] = sum(p.numel() for p in self.model.parameters())
        self.report = {"parameters": {"method": method, "sparsity": sparsity, "beta": self.beta, "normalise": self.normalise, "scope": scope, "structured": structured,
                               "retrain_steps": retrain_steps, "general_mix": general_mix,
                               "sparsity_per_matrix": per_matrix},
                "data": {"domain_triplets": len(domain_set), "general_triplets": len(general_set)}, "metrics": metrics}
        return self.report

    def build(self, out: Path, context: BuildContext, method: str, sparsity: float, triplets: int,
              general: Path | None, scope: str = "global", structured: bool = False, retrain_steps: int = 0,
              general_mix: bool = False, overwrite: bool = False) -> dict[str, Any]:
        """The whole prune as ``siftrank prune`` and the build's prune stage run it: calibration triplets through
        ``context``'s first stage, :meth:`prune`, then the folder at ``out``; returns the report."""
        domain_set, general_set = calibration_sets(str(self.source), Path(context.recipe.data.dataset),
                                                   context.recipe.data.split, general, triplets, context=context)
        report = self.prune(method, sparsity, domain_set, general_set, scope, structured, retrain_steps, general_mix)
        self.save(out, overwrite)
        return report

    # ---- output ----------------------------------------------------------------------------------------
    def save(self, path: Path, overwrite: bool = False) -> None:
        """A standard sentence-transformers folder plus manifest.json (with :attr:`report`), written atomically."""
        with atomic_dir(Path(path), overwrite=overwrite) as tmp:
            self.model.save(str(tmp))
            Manifest(kind=self.artifact_kind, source_model=self.source, **self.report).write(tmp)


def _slice(linear, keep, dim: int):
    """A new Linear layer with only the ``keep`` outputs (dim 0) or inputs (dim 1)."""
    import torch

    weight = linear.weight.detach().index_select(dim, keep).clone()
    out = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None)
    with torch.no_grad():
        out.weight.copy_(weight)
        if linear.bias is not None:
            out.bias.copy_(linear.bias.detach() if dim == 1 else linear.bias.detach()[keep])
    return out


def encoder_layers(model, name: str = "the model") -> list:
    """The BERT-style transformer layers (each with ``intermediate`` and ``output``) of a sentence-transformers
    model, or an error."""
    layers = getattr(getattr(model[0].auto_model, "encoder", None), "layer", None)
    if layers is None or not all(hasattr(layer, "intermediate") and hasattr(layer, "output") for layer in layers):
        raise SiftrankError(f"{name} has no BERT-style FFN layers (intermediate/output) to remove neurons from")
    return list(layers)


def info_nce(model, batch: Sequence[Triplet], temperature: float = 0.05):
    """InfoNCE of (query, positive, hard negative) triplets over in-batch and hard negatives."""
    import torch

    queries, positives, negatives = zip(*batch)
    q = torch.nn.functional.normalize(model(model.preprocess(list(queries)))["sentence_embedding"], dim=-1)
    d = torch.nn.functional.normalize(model(model.preprocess(list(positives + negatives)))["sentence_embedding"], dim=-1)
    return torch.nn.functional.cross_entropy(q @ d.T / temperature, torch.arange(len(batch)))


def check_sparsity(sparsity: float) -> float:
    if not 0.0 < float(sparsity) < 1.0:
        raise SiftrankError(f"sparsity must be within (0, 1), not {sparsity}")
    return float(sparsity)
