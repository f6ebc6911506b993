"""A faster encoder for one corpus: remove FFN neurons, then distil the unpruned model back into it.

Speed, not domain adaptation (that is GAPrune, training/prune.py): the FFN holds two thirds of MiniLM's
matrix work, so removing a share of its neurons shrinks the matrices (bytes on disk, passages per second), and
embedding distillation (EmbedDistill's embedding matching: 1 − cosine to the teacher's vector) pulls the smaller
model back towards the full one. With ``loss="layers"`` (the default) the student also matches the teacher's
token states after every layer (relative squared error over real tokens, as in CoFi/TinyBERT layer distillation):
the FFN removal changes every layer, and one pooled vector per text is a thin signal to repair six of them.
Dropout is off while distilling: the targets are the teacher's exact outputs, not labels to regularise against.
The training texts are unlabeled: passages of the corpus to be indexed plus their openings (4-10 words) as stand-ins for
queries, the same data int8 calibration reads; no query and no relevance label is seen. Neurons are ranked by
their expected contribution on the training texts (``scoring="activation"``: RMS of the neuron's activation over
real tokens times the norm of its output weights, as in Wanda/FLAP) or by the summed magnitude of their two FFN
weight vectors (``"magnitude"``); neither needs gradients.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from retrieval.errors import SiftrankError
from training.prune import Pruner, check_sparsity, encoder_layers, info_nce
from training.triplets import Triplet

LOSSES = ("layers", "cosine")
SCORINGS = ("magnitude", "activation")
LEARNING_RATE = 1e-3  # highest held-out cosine of the grid in benchmarks/distil_select.py (unlabeled text only)


class Distiller:
    """Prunes FFN neurons of a sentence-transformers model and distils the original model's vectors into it."""

    artifact_kind = "pruned-encoder"

    def __init__(self, model: str = "bundled:all-MiniLM-L6-v2", sparsity: float = 0.25, epochs: float = 1.0,
                 batch_size: int = 32, learning_rate: float = LEARNING_RATE, seed: int = 0, loss: str = "layers",
                 scoring: str = "magnitude") -> None:
        self.source, self.sparsity = model, check_sparsity(sparsity)
        if epochs <= 0 or batch_size < 1 or learning_rate <= 0:
            raise SiftrankError("epochs and learning rate must be > 0 and the batch size >= 1")
        if loss not in LOSSES:
            raise SiftrankError(f"unknown distillation loss {loss!r}; one of {', '.join(LOSSES)}")
        if scoring not in SCORINGS:
            raise SiftrankError(f"unknown neuron scoring {scoring!r}; one of {', '.join(SCORINGS)}")
        self.epochs, self.batch_size, self.learning_rate, self.seed, self.loss = epochs, batch_size, learning_rate, seed, loss
        self.scoring = scoring
        self.pruner = Pruner(model, seed=seed)

    def texts(self, passages: Sequence[str], limit: int = 8000) -> list[str]:
        """Up to ``limit`` passages and, for half of them, their opening words (short, query-like inputs)."""
        texts = distillation_texts(passages, limit, self.seed)
        if len(texts) < self.batch_size:
            raise SiftrankError(f"{len(texts)} training texts, fewer than one batch of {self.batch_size}")
        return texts

    def run(self, passages: Sequence[str], limit: int = 8000, progress: bool = True) -> dict[str, Any]:
        """Prune, then distil on ``passages``; returns what the manifest records (sizes, losses, wall time)."""
        import copy

        texts = self.texts(passages, limit)
        start = time.perf_counter()
        teacher = copy.deepcopy(self.pruner.model).eval()  # the full model, before any neuron goes
        before = sum(p.numel() for p in teacher.parameters())
        scores = self.activation_scores(texts) if self.scoring == "activation" else self.pruner.scores("magnitude")
        sizes = self.pruner.remove_neurons(scores, self.sparsity)
        trained = distil(self.pruner.model, teacher, texts, epochs=self.epochs, batch_size=self.batch_size,
                         learning_rate=self.learning_rate, seed=self.seed, layers=self.loss == "layers", progress=progress)
        self.pruner.report = {"parameters": {"sparsity": self.sparsity, "epochs": self.epochs, "batch_size": self.batch_size,
                               "learning_rate": self.learning_rate, "seed": self.seed, "scoring": self.scoring,
                               "loss": "1 - cosine to the teacher's vector" + (
                                   " + relative squared error of every layer's token states" if self.loss == "layers" else ""),
                               "dropout": False},
                "data": {"texts": len(texts), "passage_limit": limit},
                "metrics": {"parameters_before": before, **sizes, **trained,
                            "wall_seconds": round(time.perf_counter() - start, 1)}}
        return self.pruner.report

    def activation_scores(self, texts: Sequence[str], sample: int = 512) -> list[Any]:
        """Per layer, each FFN neuron's expected output size over real tokens of ``sample`` texts (see
        :func:`activation_stats`)."""
        return activation_stats(self.pruner.model, texts, self.batch_size, self.seed, sample)[0]

    def save(self, path: Path, overwrite: bool = False) -> None:
        """A standard sentence-transformers folder plus manifest.json (the last run's report), written atomically."""
        self.pruner.save(path, overwrite=overwrite)


