"""Fine-tuning on the tiny collection: every method trains what it should, artifacts load only on their base."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from retrieval.adapters import ConnectedAdapters
from retrieval.config import PipelineConfig
from retrieval.data import Dataset
from retrieval.encoder import Encoder
from retrieval.errors import SiftrankError
from training.adapters import TrainableSetup
from training.finetune import FineTuner

TEXTS = ["how do plants make food", "Volcanoes erupt when magma rises."]


def mined(root: Path) -> tuple[Dataset, Callable[[list[str], int], dict[str, list[str]]]]:
    """The dataset and its first stage's candidates (dense, MiniLM), as a build hands them to the tuner."""
    from training.stages.context import BuildContext

    ctx = BuildContext.plain("bundled:all-MiniLM-L6-v2", root, "test", progress=False)
    return ctx.dataset, ctx.ranked_ids


@pytest.mark.parametrize("method", ["connected", "lora", "adalora", "bitfit", "full"])
def test_step_zero_is_the_pretrained_model_and_only_the_method_trains(method: str) -> None:
    model = Encoder(precision="fp32").model
    before = model.encode(TEXTS, convert_to_tensor=True)
    counts = TrainableSetup(method).apply(model)
    assert torch.allclose(model.encode(TEXTS, convert_to_tensor=True), before, atol=1e-6)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if method == "full":
        assert counts["trainable_fraction"] == 1.0
    elif method == "bitfit":
        assert all(n.endswith("bias") for n in trainable) and counts["trainable_fraction"] < 0.002
    else:
        assert trainable and all("lora_" in n or "aside_pathway" in n for n in trainable)
        # comparable budgets for the PEFT methods (AdaLoRA starts at rank 12 and prunes toward 8)
        assert 0.01 < counts["trainable_fraction"] < (0.03 if method == "adalora" else 0.02)
        assert any("aside_pathway" in n for n in trainable) == (method == "connected")


def test_aside_pathway_is_connected_layer_to_layer() -> None:
    """Each aside module reads its layer's hidden state plus the previous aside output, and the path's
    end joins the final representation: every module gets gradient from a loss on the embeddings."""
    model = Encoder(precision="fp32").model
    TrainableSetup("connected").apply(model)
    transformer = model[0].auto_model
    pathway = transformer.aside_pathway
    seen: dict[str, torch.Tensor] = {}
    transformer.encoder.layer[1].register_forward_hook(lambda m, a, out: seen.__setitem__("h1", (out[0] if isinstance(out, tuple) else out).detach()))
    pathway.down[1].register_forward_pre_hook(lambda m, args: seen.__setitem__("in1", args[0].detach()))
    with torch.no_grad():
        pathway.up[0].weight.normal_(0, 0.05)
    features = model.tokenize(TEXTS)
    embeddings = model(features)["sentence_embedding"]
    assert not torch.allclose(seen["in1"], seen["h1"])  # module 1 reads h_1 + a_1, and a_1 != 0 now
    embeddings.sum().backward()
    for i in range(len(pathway.up)):
        assert pathway.up[i].weight.grad is not None and pathway.up[i].weight.grad.abs().sum() > 0


def test_budget_and_bad_input(tiny: Path) -> None:
    with pytest.raises(SiftrankError, match="over the budget"):
        TrainableSetup("connected", max_fraction=0.01).apply(Encoder(precision="fp32").model)
    with pytest.raises(SiftrankError, match="method must be one of"):
        TrainableSetup("prompt")
    one = Dataset.load(tiny)
    one = Dataset(one.root, one.corpus_path, one.corpus, {"q1": one.queries["q1"]}, {"q1": one.qrels["q1"]})
    with pytest.raises(SiftrankError, match="at least 2 training queries"):
        FineTuner("bundled:all-MiniLM-L6-v2", "lora").train(one, lambda qids, depth: {})


