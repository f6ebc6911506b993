"""Tiny test collections the tests build themselves (no shared data needed, except where marked)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

DOCS = {
    "d1": ("Photosynthesis", "Plants turn sunlight, water and carbon dioxide into glucose and oxygen in chloroplasts."),
    "d2": ("", "The chloroplast is the organelle where photosynthesis happens in plant cells."),
    "d3": ("Volcano", "A volcano erupts when magma from the mantle rises through the crust to the surface."),
    "d4": ("", "Lava flows and ash clouds are the main hazards of volcanic eruptions."),
    "d5": ("Bread", "To bake bread, knead flour, water, yeast and salt, let the dough rise, then bake it."),
    "d6": ("", "Sourdough bread uses a fermented starter instead of commercial yeast."),
    "d7": ("Football", "A football match lasts ninety minutes, split into two halves of forty-five minutes."),
    "d8": ("", "The offside rule in football stops attackers from waiting behind the defenders."),
    "d9": ("Python", "Python is a programming language known for readable syntax and a large standard library."),
    "d10": ("", "Pip installs Python packages from the Python Package Index."),
    "d11": ("Moon", "The Moon orbits the Earth about every twenty-seven days and causes the ocean tides."),
    "d12": ("", "Tides rise and fall twice a day because of the Moon's gravity."),
}
QUERIES = {"q1": "how do plants make food from sunlight", "q2": "why do volcanoes erupt", "q3": "how to bake bread at home"}
QRELS = [("q1", "d1", 3), ("q1", "d2", 2), ("q1", "d5", 0), ("q2", "d3", 3), ("q2", "d4", 1), ("q3", "d5", 3), ("q3", "d6", 2)]


def write_dataset(root: Path, docs=DOCS, queries=QUERIES, qrels=QRELS) -> Path:
    """A BEIR-layout dataset directory: corpus.jsonl, queries.jsonl, qrels/test.tsv."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n" for i, (t, x) in docs.items()))
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    (root / "qrels").mkdir(exist_ok=True)
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{g}\n" for q, d, g in qrels))
    return root


TOPICS = {"d1": "bio", "d2": "bio", "d3": "geo", "d4": "geo", "d5": "food", "d6": "food"}


def add_metadata(root: Path) -> Path:
    """Rewrite a tiny dataset's corpus with metadata: ``topic`` (bio, geo, food, other) and ``year`` (2000 + row)."""
    rows = [{"_id": i, "title": t, "text": x, "topic": TOPICS.get(i, "other"), "year": 2000 + n}
            for n, (i, (t, x)) in enumerate(DOCS.items())]
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "tiny")


@pytest.fixture
def tiny_binary(tmp_path: Path) -> Path:
    """The tiny collection with BEIR-style binary qrels: every positive grade is relevant (grade 1 too)."""
    return write_dataset(tmp_path / "tiny-binary", qrels=[(q, d, int(g > 0)) for q, d, g in QRELS])


@pytest.fixture(scope="session")
def _probes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("probes")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _probes: Path) -> None:
    """Every test gets its own siftrank cache, so no test sees another's indexes; speed measurements
    (precision auto) are shared by the session, as they are by every run on one machine."""
    monkeypatch.setenv("SIFTRANK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SIFTRANK_PROBES", str(_probes))


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """Run the real ``siftrank`` entry point in-process; returns (exit code, stdout, stderr)."""
    from serving.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["siftrank", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0) if not isinstance(exc.code, str) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run


CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def write_tiny_llm(root: Path, seed: int = 0, hidden: int = 32, init: float = 0.3) -> Path:
    """A randomly initialised two-layer Llama with a byte-level BPE tokenizer (digits split one per token,
    as in SmolLM2) and a chat template: a local Hugging Face folder for the ranker's tests."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                       pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tokenizer.decoder = decoders.ByteLevel()
    texts = [f"{t} {x}" for t, x in DOCS.values()] + list(QUERIES.values()) + [
        "I will provide you with passages, each indicated by a numerical identifier []. Rank the passages "
        "based on their relevance to the search query. [2] > [1] > [3]"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|im_end|>")
    fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                         eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, bos_token_id=None,
                         initializer_range=init)
    root.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(config).save_pretrained(str(root))
    fast.save_pretrained(str(root))
    return root


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llm(tmp_path_factory.mktemp("llm") / "tiny-llama")
