from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from retrieval.encoder import Encoder
from retrieval.errors import SiftrankError
from training.prune import Pruner, general_triplets

DOMAIN = [("do statins lower cholesterol", "Statins reduce LDL cholesterol in adults.", "Football matches last ninety minutes."),
          ("is vitamin d linked to bone density", "Vitamin D supplementation improved bone mineral density.", "Sourdough uses a starter."),
          ("does aspirin prevent stroke", "Low-dose aspirin lowered the risk of ischemic stroke.", "Volcanoes erupt when magma rises."),
          ("can exercise reduce depression", "Aerobic exercise reduced depressive symptoms in trials.", "Pip installs Python packages.")]
GENERAL = [("what fruit is native to australia", "Passiflora herbertiana is a passion fruit native to Australia.", "The offside rule."),
           ("how long is a football match", "A football match lasts ninety minutes.", "Chloroplasts hold chlorophyll."),
           ("what is python", "Python is a programming language.", "Lava flows are a volcanic hazard."),
           ("why do tides happen", "Tides are caused by the Moon's gravity.", "Bread dough rises with yeast.")]


@pytest.fixture(scope="module")
def pruner() -> Pruner:
    p = Pruner("bundled:all-MiniLM-L6-v2", batch_size=2, max_length=32)
    p.gradients("domain", DOMAIN)
    p.gradients("general", GENERAL)
    return p


def test_dai_is_not_magnitude_and_survives_tiny_fisher_values(pruner: Pruner) -> None:
    from scipy.stats import spearmanr

    dai = pruner.scores("gaprune")
    key = next(iter(dai))
    weights = next(iter(pruner.targets.values())).detach().abs()
    rho = spearmanr(dai[key].flatten().numpy()[:50_000], weights.flatten().numpy()[:50_000])[0]
    assert rho < 0.95  # the Fisher and alignment terms reorder weights
    # fp16 scores of the official code underflow (squared gradients here are far below fp16's smallest
    # value); ours are normalised per tensor in fp32, so scaling every Fisher value by 1e-10 changes nothing.
    saved = {name: {k: v.clone() for k, v in f.items()} for name, f in pruner.fisher.items()}
    for f in pruner.fisher.values():
        for k in f:
            f[k] *= 1e-10
    scaled = pruner.scores("gaprune")
    pruner.fisher = saved
    assert torch.allclose(scaled[key], dai[key], rtol=1e-4, atol=1e-6)


def test_paper_scale_collapses_to_magnitude_and_beta_acts(pruner: Pruner) -> None:
    from scipy.stats import spearmanr

    weights = next(iter(pruner.targets.values())).detach().abs().flatten().numpy()[:50_000]
    key = next(iter(pruner.targets))

    def rho(**options) -> float:
        return spearmanr(pruner.scores("gaprune", **options)[key].flatten().numpy()[:50_000], weights)[0]

    # At the paper's raw scale the Fisher terms (squared gradients) are negligible next to γ√|θ|: the
    # ordering is magnitude up to the alignment factor, which is what our per-tensor normalisation avoids.
    assert rho(normalise="raw") > 0.95 > rho(normalise="rms")
    # β weighs the general Fisher term: changing it changes the scores.
    assert not torch.allclose(pruner.scores("gaprune", beta=0.0)[key], pruner.scores("gaprune", beta=1.0)[key])


def test_global_and_matrix_budgets(pruner: Pruner) -> None:
    scores = pruner.scores("magnitude")
    masks = pruner.masks(scores, 0.5, "global")
    kept = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert abs(kept - 0.5) < 1e-3
    per_matrix = pruner.masks(scores, 0.3, "matrix")
    assert all(abs(float(m.float().mean()) - 0.7) < 1e-3 for m in per_matrix.values())
    for method in ("random", "fisher-domain", "fisher-general"):
        assert set(pruner.scores(method)) == set(pruner.targets)


def test_bad_inputs(pruner: Pruner, tmp_path: Path) -> None:
    scores = pruner.scores("magnitude")
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(SiftrankError, match="sparsity must be within"):
            pruner.masks(scores, bad)
    with pytest.raises(SiftrankError, match="match no weight matrix"):
        Pruner("bundled:all-MiniLM-L6-v2", target=r"no\.such\.module")
    with pytest.raises(SiftrankError, match="no triplets"):
        pruner.gradients("domain", [])
    with pytest.raises(SiftrankError, match="pruning method"):
        pruner.scores("lottery")
    with pytest.raises(SiftrankError, match="normalisation must be one of"):
        Pruner("bundled:all-MiniLM-L6-v2", normalise="median")
    with pytest.raises(SiftrankError, match="beta must be"):
        Pruner("bundled:all-MiniLM-L6-v2", beta=-1.0)
    with pytest.raises(SiftrankError, match="no general calibration triplets"):
        general_triplets(tmp_path)


def test_masks_survive_retraining_and_structured_model_is_smaller(tmp_path: Path) -> None:
    fresh = Pruner("bundled:all-MiniLM-L6-v2", batch_size=2, max_length=32)
    fresh.gradients("domain", DOMAIN)
    fresh.gradients("general", GENERAL)
    report = fresh.prune("gaprune", 0.5, DOMAIN, GENERAL, retrain_steps=2)
    assert all(abs(s - 0.5) < 0.2 for s in report["parameters"]["sparsity_per_matrix"].values())
    zeros = sum(int((p == 0).sum()) for p in fresh.targets.values()) / sum(p.numel() for p in fresh.targets.values())
    assert abs(zeros - 0.5) < 1e-3  # retraining steps did not revive pruned weights

    small = Pruner("bundled:all-MiniLM-L6-v2", batch_size=2, max_length=32)
    small.fisher, small.mean_grad = fresh.fisher, fresh.mean_grad
    before = sum(p.numel() for p in small.model.parameters())
    info = small.prune("gaprune", 0.5, DOMAIN, GENERAL, structured=True)["metrics"]
    assert info["intermediate_size"] == 768 and info["parameters"] < before - 3_000_000
    small.report = {"parameters": {"method": "gaprune"}}
    small.save(tmp_path / "small")
    vectors = Encoder(str(tmp_path / "small"), precision="fp32").encode_documents(["statins and cholesterol"])
    assert vectors.shape == (1, 384) and np.isclose(np.linalg.norm(vectors), 1.0, atol=1e-5)
    small.model[0].auto_model.encoder = None
    with pytest.raises(SiftrankError, match="no BERT-style FFN layers"):
        small.remove_neurons(small.scores("magnitude"), 0.5)