def distil(student, teacher, texts: Sequence[str], *, epochs: float, batch_size: int, learning_rate: float, seed: int,
           layers: bool = True, layer_map: Sequence[int] | None = None, triplets: Sequence[Triplet] = (),
           supervised: float = 0.0, temperature: float = 0.05, progress: bool = True) -> dict[str, Any]:
    """Train ``student`` (in place) to give ``teacher``'s vectors on ``texts``: 1 − cosine to the teacher's vector,
    plus (``layers``) the relative squared error of the token states after every student layer against the teacher
    layer ``layer_map`` names for it (default: the same layer; a student with fewer layers maps each of its layers to
    the teacher layer it was kept from), plus (``supervised`` > 0) that weight times InfoNCE (in-batch and hard
    negatives) on a batch of ``triplets`` per step. Dropout off; batches of similar length in shuffled order.
    Returns the steps and the loss logs."""
    import numpy as np
    import torch

    if supervised and not triplets:
        raise SiftrankError("a supervised distillation loss needs training triplets")
    torch.manual_seed(seed)
    # batches of similar length (little padding: 2.5x faster on CPU than shuffled ones), in shuffled order
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng = np.random.default_rng(seed)
    plan = [batches[i] for _ in range(int(np.ceil(epochs))) for i in rng.permutation(len(batches))]
    plan = plan[: max(1, int(round(epochs * len(batches))))]
    optimiser = torch.optim.AdamW(student.parameters(), lr=learning_rate, weight_decay=0.0)
    warmup = max(1, len(plan) // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, 1 - s / len(plan)))
    mapping = [0] + [m + 1 for m in (layer_map if layer_map is not None else range(len(encoder_layers(student))))]
    pairs = max(2, min(batch_size // 2, len(triplets))) if supervised else 0
    student.eval()  # gradients flow in eval mode; only dropout is off
    losses: list[tuple[float, float, float]] = []
    with _hidden_states(student, teacher, layers):
        for step, batch in enumerate(tqdm(plan, desc="distil", unit="batch", disable=not progress)):
            features = student.preprocess([texts[i] for i in batch])
            with torch.no_grad():
                wanted = teacher(dict(features))
            got = student(dict(features))
            vector = (1 - (torch.nn.functional.normalize(got["sentence_embedding"], dim=-1)
                           * torch.nn.functional.normalize(wanted["sentence_embedding"], dim=-1)).sum(dim=-1)).mean()
            hidden = (_layer_error(got["all_layer_embeddings"], [wanted["all_layer_embeddings"][m] for m in mapping],
                                   features["attention_mask"]) if layers else torch.zeros(()))
            ranking = (info_nce(student, [triplets[(step * pairs + k) % len(triplets)] for k in range(pairs)], temperature)
                       if supervised else torch.zeros(()))
            loss = vector + hidden + supervised * ranking
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append((float(vector.detach()), float(hidden.detach()), float(ranking.detach())))
    every = max(1, len(losses) // 20)
    log = [np.mean(losses[i:i + every], axis=0) for i in range(0, len(losses), every)]
    return {"steps": len(plan), "loss_log": [round(float(v), 5) for v, _, _ in log],
            "layer_loss_log": [round(float(h), 5) for _, h, _ in log] if layers else [],
            **({"ranking_loss_log": [round(float(r), 5) for _, _, r in log]} if supervised else {})}


def activation_stats(model, texts: Sequence[str], batch_size: int, seed: int, sample: int = 512) -> tuple[list[Any], Any]:
    """What each FFN neuron and each layer adds on ``sample`` of ``texts`` (real tokens only). Neurons: the RMS of the
    activation times the norm of the neuron's column in ``output.dense`` (what removing it takes out of its layer, as
    in Wanda/FLAP). Layers: the block influence of ShortGPT (Men et al. 2024), 1 − cosine between a token's state
    before and after the layer: a layer that barely turns the states can go."""
    import torch

    layers = encoder_layers(model)
    energy = [torch.zeros(layer.intermediate.dense.out_features) for layer in layers]
    turn = torch.zeros(len(layers))
    mask: list[Any] = []
    tokens = 0

    def neuron_hook(k: int):
        def record(_module, _inputs, output) -> None:  # noqa: ANN001
            energy[k] += ((output.float() ** 2) * mask[0].unsqueeze(-1)).sum(dim=(0, 1))
        return record

    def layer_hook(k: int):
        def record(_module, args, _kwargs, output) -> None:  # noqa: ANN001
            before, after = args[0].float(), (output[0] if isinstance(output, tuple) else output).float()
            turn[k] += ((1 - torch.nn.functional.cosine_similarity(before, after, dim=-1)) * mask[0]).sum()
        return record

    handles = [layer.intermediate.register_forward_hook(neuron_hook(k)) for k, layer in enumerate(layers)]
    handles += [layer.register_forward_hook(layer_hook(k), with_kwargs=True) for k, layer in enumerate(layers)]
    chosen = sorted(random.Random(seed).sample(list(texts), min(sample, len(texts))), key=len)
    try:
        model.eval()
        with torch.no_grad():
            for i in range(0, len(chosen), batch_size):
                features = model.preprocess(chosen[i:i + batch_size])
                mask[:] = [features["attention_mask"].float()]
                tokens += int(mask[0].sum())
                model(features)
    finally:
        for handle in handles:
            handle.remove()
    neurons = [(e / max(tokens, 1)).sqrt() * layer.output.dense.weight.detach().norm(dim=0) for e, layer in zip(energy, layers)]
    return neurons, turn / max(tokens, 1)


def distillation_texts(passages: Sequence[str], limit: int, seed: int) -> list[str]:
    """Unlabeled text to distil on: up to ``limit`` passages (seeded sample) and, for half of them, their opening
    words (short, query-like inputs); empty ones dropped."""
    rng = random.Random(seed)
    sample = rng.sample(list(passages), min(limit, len(passages)))
    return [t for t in sample + opening_words(sample[: len(sample) // 2], rng) if t.strip()]


def opening_words(passages: Sequence[str], rng: random.Random) -> list[str]:
    """The first 4-10 words (drawn per passage from ``rng``) of each passage: short, query-like inputs."""
    return [" ".join(p.split()[: rng.randint(4, 10)]) for p in passages]


@contextmanager
def _hidden_states(student, teacher, on: bool) -> Iterator[None]:
    """Have both models return every layer's token states (``all_layer_embeddings``) while distilling; the saved
    model's config is left as it was."""
    configs = [m[0].auto_model.config for m in (student, teacher)]
    before = [c.output_hidden_states for c in configs]
    for c in configs:
        c.output_hidden_states = on
    try:
        yield
    finally:
        for c, b in zip(configs, before):
            c.output_hidden_states = b


def _layer_error(got, wanted, mask):
    """Mean over the transformer layers (not the embedding layer, which is not pruned) of the squared error of
    the token states relative to the teacher's energy, over real tokens only (``wanted``: the teacher's states
    matched to the student's, embedding layer first)."""
    m = mask.unsqueeze(-1).to(got[1].dtype)
    errors = [(((g - w) ** 2) * m).sum() / ((w ** 2) * m).sum().clamp_min(1e-6) for g, w in zip(got[1:], wanted[1:])]
    return sum(errors) / len(errors)
