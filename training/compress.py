"""Compression of the domain encoder after fine-tuning: remove whole layers and FFN neurons of the fine-tuned
teacher, then distil the teacher back into the smaller student on the domain's own text (docs/compression.md).

The order follows the field (CoFi, Minitron, sentence-transformers' layer-reduction distillation): prune the
*fine-tuned* model and distil from it as teacher, rather than prune the base model and fine-tune after (the prune
stage, which costs 7 nDCG@10 points on SciFact). Removing structure is the saving that travels to every CPU: the
matrices really shrink, whatever the backend.

Which units go is decided by a score, one per unit (a layer, or an FFN neuron of a kept layer):

- ``gaprune``: GAPrune's Domain Alignment Importance with each unit's *gate* as its parameter. A gate multiplies
  the unit's output (a neuron's activation; a layer's change to the token states, ``h + g·(layer(h) − h)``) and
  is 1, so |θ| is 1 for every unit and the DAI of training/prune.py reduces to
  ``(F̃_dom − β·F̃_gen + γ)·(1 + α·s̃)``: the gate's Fisher (mean squared gradient of InfoNCE) on domain triplets
  and on general ones, each divided by its RMS over the units of that kind, and the alignment ``s`` of the two
  mean gradients (per unit kind normalised to unit norm, their product divided by its largest magnitude).
  The gate's Fisher is the squared first-order estimate of the loss change when the unit is removed (Molchanov
  et al. 2019), computed on the teacher, where the units will be removed.
- ``magnitude``: summed |w| of the neuron's row in ``intermediate.dense`` and column in ``output.dense``; a
  layer's mean |w| over its weight matrices.
- ``activation``: on corpus text, a neuron's RMS activation times the norm of its output weights (Wanda/FLAP);
  a layer's block influence, 1 − cosine of the token states before and after it (ShortGPT).

Distillation (training/distil.py): 1 − cosine to the teacher's vector plus the relative squared error of each
student layer's token states against the teacher layer it was kept from, on corpus passages, their openings and
the training queries (unlabeled text), optionally plus InfoNCE on the training triplets (``supervised``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from retrieval.errors import SiftrankError
from training.distil import LEARNING_RATE, activation_stats, distil
from training.prune import DEFAULT_BETA, Pruner, check_sparsity, encoder_layers
from training.triplets import Triplet

SCORES = ("gaprune", "magnitude", "activation")


@dataclass
class UnitScores:
    """Importance (higher: keep) of every layer and of every FFN neuron of every layer."""

    layers: Any  # tensor [layers]
    neurons: list[Any]  # per layer, tensor [intermediate]


class Compressor:
    """Shrinks a fine-tuned sentence-transformers model (layers, FFN neurons) and distils it back from itself."""

    artifact_kind = "compressed-encoder"

    def __init__(self, teacher: str, score: str = "gaprune", layers: int | None = None, ffn: float = 0.0,
                 epochs: float = 1.0, batch_size: int = 32, learning_rate: float = LEARNING_RATE, supervised: float = 0.0,
                 seed: int = 0, alpha: float = 0.2, beta: float = DEFAULT_BETA, gamma: float = 0.5) -> None:
        """``layers``: how many layers the student keeps (None: all); ``ffn``: the share of FFN neurons each
        kept layer loses (0: none). The default β = 0 is the prune stage's, chosen there on held-out queries."""
        if score not in SCORES:
            raise SiftrankError(f"unknown compression score {score!r}; one of {', '.join(SCORES)}")
        if ffn:
            check_sparsity(ffn)
        if epochs <= 0 or batch_size < 2 or learning_rate <= 0 or supervised < 0:
            raise SiftrankError("epochs and learning rate must be > 0, the batch size >= 2 and the supervised weight >= 0")
        self.pruner = Pruner(teacher, seed=seed, beta=beta)
        self.pruner.artifact_kind = self.artifact_kind  # the pruner writes the folder and its manifest
        depth = len(self.pruner.ffn_layers())
        if layers is not None and not 1 <= layers <= depth:
            raise SiftrankError(f"compress: layers must be within 1..{depth} (the teacher's depth), not {layers}")
        if (layers is None or layers == depth) and not ffn:
            raise SiftrankError("compress: nothing to remove (set layers below the teacher's depth and/or ffn > 0)")
        self.source, self.score, self.layers, self.ffn = teacher, score, layers if layers is not None else depth, ffn
        self.epochs, self.batch_size, self.learning_rate, self.supervised, self.seed = epochs, batch_size, learning_rate, supervised, seed
        self.alpha, self.beta, self.gamma = alpha, beta, gamma

    # ---- scores ----------------------------------------------------------------------------------------
    def unit_scores(self, texts: Sequence[str], domain: Sequence[Triplet], general: Sequence[Triplet]) -> UnitScores:
        """Every unit's score under :attr:`score` (see the module doc), on the teacher."""
        model = self.pruner.model
        if self.score == "activation":
            neurons, influence = activation_stats(model, texts, self.batch_size, self.seed)
            return UnitScores(influence, neurons)
        if self.score == "magnitude":
            import torch

            layers = encoder_layers(model)
            neurons = [layer.intermediate.dense.weight.detach().abs().sum(dim=1) + layer.output.dense.weight.detach().abs().sum(dim=0)
                       for layer in layers]
            means = [torch.cat([m.weight.detach().abs().flatten() for m in layer.modules() if isinstance(m, torch.nn.Linear)]).mean()
                     for layer in layers]
            return UnitScores(torch.stack(means), neurons)
        if not domain or not general:
            raise SiftrankError("GAPrune's score needs domain and general triplets")
        fisher_dom, mean_dom = self.gate_gradients(domain, "domain")
        fisher_gen, mean_gen = self.gate_gradients(general, "general")
        return UnitScores(*(self._dai(fisher_dom[k], fisher_gen[k], mean_dom[k], mean_gen[k]) for k in ("layers", "neurons")))

    def _dai(self, f_dom, f_gen, g_dom, g_gen):
        """GAPrune's DAI of gates (|θ| = 1) for one kind of unit; ``f_*``, ``g_*``: a tensor or a list of them."""
        import torch

        def flat(x):
            return torch.cat([t.flatten() for t in x]) if isinstance(x, list) else x

        def rms(t):
            return t.square().mean().sqrt().clamp_min(torch.finfo(torch.float32).tiny)

        fd, fg, gd, gg = (flat(x) for x in (f_dom, f_gen, g_dom, g_gen))
        alignment = (gd / gd.norm().clamp_min(1e-30)) * (gg / gg.norm().clamp_min(1e-30))
        alignment = alignment / alignment.abs().max().clamp_min(1e-30)
        score = (fd / rms(fd) - self.beta * fg / rms(fg) + self.gamma) * (1 + self.alpha * alignment)
        if not isinstance(f_dom, list):
            return score
        sizes = [t.numel() for t in f_dom]
        return list(torch.split(score, sizes))

    def gate_gradients(self, triplets: Sequence[Triplet], name: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Fisher (mean squared batch gradient) and mean gradient of every unit's gate under InfoNCE on
        ``triplets`` (``name``: for the progress bar)."""
        import torch

        model, layers = self.pruner.model, encoder_layers(self.pruner.model)
        layer_gates = torch.ones(len(layers), requires_grad=True)
        neuron_gates = [torch.ones(layer.intermediate.dense.out_features, requires_grad=True) for layer in layers]

        def neuron_hook(k: int):
            def gate(_module, _inputs, output):  # noqa: ANN001, ANN202
                return output * neuron_gates[k]
            return gate

        def layer_hook(k: int):
            def gate(_module, args, _kwargs, output):  # noqa: ANN001, ANN202
                states = output[0] if isinstance(output, tuple) else output
                gated = args[0] + layer_gates[k] * (states - args[0])
                return (gated, *output[1:]) if isinstance(output, tuple) else gated
            return gate

        handles = [layer.intermediate.register_forward_hook(neuron_hook(k)) for k, layer in enumerate(layers)]
        handles += [layer.register_forward_hook(layer_hook(k), with_kwargs=True) for k, layer in enumerate(layers)]
        gates = [layer_gates, *neuron_gates]
        fisher = [torch.zeros_like(g) for g in gates]
        mean = [torch.zeros_like(g) for g in gates]
        batches = [triplets[i:i + self.pruner.batch_size] for i in range(0, len(triplets), self.pruner.batch_size)]
        model.eval()
        try:
            for batch in tqdm(batches, desc=f"gate gradients ({name})", unit="batch"):
                grads = torch.autograd.grad(self.pruner.loss(batch), gates)
                for f, m, g in zip(fisher, mean, grads):
                    f += g * g / len(batches)
                    m += g / len(batches)
        finally:
            for handle in handles:
                handle.remove()
        model.zero_grad(set_to_none=True)
        return ({"layers": fisher[0], "neurons": fisher[1:]}, {"layers": mean[0], "neurons": mean[1:]})

    # ---- structure -------------------------------------------------------------------------------------
    def shrink(self, scores: UnitScores) -> dict[str, Any]:
        """Keep the :attr:`layers` best-scored layers (in their order), then remove the :attr:`ffn` share of
        each kept layer's neurons by score; returns the teacher layer each student layer was kept from."""
        import torch

        transformer = self.pruner.model[0].auto_model
        layers = encoder_layers(self.pruner.model)
        keep = sorted(torch.topk(scores.layers, self.layers).indices.tolist())
        transformer.encoder.layer = torch.nn.ModuleList([layers[i] for i in keep])
        transformer.config.num_hidden_layers = len(keep)
        sizes: dict[str, Any] = {"intermediate_size": transformer.config.intermediate_size}
        if self.ffn:
            sizes = self.pruner.remove_neurons([scores.neurons[i] for i in keep], self.ffn)
        return {"kept_layers": keep, **sizes}

    # ---- the whole compression ---------------------------------------------------------------------------
    def run(self, texts: Sequence[str], domain: Sequence[Triplet] = (), general: Sequence[Triplet] = (),
            progress: bool = True) -> dict[str, Any]:
        """Score on the teacher, shrink, distil on ``texts`` (with InfoNCE on ``domain`` when :attr:`supervised`);
        returns what the manifest records."""
        if len(texts) < self.batch_size:
            raise SiftrankError(f"compress: {len(texts)} texts to distil on, fewer than one batch of {self.batch_size}")
        start = time.perf_counter()
        teacher = copy.deepcopy(self.pruner.model).eval()
        before = sum(p.numel() for p in teacher.parameters())
        scores = self.unit_scores(texts, domain, general)
        structure = self.shrink(scores)
        trained = distil(self.pruner.model, teacher, texts, epochs=self.epochs, batch_size=self.batch_size,
                         learning_rate=self.learning_rate, seed=self.seed, layer_map=structure["kept_layers"],
                         triplets=domain, supervised=self.supervised, progress=progress)
        self.pruner.report = {
            "parameters": {"score": self.score, "layers": self.layers, "ffn": self.ffn, "epochs": self.epochs,
                           "batch_size": self.batch_size, "learning_rate": self.learning_rate,
                           "supervised": self.supervised, "seed": self.seed,
                           **({"alpha": self.alpha, "beta": self.beta, "gamma": self.gamma} if self.score == "gaprune" else {})},
            "data": {"texts": len(texts), "domain_triplets": len(domain), "general_triplets": len(general)},
            "metrics": {"parameters_before": before, "parameters": sum(p.numel() for p in self.pruner.model.parameters()),
                        **structure, "layer_scores": [round(float(s), 5) for s in scores.layers], **trained,
                        "wall_seconds": round(time.perf_counter() - start, 1)}}
        return self.pruner.report

    def save(self, path: Path, overwrite: bool = False) -> None:
        """A standard sentence-transformers folder plus manifest.json (the last run's report), written atomically."""
        self.pruner.save(path, overwrite=overwrite)
