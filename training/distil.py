"""A faster encoder for one corpus: remove FFN neurons, then distil the unpruned model back into it.

Speed, not domain adaptation (that is GAPrune, training/prune.py): the FFN holds two thirds of MiniLM's
matrix work, so removing a share of its neurons shrinks the matrices (bytes on disk, passages per second), and
embedding distillation (EmbedDistill's embedding matching: 1 − cosine to the teacher's vector) pulls the smaller
model back towards the full one. The training texts are unlabeled: passages of the corpus to be indexed plus their openings (4-10 words) as stand-ins for
queries, the same data int8 calibration reads; no query and no relevance label is seen. Neurons are ranked by
the summed magnitude of their two FFN weight vectors (no gradients needed).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from retrieval.encoder import Encoder
from retrieval.errors import SiftrankError
from training.prune import Pruner, check_sparsity


class Distiller:
    """Prunes FFN neurons of a sentence-transformers model and distils the original model's vectors into it."""

    def __init__(self, model: str = "bundled:all-MiniLM-L6-v2", sparsity: float = 0.25, epochs: float = 1.0,
                 batch_size: int = 32, learning_rate: float = 1e-4, seed: int = 0) -> None:
        self.source, self.sparsity = model, check_sparsity(sparsity)
        if epochs <= 0 or batch_size < 1 or learning_rate <= 0:
            raise SiftrankError("epochs and learning rate must be > 0 and the batch size >= 1")
        self.epochs, self.batch_size, self.learning_rate, self.seed = epochs, batch_size, learning_rate, seed
        self.pruner = Pruner(model, seed=seed)

    def texts(self, passages: Sequence[str], limit: int = 8000) -> list[str]:
        """Up to ``limit`` passages and, for half of them, their opening words (short, query-like inputs)."""
        rng = random.Random(self.seed)
        sample = rng.sample(list(passages), min(limit, len(passages)))
        openings = [" ".join(p.split()[: rng.randint(4, 10)]) for p in sample[: len(sample) // 2]]
        texts = [t for t in sample + openings if t.strip()]
        if len(texts) < self.batch_size:
            raise SiftrankError(f"{len(texts)} training texts, fewer than one batch of {self.batch_size}")
        return texts

    def run(self, passages: Sequence[str], limit: int = 8000, progress: bool = True) -> dict[str, Any]:
        """Prune, then distil on ``passages``; returns what the manifest records (sizes, losses, wall time)."""
        import numpy as np
        import torch

        texts = self.texts(passages, limit)
        start = time.perf_counter()
        teacher = Encoder(self.source, device="cpu", precision="fp32", query_precision="fp32")
        target = torch.from_numpy(teacher.encode_documents(texts, progress=progress))
        before = sum(p.numel() for p in self.pruner.model.parameters())
        sizes = self.pruner.remove_neurons(self.pruner.scores("magnitude"), self.sparsity)
        student = self.pruner.model
        torch.manual_seed(self.seed)
        # batches of similar length (little padding: 2.5x faster on CPU than shuffled ones), in shuffled order
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        rng = np.random.default_rng(self.seed)
        plan = [batches[i] for _ in range(int(np.ceil(self.epochs))) for i in rng.permutation(len(batches))]
        plan = plan[: max(1, int(round(self.epochs * len(batches))))]
        optimiser = torch.optim.AdamW(student.parameters(), lr=self.learning_rate, weight_decay=0.0)
        warmup = max(1, len(plan) // 20)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, 1 - s / len(plan)))
        student.train()
        losses = []
        for batch in tqdm(plan, desc="distil", unit="batch", disable=not progress):
            embedded = student(student.preprocess([texts[i] for i in batch]))["sentence_embedding"]
            loss = (1 - (torch.nn.functional.normalize(embedded, dim=-1) * target[batch]).sum(dim=-1)).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(float(loss.detach()))
        student.eval()
        log_every = max(1, len(losses) // 20)
        return {"parameters": {"sparsity": self.sparsity, "epochs": self.epochs, "batch_size": self.batch_size,
                               "learning_rate": self.learning_rate, "seed": self.seed, "scoring": "magnitude",
                               "loss": "1 - cosine to the teacher's vector"},
                "data": {"texts": len(texts), "passage_limit": limit},
                "metrics": {"parameters_before": before, **sizes, "steps": len(plan),
                            "loss_log": [round(float(np.mean(losses[i:i + log_every])), 5) for i in range(0, len(losses), log_every)],
                            "wall_seconds": round(time.perf_counter() - start, 1)}}

    def save(self, path: Path, manifest: dict[str, Any], overwrite: bool = False) -> None:
        """A standard sentence-transformers folder plus manifest.json, written atomically."""
        self.pruner.save(path, manifest, overwrite=overwrite)
