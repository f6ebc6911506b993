"""training/compress.py: unit scores (GAPrune gates, magnitude, activation), shrinking layers and neurons, and
distilling the teacher back into the student."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retrieval.encoder import Encoder
from retrieval.errors import SiftrankError
from training.compress import SCORES, Compressor

TOPICS = ["cholesterol", "football", "volcanoes", "python packaging", "tides", "bread yeast"]
PASSAGES = [f"{topic} passage {i}: {topic} is discussed here with a few more words about {topic}."
            for i, topic in enumerate(TOPICS * 6)]
TRIPLETS = [(f"what about {TOPICS[i % 6]}", PASSAGES[i], PASSAGES[i + 1]) for i in range(16)]
GENERAL = [("capital of france", "Paris is the capital of France.", "Berlin is the capital of Germany."),
           ("legs of a spider", "Spiders have eight legs.", "Insects have six legs."),
           ("who wrote hamlet", "Hamlet was written by Shakespeare.", "Othello is set in Venice.")] * 4


def _cosine_to(model: str, teacher: str, texts: list[str]) -> float:
    wanted = Encoder(teacher, precision="fp32").encode_documents(texts)
    return float((Encoder(model, precision="fp32").encode_documents(texts) * wanted).sum(axis=1).mean())


@pytest.mark.parametrize("score", SCORES)
def test_every_score_sees_a_neuron_that_adds_nothing(score: str) -> None:
    compressor = Compressor("bundled:all-MiniLM-L6-v2", score=score, layers=3, batch_size=12)
    layer = compressor.pruner.ffn_layers()[2]
    layer.output.dense.weight.data[:, 11] = 0.0  # its activation reaches nothing
    layer.intermediate.dense.weight.data[11] = 0.0  # and (for magnitude) its input weights are gone too
    scores = compressor.unit_scores(PASSAGES, TRIPLETS, GENERAL)
    assert scores.layers.shape == (6,) and len(scores.neurons) == 6 and scores.neurons[2].shape == (1536,)
    if score == "gaprune":  # no gradient reaches its gate: no Fisher, no alignment, only the γ·√|θ| term (|θ| = 1)
        assert float(scores.neurons[2][11]) == pytest.approx(compressor.gamma)
        assert float(scores.neurons[2].median()) > compressor.gamma
    else:
        assert int(np.argmin(scores.neurons[2].numpy())) == 11
    if score != "magnitude":  # the data-driven layer scores differ between layers
        assert float(scores.layers.std()) > 0


def test_gaprune_gates_follow_the_domain_fisher_and_the_alignment() -> None:
    import torch

    compressor = Compressor("bundled:all-MiniLM-L6-v2", score="gaprune", layers=4)
    fisher, mean = compressor.gate_gradients(TRIPLETS, "domain")
    assert fisher["layers"].shape == (6,) and (fisher["layers"] >= 0).all() and float(fisher["layers"].sum()) > 0
    assert all(f.shape == (1536,) for f in fisher["neurons"])
    # |θ| = 1 for a gate: with β = 0, equal alignment, the DAI orders the units as the domain Fisher does
    f_dom = torch.tensor([1.0, 4.0, 2.0])
    dai = compressor._dai(f_dom, torch.ones(3), torch.ones(3), torch.ones(3))
    assert torch.argsort(dai).tolist() == [0, 2, 1]
    # opposing domain and general gradients lower a unit's score
    opposed = compressor._dai(torch.ones(3), torch.ones(3), torch.tensor([1.0, 1.0, 1.0]), torch.tensor([1.0, -1.0, 1.0]))
    assert opposed[1] < opposed[0] == opposed[2]


def test_shrinking_and_distilling_make_a_smaller_student_close_to_its_teacher(tmp_path: Path) -> None:
    compressor = Compressor("bundled:all-MiniLM-L6-v2", score="activation", layers=3, ffn=0.5, epochs=3, batch_size=12,
                            learning_rate=5e-4, supervised=0.3)
    undistilled = Compressor("bundled:all-MiniLM-L6-v2", score="activation", layers=3, ffn=0.5, batch_size=12)
    undistilled.shrink(undistilled.unit_scores(PASSAGES, [], []))
    undistilled.save(tmp_path / "undistilled")
    report = compressor.run(PASSAGES, TRIPLETS, [], progress=False)
    compressor.save(tmp_path / "student")
    metrics = report["metrics"]
    assert len(metrics["kept_layers"]) == 3 and metrics["kept_layers"] == sorted(metrics["kept_layers"])
    assert metrics["intermediate_size"] == 768 and metrics["parameters"] < metrics["parameters_before"]
    assert metrics["ranking_loss_log"] and metrics["layer_loss_log"]  # both losses trained
    config = json.loads((tmp_path / "student" / "config.json").read_text())
    assert config["num_hidden_layers"] == 3 and config["intermediate_size"] == 768
    assert json.loads((tmp_path / "student" / "manifest.json").read_text())["kind"] == "compressed-encoder"
    held_out = [p.replace("passage", "text") for p in PASSAGES[:12]]
    teacher = "bundled:all-MiniLM-L6-v2"
    assert _cosine_to(str(tmp_path / "student"), teacher, held_out) > _cosine_to(str(tmp_path / "undistilled"), teacher, held_out) + 0.01


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"score": "random"}, "unknown compression score"),
    ({"layers": 7}, "within 1..6"),
    ({"layers": 6}, "nothing to remove"),
    ({"ffn": 1.0}, "sparsity"),
    ({"layers": 3, "supervised": -1.0}, "supervised"),
])
def test_bad_settings_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(SiftrankError, match=message):
        Compressor("bundled:all-MiniLM-L6-v2", **kwargs)


def test_too_little_text_or_no_triplets_for_gaprune_is_refused() -> None:
    with pytest.raises(SiftrankError, match="fewer than one batch"):
        Compressor("bundled:all-MiniLM-L6-v2", layers=3, batch_size=64).run(PASSAGES, TRIPLETS, GENERAL, progress=False)
    with pytest.raises(SiftrankError, match="domain and general triplets"):
        Compressor("bundled:all-MiniLM-L6-v2", layers=3, batch_size=8).run(PASSAGES, TRIPLETS, [], progress=False)
