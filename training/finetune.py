"""Contrastive fine-tuning of the embedding model: full, BitFit, LoRA, AdaLoRA or connected adapters.

Training pairs are (query, relevant passage) from a dataset's training qrels, each with a hard negative
mined by the model being tuned (its highest-ranked passage not judged relevant). The loss is
MultipleNegativesRankingLoss (InfoNCE over in-batch and hard negatives) on the sentence-transformers
trainer; a held-out share of the training queries is the validation split, scored (nDCG@10 over their
judged passages plus each query's top-10 candidates from the starting model) every ``eval_steps``.
Pruned models keep their masks: weights that are zero in a pruned matrix stay zero.
"""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from retrieval.artifacts import Manifest, atomic_dir, write_text_atomic
from retrieval.data import Dataset, Qrels
from retrieval.encoder import Encoder, load_sentence_transformer, model_fingerprint
from retrieval.errors import SiftrankError
from training.adapters import FFN_PATTERN, METHODS, TrainableSetup
from training.triplets import Triplet, judged_queries, relevant_docs, training_examples

log = logging.getLogger(__name__)
VALIDATION_KEY = "val_cosine_ndcg@10"  # logged by the trainer as eval_val_cosine_ndcg@10


class FineTuner:
    """Fine-tunes a sentence-transformers model with one method and writes the result."""

    def __init__(self, model: str | Encoder, method: str, seed: int = 0, learning_rate: float | None = None, epochs: float = 4,
                 batch_size: int = 32, eval_steps: int = 20, max_fraction: float | None = None,
                 validation_share: float = 0.1, bf16: bool | None = None, checkpoint_dir: Path | None = None,
                 checkpoint_steps: int = 0) -> None:
        self.encoder = model if isinstance(model, Encoder) else Encoder(model)  # a build passes the one it holds
        self.source, self.method, self.seed = self.encoder.spec, method, seed
        self.setup = TrainableSetup(method, max_fraction=max_fraction)
        self.learning_rate = learning_rate or METHODS[method].learning_rate
        self.epochs, self.batch_size, self.eval_steps = epochs, batch_size, eval_steps
        self.validation_share = validation_share
        if checkpoint_steps < 0 or (checkpoint_steps and checkpoint_dir is None):
            raise SiftrankError("checkpoints need a positive step interval and a checkpoint folder")
        self.checkpoint_dir, self.checkpoint_steps = checkpoint_dir, checkpoint_steps
        self.bf16 = bf16  # None: bf16 autocast only where a training step measures faster on this CPU (:meth:`pick_bf16`)
        self.history: list[dict[str, Any]] = []
        self.counts: dict[str, Any] = {}
        self.report: dict[str, Any] = {}  # the last training run (written to the manifest)
        self.model = None

    def split(self, dataset: Dataset) -> tuple[list[str], list[str]]:
        """Training and validation query ids (judged-relevant queries only; seeded shuffle)."""
        return validation_split(dataset, self.validation_share)

    def train(self, dataset: Dataset, ranked: Callable[[list[str], int], dict[str, list[str]]], steps: int | None = None,
              progress: bool = True, general: Sequence[Triplet] = (),
              queries: tuple[list[str], list[str]] | None = None) -> dict[str, Any]:
        """Train on ``dataset``'s training qrels, with ``general`` triplets (e.g. MS MARCO) mixed in to keep
        quality on general data (at most as many as the domain's, so a small domain is not drowned);
        ``ranked(qids, depth)`` gives each query's candidates from the pipeline's first stage (hard negatives,
        validation candidates). ``steps`` caps the run at ``epochs`` passes over the triplets (a small domain
        trains fewer steps); ``queries``: the training and validation query ids (default :meth:`split`; no
        validation queries: no validation score). Returns the parameter counts, wall time and history."""
        import torch
        from datasets import Dataset as HFDataset
        from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
        from transformers import TrainerCallback

        train_q, val_q = queries if queries is not None else self.split(dataset)
        torch.manual_seed(self.seed)
        model = load_sentence_transformer(self.encoder.path, "cpu")
        self.counts = self.setup.apply(model)  # a blown budget fails here, before any encoding
        triplets, weights = training_examples(dataset, ranked(train_q, 30), train_q)
        if not triplets:
            raise SiftrankError(f"{dataset.root}: no training triplets")
        general = list(general)[:len(triplets)]
        triplets = triplets + general
        weights += [1.0] * len(general)
        # a batch never repeats a text (no_duplicates), so a few triplets cannot fill one batch of all of them:
        # at least four batches per epoch
        batch_size = min(self.batch_size, max(2, len(triplets) // 4))
        steps = min(steps or sys.maxsize, max(1, math.ceil(self.epochs * len(triplets) / batch_size)))
        if self.setup.adapters is not None and getattr(self.setup.adapters, "total_steps", None) != steps:
            # AdaLoRA's rank schedule spans the run and is read when the adapters are applied: apply them again
            self.setup.adapters.total_steps = steps
            torch.manual_seed(self.seed)
            model = load_sentence_transformer(self.encoder.path, "cpu")
            self.counts = self.setup.apply(model)
        evaluator = None
        if val_q:
            candidates = ranked(val_q, 10)
            relevant = {q: relevant_docs(dataset.qrels, q) for q in val_q}
            val_docs = sorted(d for d in {d for q in val_q for d in candidates[q]} | {d for q in val_q for d in relevant[q]}
                              if d in dataset.store)
            evaluator = validation_evaluator({q: dataset.queries[q] for q in val_q},
                                             dict(zip(val_docs, dataset.store.texts(val_docs))), {q: dataset.qrels[q] for q in val_q},
                                             judged_only=dataset.condensed)

        if self.bf16 is None:
            self.bf16 = self.pick_bf16(model, triplets, min(batch_size, 8))
        masks = _pruned_masks(model) if self.method == "full" else {}
        rows: dict[str, list[Any]] = {"anchor": [t[0] for t in triplets], "positive": [t[1] for t in triplets],
                                      "negative": [t[2] for t in triplets]}
        weighted = any(w != 1.0 for w in weights)
        if weighted:  # labels from clicks: each pair counts by its inverse-propensity weight
            rows["label"] = weights
        work = Path(__import__("tempfile").mkdtemp(prefix="siftrank-finetune-"))
        args = SentenceTransformerTrainingArguments(
            output_dir=str(work), num_train_epochs=self.epochs, max_steps=steps,
            per_device_train_batch_size=batch_size, learning_rate=self.learning_rate, warmup_steps=0.1,
            bf16=self.bf16, use_cpu=True, seed=self.seed, data_seed=self.seed, eval_strategy="steps" if evaluator else "no",
            eval_steps=self.eval_steps, logging_steps=max(1, self.eval_steps // 4), save_strategy="no",
            report_to="none", batch_sampler="no_duplicates", disable_tqdm=not progress, dataloader_drop_last=True)

        tuner = self

        class StepHooks(TrainerCallback):
            def on_optimizer_step(self, args, state, control, **kwargs):  # noqa: ANN001 - transformers' signature
                if tuner.setup.adapters is not None:  # AdaLoRA's rank reallocation needs this step's gradients
                    tuner.setup.adapters.step(state.global_step + 1)

            def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
                with torch.no_grad():
                    for parameter, keep in masks.values():
                        parameter.mul_(keep)
                if tuner.checkpoint_steps and state.global_step % tuner.checkpoint_steps == 0:
                    tuner.checkpoint(model, state.global_step)

        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=HFDataset.from_dict(rows),
                                             loss=(weighted_ranking_loss(model) if weighted else MultipleNegativesRankingLoss(model)),
                                             evaluator=evaluator,
                                             callbacks=[StepHooks()])
        start = time.perf_counter()
        first = evaluator(model) if evaluator else {VALIDATION_KEY: None}
        trainer.train()
        wall = time.perf_counter() - start
        if trainer.state.global_step == 0:
            raise SiftrankError(f"fine-tuning formed no batch of {batch_size} distinct texts from {len(triplets)} triplets: "
                                "lower batch_size")
        from accelerate.utils import extract_model_from_parallel

        # accelerate wraps forward in bf16 autocast for mixed precision; the trained model must not keep it
        model = extract_model_from_parallel(model, keep_fp32_wrapper=False)
        model.eval()
        self.model = model
        self.history = [{"step": 0, f"eval_{VALIDATION_KEY}": first[VALIDATION_KEY]}] + [
            {k: v for k, v in entry.items() if isinstance(v, (int, float))} for entry in trainer.state.log_history]
        __import__("shutil").rmtree(work, ignore_errors=True)
        self.report = {**self.counts, "wall_seconds": wall, "train_triplets": len(triplets), "general_triplets": len(general), "train_queries": len(train_q),
                "validation_queries": len(val_q), "steps": trainer.state.global_step, "learning_rate": self.learning_rate,
                "batch_size": batch_size, "precision": "bf16" if self.bf16 else "fp32"}
        return self.report

    def pick_bf16(self, model, triplets: list[Triplet], batch: int) -> bool:
        """Whether to train under bf16 autocast: measured, one training step each way on a batch of these
        triplets, once per CPU model and model, rather than inferred from the encoder's inference probe
        (backward passes weigh differently). On a 2-core AMD EPYC (AVX512-BF16, no AMX) a step of 32 SciFact
        triplets took 9 s in bf16 and 15 s in fp32."""
        import torch
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

        from retrieval.probe import SpeedProbe

        if self.encoder.precision != "bf16" or not triplets:
            return False  # the encoder's measured precision is fp32: bf16 training is no candidate
        rows = triplets[:batch]
        loss = MultipleNegativesRankingLoss(model)
        features = [model.tokenize([t[i] for t in rows]) for i in range(3)]

        def step(bf16: bool):
            def work() -> None:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    value = loss(features, None)
                value.backward()
                model.zero_grad(set_to_none=True)
            return work

        choice, seconds = SpeedProbe("finetune-precision").fastest(f"{self.encoder.base_fingerprint} batch {len(rows)} triplets",
                                                                   {"fp32": step(False), "bf16": step(True)}, repeats=1)
        log.info("fine-tuning precision: %s (seconds per step %s)", choice, seconds)
        return choice == "bf16"

    def validation_score(self) -> float:
        """nDCG@10 on the validation queries at the last evaluation (the step-0 score before training)."""
        scores = [e[f"eval_{VALIDATION_KEY}"] for e in self.history if e.get(f"eval_{VALIDATION_KEY}") is not None]
        if not scores:
            raise SiftrankError("no validation score yet: train first")
        return float(scores[-1])

    def checkpoint(self, model, step: int) -> None:
        """A loadable artifact of the model at ``step`` in ``checkpoint_dir/step-N`` (the same format as
        :meth:`save`), so a long run can be stopped, inspected or rolled back."""
        assert self.checkpoint_dir is not None
        self._write(model, Path(self.checkpoint_dir) / f"step-{step}", {"steps": step, "checkpoint": True}, overwrite=True)

    @property
    def artifact_kind(self) -> str:
        return "adapter" if self.setup.adapters is not None else "finetuned-encoder"

    def save(self, path: Path, overwrite: bool = False) -> None:
        """Adapters: an adapter artifact for the base model. Full and BitFit: a sentence-transformers folder.
        Both with the training log (``training_log.json``) and the last run's report."""
        if self.model is None:
            raise SiftrankError("train the model before saving it")
        self._write(self.model, path, self.report, overwrite)

    def _write(self, model, path: Path, report: dict[str, Any], overwrite: bool) -> None:
        base = {"model": self.source, "fingerprint": self.encoder.base_fingerprint}
        extra = {"data": {"training": report}, "seed": self.seed}
        if self.setup.adapters is not None:
            self.setup.adapters.save(model, path, base, extra, overwrite)
            write_text_atomic(Path(path) / "training_log.json", json.dumps(self.history, indent=1) + "\n")
            return
        with atomic_dir(Path(path), overwrite=overwrite) as tmp:
            model.save(str(tmp))
            write_text_atomic(tmp / "training_log.json", json.dumps(self.history, indent=1) + "\n")
            Manifest(kind=self.artifact_kind, source_model=self.source, parameters={"method": self.method},
                     encoder={**base, "result": model_fingerprint(tmp)}, **extra).write(tmp)


def weighted_ranking_loss(model) -> Any:
    """MultipleNegativesRankingLoss (in-batch and hard negatives, scaled cosine) whose per-pair terms are
    averaged with the weights the trainer passes as labels (inverse-propensity weights of click labels)."""
    import torch
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    class WeightedRankingLoss(MultipleNegativesRankingLoss):
        def compute_loss_from_embeddings(self, embeddings: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
            queries, docs = embeddings[0], torch.cat(embeddings[1:])
            scores = self.similarity_fct(queries, docs) * self.scale
            rows = torch.arange(len(queries), device=queries.device)
            terms = torch.logsumexp(scores, dim=1) - scores[rows, rows]
            weights = labels.to(terms.dtype)
            return (terms * weights).sum() / weights.sum().clamp_min(1e-8)

    return WeightedRankingLoss(model)


def validation_split(dataset: Dataset, share: float = 0.1) -> tuple[list[str], list[str]]:
    """Training and validation query ids of fine-tuning: the judged-relevant queries, shuffled with a fixed
    seed (the same split for every training seed). The validation queries are never trained on, so later
    stages that need unseen queries (the relevance filter's calibration) can use them."""
    qids = sorted(judged_queries(dataset))
    if len(qids) < 2:
        raise SiftrankError(f"{dataset.root}: need at least 2 training queries with relevant passages, got {len(qids)}")
    random.Random(0).shuffle(qids)  # the split is fixed across seeds: seeds vary the training only
    cut = max(1, int(round(share * len(qids))))
    return qids[cut:], qids[:cut]


def validation_evaluator(queries: dict[str, str], docs: dict[str, str], qrels: Qrels, judged_only: bool = False) -> Any:
    """A sentence-transformers evaluator for the validation queries: each query's top 10 among ``docs``
    (its candidates and its judged passages) by cosine, scored by the project's one nDCG@10
    (:func:`retrieval.measures.per_query`, graded labels)."""
    import numpy as np
    from sentence_transformers.sentence_transformer.evaluation import SentenceEvaluator

    from retrieval.measures import per_query

    qids, doc_ids = list(queries), list(docs)

    class ValidationNDCG(SentenceEvaluator):
        def __init__(self) -> None:
            super().__init__()
            self.primary_metric = VALIDATION_KEY

        def __call__(self, model: Any, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
            q = model.encode_query([queries[i] for i in qids], normalize_embeddings=True, convert_to_numpy=True)
            d = model.encode_document([docs[i] for i in doc_ids], normalize_embeddings=True, convert_to_numpy=True)
            scores = q @ d.T
            top = np.argsort(-scores, axis=1)[:, :None if judged_only else 10]  # condensed: the whole pool ranked
            run = {qid: {doc_ids[j]: float(scores[i, j]) for j in top[i]} for i, qid in enumerate(qids)}
            return {VALIDATION_KEY: float(np.mean(list(per_query(run, qrels, judged_only=judged_only).values())))}

    return ValidationNDCG()


def _pruned_masks(model) -> dict[str, Any]:
    """Keep-masks of matrices that a pruned model left with exact zeros (so fine-tuning keeps them zero)."""
    import re

    out = {}
    for name, parameter in model.named_parameters():
        if re.search(FFN_PATTERN, name) and parameter.dim() == 2:
            keep = parameter.detach() != 0
            if not bool(keep.all()):
                out[name] = (parameter, keep.to(parameter.dtype))
    return out
