from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retrieval.encoder import Encoder
from retrieval.errors import SiftrankError
from training.distil import LOSSES, Distiller

PASSAGES = [f"{topic} passage {i}: {topic} is discussed here with a few more words about {topic}."
            for i, topic in enumerate(["cholesterol", "football", "volcanoes", "python packaging", "tides", "bread yeast"] * 6)]


def _cosine_to_teacher(model: str, texts: list[str]) -> float:
    teacher = Encoder(precision="fp32").encode_documents(texts)
    return float((Encoder(model, precision="fp32").encode_documents(texts) * teacher).sum(axis=1).mean())


@pytest.mark.parametrize(("loss", "scoring"), [(loss, "magnitude") for loss in LOSSES] + [("layers", "activation")])
def test_distilling_shrinks_the_ffn_and_pulls_vectors_back_to_the_teacher(tmp_path: Path, loss: str, scoring: str) -> None:
    pruned, distilled = tmp_path / "pruned", tmp_path / "distilled"
    untrained = Distiller(sparsity=0.5)
    untrained.pruner.remove_neurons(untrained.pruner.scores("magnitude"), 0.5)
    untrained.save(pruned)
    distiller = Distiller(sparsity=0.5, epochs=2, batch_size=12, learning_rate=5e-4, loss=loss, scoring=scoring)
    manifest = distiller.run(PASSAGES, progress=False)
    distiller.save(distilled)
    # the layer term is logged only when it is trained on, and the saved config does not keep returning every layer
    assert bool(manifest["metrics"]["layer_loss_log"]) == (loss == "layers")
    assert json.loads((distilled / "config.json").read_text()).get("output_hidden_states", False) is False

    assert manifest["metrics"]["intermediate_size"] == 768  # MiniLM's 1536 halved: the matrices really shrink
    assert manifest["metrics"]["parameters"] < manifest["metrics"]["parameters_before"]
    assert json.loads((distilled / "manifest.json").read_text())["kind"] == "pruned-encoder"
    held_out = [p.replace("passage", "text") for p in PASSAGES[:12]]
    assert _cosine_to_teacher(str(distilled), held_out) > _cosine_to_teacher(str(pruned), held_out) + 0.01
    assert np.isfinite(Encoder(str(distilled)).encode_queries(["what causes tides"])).all()


def test_bad_settings_and_too_little_text_are_refused() -> None:
    with pytest.raises(SiftrankError, match="sparsity"):
        Distiller(sparsity=1.0)
    with pytest.raises(SiftrankError, match="batch"):
        Distiller(batch_size=0)
    with pytest.raises(SiftrankError, match="unknown distillation loss"):
        Distiller(loss="kl")
    with pytest.raises(SiftrankError, match="unknown neuron scoring"):
        Distiller(scoring="random")


def test_activation_scores_rank_neurons_by_what_they_add_to_the_layer() -> None:
    distiller = Distiller(sparsity=0.5, batch_size=12)
    scores = distiller.activation_scores(PASSAGES)
    assert len(scores) == 6 and all(s.shape == (1536,) and (s >= 0).all() for s in scores)
    # a neuron whose output weights are zero adds nothing, whatever it fires
    distiller.pruner.ffn_layers()[0].output.dense.weight.data[:, 7] = 0.0
    assert distiller.activation_scores(PASSAGES)[0][7] == 0.0
    with pytest.raises(SiftrankError, match="fewer than one batch"):
        Distiller(batch_size=32).texts(PASSAGES[:4])