def test_train_save_and_load_adapter_only_on_its_base(tiny_binary: Path, tmp_path: Path) -> None:
    tuner = FineTuner("bundled:all-MiniLM-L6-v2", "connected", batch_size=2, eval_steps=1, validation_share=0.34,
                      checkpoint_dir=tmp_path / "checkpoints", checkpoint_steps=2)
    report = tuner.train(*mined(tiny_binary), steps=3, progress=False)
    assert report["steps"] == 3 and report["trainable"] == tuner.counts["trainable"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-2"]  # written atomically, loadable:
    Encoder(adapter=tmp_path / "checkpoints" / "step-2").encode_queries(TEXTS[:1])
    assert any("loss" in h for h in tuner.history) and tuner.history[0]["step"] == 0
    tuner.save(tmp_path / "adapter")
    trained = tuner.model.encode(TEXTS, convert_to_numpy=True, normalize_embeddings=True)
    config = tmp_path / "pipeline.toml"
    config.write_text('[encoder]\nprecision = "fp32"\nquery_precision = "fp32"\nadapter = "adapter"\n')
    encoder = PipelineConfig.load(config).encoder.build()
    assert np.allclose(encoder.encode_queries(TEXTS), trained, atol=1e-5)
    assert encoder.fingerprint != encoder.base_fingerprint  # indexes built with the adapter are its own
    # The same artifact on another base model is refused.
    other = tmp_path / "other-base"
    Encoder(precision="fp32").model.save(str(other))
    (other / "extra.txt").write_text("a different model folder")
    with pytest.raises(SiftrankError, match="belongs to base model"):
        _ = Encoder(str(other), adapter=tmp_path / "adapter").model
    with pytest.raises(SiftrankError, match="adapter .* not found"):
        Encoder(adapter=tmp_path / "missing")


def test_a_small_domain_trains_epochs_not_the_step_cap_and_general_triplets_never_outnumber_it(tiny_binary: Path) -> None:
    general = [(f"general query {i}", f"general positive {i}", f"general negative {i}") for i in range(50)]
    tuner = FineTuner("bundled:all-MiniLM-L6-v2", "bitfit", batch_size=4, epochs=2)
    data = Dataset.load(tiny_binary)
    report = tuner.train(data, mined(tiny_binary)[1], steps=100, progress=False, general=general,
                         queries=(sorted(data.queries), []))
    domain = report["train_triplets"] - report["general_triplets"]
    assert report["general_triplets"] == domain  # 50 offered, as many as the domain's kept
    batch = min(4, report["train_triplets"] // 4)  # at least four batches per epoch: a batch never repeats a text
    assert report["steps"] == math.ceil(2 * report["train_triplets"] / batch) < 100 and report["batch_size"] == batch
    assert report["validation_queries"] == 0
    with pytest.raises(SiftrankError, match="no validation score"):
        tuner.validation_score()


def test_full_finetuning_keeps_pruned_weights_zero(tiny: Path, tmp_path: Path) -> None:
    from training.prune import Pruner

    pruner = Pruner("bundled:all-MiniLM-L6-v2")
    pruner.apply(pruner.masks(pruner.scores("magnitude"), 0.5))
    pruner.save(tmp_path / "pruned")
    tuner = FineTuner(str(tmp_path / "pruned"), "full", batch_size=2, eval_steps=2, validation_share=0.34)
    # distinct general triplets: the tiny domain's few share texts, and a batch never repeats one
    general = [(f"general query {i}", f"general positive {i}", f"general negative {i}") for i in range(3)]
    report = tuner.train(*mined(tiny), steps=2, progress=False, general=general)
    assert report["steps"] == 2  # it did train (0 steps would leave the zeros trivially)
    weight = tuner.model[0].auto_model.encoder.layer[0].intermediate.dense.weight
    assert 0.3 < float((weight == 0).float().mean()) < 0.7
    assert isinstance(ConnectedAdapters("connected"), ConnectedAdapters)


def test_adalora_reallocates_ranks_and_its_artifact_reloads(tiny_binary: Path, tmp_path: Path) -> None:
    tuner = FineTuner("bundled:all-MiniLM-L6-v2", "adalora", batch_size=2, eval_steps=20, validation_share=0.34,
                      epochs=20)  # 12 steps is more than 4 epochs of the tiny set: the step cap must bind
    report = tuner.train(*mined(tiny_binary), steps=12, progress=False)
    assert report["steps"] == 12
    singular = [p for n, p in tuner.model.named_parameters() if "lora_E" in n]
    assert singular and any(bool((p == 0).any()) for p in singular)  # ranks pruned by importance during training
    assert not all(bool((p == 0).all()) for p in singular)  # and the kept ones trained
    tuner.save(tmp_path / "adalora")
    trained = tuner.model.encode(TEXTS, convert_to_numpy=True, normalize_embeddings=True)
    reloaded = Encoder(precision="fp32", query_precision="fp32", adapter=tmp_path / "adalora").encode_queries(TEXTS)
    assert np.allclose(reloaded, trained, atol=1e-5)


def test_ia3_added_through_the_registry_trains_and_its_artifact_reloads(tiny_binary: Path, tmp_path: Path) -> None:
    model = Encoder(precision="fp32").model
    before = model.encode(TEXTS, convert_to_tensor=True)
    counts = TrainableSetup("ia3").apply(model)
    assert torch.allclose(model.encode(TEXTS, convert_to_tensor=True), before, atol=1e-6)  # (IA)³ starts as the identity
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("ia3_" in n for n in trainable) and counts["trainable_fraction"] < 0.005
    tuner = FineTuner("bundled:all-MiniLM-L6-v2", "ia3", batch_size=2, eval_steps=20, validation_share=0.34,
                      learning_rate=5e-2)
    tuner.train(*mined(tiny_binary), steps=3, progress=False)
    tuner.save(tmp_path / "ia3")
    trained = tuner.model.encode(TEXTS, convert_to_numpy=True, normalize_embeddings=True)
    reloaded = Encoder(precision="fp32", query_precision="fp32", adapter=tmp_path / "ia3").encode_queries(TEXTS)
    assert np.allclose(reloaded, trained, atol=1e-5)
    base = Encoder(precision="fp32", query_precision="fp32").encode_queries(TEXTS)
    assert not np.allclose(trained, base, atol=1e-4)  # the vectors trained


def test_the_weighted_loss_is_the_ranking_loss_when_weights_are_equal_and_ignores_weight_zero() -> None:
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from retrieval.encoder import load_sentence_transformer
    from training.finetune import weighted_ranking_loss

    model = load_sentence_transformer(Encoder("bundled:all-MiniLM-L6-v2").path, "cpu")
    torch.manual_seed(0)
    embeddings = [torch.nn.functional.normalize(torch.randn(6, 8), dim=1) for _ in range(3)]
    weighted, plain = weighted_ranking_loss(model), MultipleNegativesRankingLoss(model)
    ones = torch.ones(6)
    assert weighted.compute_loss_from_embeddings(embeddings, ones).item() == pytest.approx(
        plain.compute_loss_from_embeddings(embeddings, ones).item(), rel=1e-5)
    # a pair of weight 0 does not count: the loss is the mean over the other pairs' terms
    half = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    scores = (embeddings[0] @ torch.cat(embeddings[1:]).T) * plain.scale
    terms = torch.logsumexp(scores, dim=1) - scores.diagonal()[:6]
    assert weighted.compute_loss_from_embeddings(embeddings, half).item() == pytest.approx(terms[:3].mean().item(), rel=1e-5)
