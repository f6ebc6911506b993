"""Train the LLM full-ranker on complete listwise labels with the importance-aware loss (Liu et al. 2024).

Labels: for every training query a complete order of its candidates: judged passages first by grade
(descending), then ties and unjudged passages by a teacher ranking (reciprocal-rank fusion of the runs
in the dataset's ``runs/`` folder, or the first-stage run itself). Augmentation: besides the
first-stage top-``depth`` in first-stage order (what the ranker sees at inference), each query gets
``samples - 1`` random subsets of its candidate pool presented in random order; the target is the
label order restricted to the shown passages.

Loss over the answer tokens ``[3] > [1] > ...`` (the prompt is masked): (1/T) Σ_t w_t · (−log p(y_t)),
with w_t = 1 + 1/log2(r + 1) for the tokens of the identifier at rank r and ``separator_weight`` (1 in
the paper) for the `` >`` separators and the end of sequence; ``loss="ce"`` sets every weight to 1 (the
ablation). LoRA through peft on every linear projection, gradient checkpointing, the transformers
Trainer (bf16 autocast where the machine has it). The result is a ranker-adapter artifact that
:class:`~retrieval.causal_lm.CausalLM` loads and refuses on another base model.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from retrieval.artifacts import Manifest, atomic_dir, write_text_atomic
from retrieval.causal_lm import ADAPTER_KIND, CausalLM
from retrieval.data import Dataset, Run, read_run
from retrieval.errors import SiftrankError
from retrieval.rerank import ListwiseRanker, importance_weight
from training.fusion import FusionChoice, choose_fusion
from training.triplets import judged_queries
from training.validation import RankerValidation

Loss = Literal["importance", "ce"]
MIN_LIST = 5  # the shortest augmented list


@dataclass
class ListwiseExample:
    """One training list: the query, its passages in the order shown, and the target order (0-based)."""

    query: str
    passages: list[str]
    order: list[int]


def fuse_runs(runs: list[Run], k: int = 60) -> Run:
    """Reciprocal-rank fusion (Cormack et al. 2009): Σ_runs 1 / (k + rank)."""
    fused: Run = {}
    for run in runs:
        for q, scores in run.items():
            target = fused.setdefault(q, {})
            for rank, d in enumerate(sorted(scores, key=lambda d: (-scores[d], d)), 1):
                target[d] = target.get(d, 0.0) + 1.0 / (k + rank)
    return fused


def label_order(judged: dict[str, int], candidates: list[str], teacher: dict[str, float]) -> list[str]:
    """The complete listwise label of ``candidates``: by grade (unjudged = 0), then teacher score, then
    the candidates' own order."""
    position = {d: i for i, d in enumerate(candidates)}
    return sorted(candidates, key=lambda d: (-judged.get(d, 0), -teacher.get(d, float("-inf")), position[d]))


def lists_from_run(dataset: Dataset, qids: list[str], candidates: Run, teacher: Run, depth: int, pool: int,
                   samples: int, rng: random.Random, min_length: int = MIN_LIST) -> list[ListwiseExample]:
    """Training lists for ``qids``: the first-stage top ``depth`` as ranked, plus ``samples - 1`` random
    subsets of the top ``pool`` of ``min_length`` to ``depth`` candidates in random order (each with the
    label order restricted to it), so that the model learns to rank rather than to copy an order."""
    examples = []
    for q in qids:
        ranked = sorted(candidates.get(q, {}), key=lambda d: (-candidates[q][d], d))[:pool]
        if len(ranked) < 2:
            continue
        labels = label_order(dataset.qrels.get(q, {}), ranked, teacher.get(q, {}))
        rank_of = {d: r for r, d in enumerate(labels)}
        longest = min(depth, len(ranked))
        shown_lists = [ranked[:depth]] + [rng.sample(ranked, rng.randint(min(min_length, longest), longest))
                                          for _ in range(samples - 1)]
        for shown in shown_lists:
            texts = dataset.store.texts(shown)
            order = sorted(range(len(shown)), key=lambda i: rank_of[shown[i]])
            examples.append(ListwiseExample(dataset.queries[q], texts, order))
    return examples


def lists_from_hard_negatives(path: Path, depth: int, rng: random.Random) -> list[ListwiseExample]:
    """Lists from a FlagEmbedding-style jsonl (``query``, ``pos``, ``neg``): positives first, negatives in
    their file order (as mined), shown shuffled."""
    examples = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            ranked = list(record["pos"]) + list(record["neg"])
            query = record["query"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise SiftrankError(f"{path}:{number}: expected a JSON object with query, pos and neg ({exc})") from None
        ranked = ranked[:depth]
        shown = rng.sample(range(len(ranked)), len(ranked))
        examples.append(ListwiseExample(query, [ranked[i] for i in shown], sorted(range(len(shown)), key=lambda i: shown[i])))
    return examples


def bm25_run(dataset: Dataset, qids: list[str], depth: int) -> Run:
    """A BM25 first stage over the dataset's own corpus, for datasets without a run file."""
    from retrieval.lexical import BM25

    scores, ids = BM25(dataset.corpus).search([dataset.queries[q] for q in qids], depth)
    return {q: {d: float(s) for d, s in zip(row, srow)} for q, row, srow in zip(qids, ids, scores)}


def training_qids(dataset: Dataset, folds: int = 0, fold: int = 0, seed: int = 0) -> tuple[list[str], list[str]]:
    """Training and held-out queries: all judged queries, or all but fold ``fold`` of a query-level k-fold."""
    from retrieval.data import query_folds

    qids = sorted(judged_queries(dataset))
    if not qids:
        raise SiftrankError(f"{dataset.qrels_path}: no query has a relevant judgment: nothing to learn an order from")
    if not folds:
        return qids, []
    if not 0 <= fold < folds:
        raise SiftrankError(f"fold must be between 0 and {folds - 1}, got {fold}")
    parts = query_folds(qids, folds, seed)
    return [q for i, part in enumerate(parts) if i != fold for q in part], parts[fold]


def dataset_lists(dataset: Dataset, qids: list[str], first_stage: Run | None, depth: int, pool: int, samples: int,
                  rng: random.Random) -> list[ListwiseExample]:
    """Training lists of one dataset: candidates from ``first_stage`` (BM25 over the corpus when None);
    ties and unjudged ordered by the fused runs of ``runs/``, else by the fusion of the first stage with
    BM25 (or BM25 alone when it is the first stage)."""
    if first_stage is None:
        candidates = teacher = bm25_run(dataset, qids, pool)
    else:
        candidates = first_stage
        teacher = fuse_runs([first_stage, bm25_run(dataset, qids, pool)])
    if dataset.run_paths:
        teacher = fuse_runs([read_run(p) for p in dataset.run_paths])
    return lists_from_run(dataset, qids, candidates, teacher, depth, pool, samples, rng)


def build_lists(dataset: Dataset, first_stage: Run | None, extra: list[str], depth: int, pool: int, samples: int,
                folds: int = 0, fold: int = 0, seed: int = 0, validation: int = 0, every: int = 20,
                patience: int = 2) -> tuple[list[ListwiseExample], dict[str, Any], RankerValidation | None]:
    """Every training list for one run of ``train-ranker``, a record of the data used and the validation:
    the dataset's training queries (all, or all but one fold) less ``validation`` of them kept out to be
    scored during training (first-stage candidates; BM25 when no run is given), plus each ``extra``
    source: a dataset ``DIR[:SPLIT]`` (BM25 candidates, all judged queries) or a FlagEmbedding jsonl file."""
    rng = random.Random(seed)
    train, held_out = training_qids(dataset, folds, fold, seed)
    checks: RankerValidation | None = None
    if validation:
        candidates = first_stage if first_stage is not None else bm25_run(dataset, train, pool)
        train, checks = RankerValidation.split(dataset, train, candidates, depth, validation, seed, every, patience)
    lists = dataset_lists(dataset, train, first_stage, depth, pool, samples, rng)
    used: dict[str, Any] = {"dataset": str(dataset.root), "qrels": str(dataset.qrels_path), "train_queries": len(train),
                            "validation_queries": sorted(checks.queries) if checks else [], "folds": folds, "fold": fold,
                            "held_out": held_out, "extra": {}}
    for spec in extra:
        if Path(spec).is_file():
            more = lists_from_hard_negatives(Path(spec), depth, rng)
        else:
            root, sep, split = spec.rpartition(":")
            other = Dataset.load(Path(root if sep else spec), split=split if sep else "train")
            more = dataset_lists(other, training_qids(other)[0], None, depth, pool, samples, rng)
        used["extra"][spec] = len(more)
        lists += more
    return lists, used, checks


class ListwiseTrainer:
    """LoRA-trains a causal LM to output complete rankings (see the module doc)."""

    artifact_kind = ADAPTER_KIND

    def __init__(self, model: str = "bundled:SmolLM2-135M-Instruct", loss: Loss = "importance", depth: int = 20,
                 max_passage_tokens: int = 48, lora_rank: int = 16, learning_rate: float = 3e-4, steps: int = 200,
                 accumulation: int = 4, separator_weight: float = 1.0, seed: int = 0, bf16: bool | None = None,
                 gradient_checkpointing: bool = False) -> None:
        if loss not in ("importance", "ce"):
            raise SiftrankError(f"loss must be importance or ce, not '{loss}'")
        if steps < 1 or accumulation < 1 or lora_rank < 1 or depth < 2:
            raise SiftrankError("steps, accumulation and lora_rank must be positive and depth at least 2")
        self.llm = CausalLM(model, precision="fp32")
        self.ranker = ListwiseRanker(self.llm, mode="generate", max_passage_tokens=max_passage_tokens)
        self.loss, self.depth, self.lora_rank, self.learning_rate = loss, depth, lora_rank, learning_rate
        self.steps, self.accumulation, self.separator_weight, self.seed = steps, accumulation, separator_weight, seed
        self.bf16 = bf16  # None: whichever trains faster here, measured once
        self.gradient_checkpointing = gradient_checkpointing
        self.model: Any = None
        self.history: list[dict[str, Any]] = []
        self.validation: RankerValidation | None = None
        self.fusion: FusionChoice | None = None
        self.report: dict[str, Any] = {}  # the last training run, and the data it used (written to the manifest)
        self.used: dict[str, Any] = {}

    def tokens(self, example: ListwiseExample) -> dict[str, list]:
        """Prompt + answer ids, labels (-100 on the prompt) and the per-token loss weights."""
        prompt = self.ranker.prompt(example.query, example.passages).ids
        ids, weights = list(prompt), [0.0] * len(prompt)
        for piece, rank in self.ranker.answer(example.order):
            if self.loss == "ce":
                weight = 1.0
            else:
                weight = importance_weight(rank) if rank is not None else self.separator_weight
            ids += piece
            weights += [weight] * len(piece)
        labels = [-100] * len(prompt) + ids[len(prompt):]
        return {"input_ids": ids, "labels": labels, "weights": weights}

    def pick_bf16(self, model, rows: list[dict[str, list]]) -> bool:
        """bf16 autocast or fp32: whichever runs a training step of a typical list faster on this machine
        (measured once per CPU model and base model; CPUs with the same flags differ several-fold)."""
        import torch

        from retrieval.probe import SpeedProbe

        if self.llm.device.startswith("cuda"):
            return True
        row = sorted(rows, key=lambda r: len(r["input_ids"]))[len(rows) // 2]
        batch = collate([row])
        labels, weights = batch.pop("labels"), batch.pop("weights")

        def step(bf16: bool):
            def work() -> None:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    out = model(**batch)
                    loss = weighted_loss(out.logits, labels, weights)
                loss.backward()
                model.zero_grad(set_to_none=True)
            return work

        width = 256 * (len(row["input_ids"]) // 256 + 1)
        choice, _ = SpeedProbe("llm-train-precision").fastest(f"{self.llm.fingerprint} lora{self.lora_rank} ~{width} tokens",
                                                              {"fp32": step(False), "bf16": step(True)}, repeats=1)
        return choice == "bf16"

    def train(self, examples: list[ListwiseExample], validation: RankerValidation | None = None,
              progress: bool = True) -> dict[str, Any]:
        """Train on ``examples`` for up to ``steps`` optimiser steps (fewer when ``validation`` stops it
        early; its best weights are kept); returns counts, wall time, seconds per step and history."""
        import torch
        from datasets import Dataset as HFDataset
        from peft import LoraConfig, get_peft_model
        from transformers import TrainingArguments

        from retrieval.probe import cpu_model

        if not examples:
            raise SiftrankError("no training lists: every query needs at least 2 candidates")
        torch.manual_seed(self.seed)
        rows = [self.tokens(e) for e in examples]
        model = self.llm.load(trainable=True)
        model.config.use_cache = False
        lora = LoraConfig(r=self.lora_rank, lora_alpha=2 * self.lora_rank, lora_dropout=0.05,
                          target_modules="all-linear", task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
        if self.bf16 is None:
            self.bf16 = self.pick_bf16(model, rows)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        work = Path(__import__("tempfile").mkdtemp(prefix="siftrank-ranker-"))
        args = TrainingArguments(
            output_dir=str(work), max_steps=self.steps, per_device_train_batch_size=1,
            gradient_accumulation_steps=self.accumulation, learning_rate=self.learning_rate, warmup_steps=0.05,
            lr_scheduler_type="cosine", bf16=self.bf16, use_cpu=self.llm.device == "cpu", seed=self.seed,
            data_seed=self.seed, logging_steps=max(1, min(10, self.steps // 50)), save_strategy="no", report_to="none",
            gradient_checkpointing=self.gradient_checkpointing, remove_unused_columns=False,
            gradient_checkpointing_kwargs={"use_reentrant": False}, disable_tqdm=not progress)
        callback = validation_callback(self, model, validation)
        trainer = weighted_trainer()(model=model, args=args, train_dataset=HFDataset.from_list(rows),
                                     data_collator=collate, callbacks=[callback])
        start = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - start
        callback.restore_best()
        self.model, self.validation = model, validation  # type: ignore[assignment]
        self.history = [{k: v for k, v in e.items() if isinstance(v, (int, float))} for e in trainer.state.log_history]
        __import__("shutil").rmtree(work, ignore_errors=True)
        tokens = [len(r["input_ids"]) for r in rows]
        steps = trainer.state.global_step
        report: dict[str, Any] = {
            "trainable": trainable, "parameters": total, "wall_seconds": wall, "lists": len(rows), "steps": steps,
            "seconds_per_step": round(callback.train_seconds / max(1, steps), 2), "mean_tokens": sum(tokens) / len(tokens),
            "loss": self.loss, "learning_rate": self.learning_rate, "bf16": self.bf16, "cpu": cpu_model()}
        if validation is not None:
            report.update({"validation": validation.history, "best_step": validation.best_step,
                           "validation_queries": len(validation.queries),
                           "validation_first_stage": validation.first_stage()})
        self.report = report
        return report

    def fit(self, dataset: Dataset, first_stage: Run | None, extra: list[str], pool: int = 50, samples: int = 2,
            folds: int = 0, fold: int = 0, validation: int = 40, every: int = 20, patience: int = 2
            ) -> tuple[dict[str, Any], FusionChoice | None, dict[str, Any]]:
        """Lists from ``dataset`` (:func:`build_lists`), training with early stopping on the validation
        queries, then the fusion weight chosen on them: (training report, fusion or None, data used)."""
        lists, used, checks = build_lists(dataset, first_stage, extra, self.depth, pool, samples, folds, fold,
                                          self.seed, validation, every, patience)
        report = self.train(lists, checks)
        self.used = used
        return report, (self.choose_fusion() if checks is not None else None), used

    def choose_fusion(self, folds: int = 5) -> FusionChoice:
        """The fusion method and weight, by query-level CV over the validation queries' best-step scores."""
        if self.validation is None or not self.validation.best_scores:
            raise SiftrankError("choosing the fusion weight needs validation queries (train with a validation split)")
        self.fusion = choose_fusion(self.validation.first, self.validation.best_scores, self.validation.qrels,
                                    folds=min(folds, len(self.validation.queries)), seed=self.seed)
        return self.fusion

    def save(self, path: Path, overwrite: bool = False) -> None:
        """The LoRA weights as a ranker-adapter artifact tied to the base model, plus the training log, the last
        run's report and data, and, when one was chosen, the fusion (method, weight, k) the ranker stage uses."""
        if self.model is None:
            raise SiftrankError("train the ranker before saving it")
        parameters: dict[str, Any] = {"loss": self.loss, "depth": self.depth, "lora_rank": self.lora_rank,
                                      "max_passage_tokens": self.ranker.max_passage_tokens,
                                      "separator_weight": self.separator_weight, "seed": self.seed}
        extra = dict(self.used)
        if self.fusion is not None:
            parameters["fusion"] = self.fusion.fusion.to_dict()
            extra["fusion_cv"] = self.fusion.to_dict()
        with atomic_dir(Path(path), overwrite=overwrite) as tmp:
            self.model.save_pretrained(str(tmp))
            write_text_atomic(tmp / "training_log.json", json.dumps(self.history, indent=1) + "\n")
            Manifest(kind=self.artifact_kind, source_model=self.llm.spec, parameters=parameters,
                     data={**extra, "training": self.report},
                     base={"model": self.llm.spec, "fingerprint": self.llm.fingerprint}).write(tmp)


def validation_callback(trainer: ListwiseTrainer, model: Any, validation: RankerValidation | None) -> Any:
    """A transformers callback that times the optimiser steps and runs the validation (early stopping,
    best weights kept; see :mod:`training.validation`). Defined on first use: lazy imports."""
    from transformers import TrainerCallback

    class Callback(TrainerCallback):
        def __init__(self) -> None:
            self.train_seconds, self._step_start = 0.0, 0.0
            self.best_state: dict[str, Any] | None = None

        def _validate(self, step: int) -> bool:
            import torch

            if validation is None:
                return False
            model.eval()
            trainer.llm.use(model)
            try:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(trainer.bf16) and trainer.llm.device == "cpu"):
                    best = validation.evaluate(step, trainer.llm, trainer.ranker.max_passage_tokens)
            finally:
                trainer.llm.__dict__.pop("model", None)
                model.train()
            if best:
                self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}
            return validation.exhausted()

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            self._validate(0)

        def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            self._step_start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            self.train_seconds += time.perf_counter() - self._step_start
            last = state.global_step >= state.max_steps
            if validation is not None and (state.global_step % validation.every == 0 or last):
                control.should_training_stop = self._validate(state.global_step) or control.should_training_stop

        def restore_best(self) -> None:
            if self.best_state is not None:
                model.load_state_dict(self.best_state, strict=False)

    return Callback()


def collate(rows: list[dict[str, list]]) -> dict[str, Any]:
    """Left-pad a batch so every answer ends at the last position (pads: label -100, weight 0, masked,
    positions counted from each sequence's first real token)."""
    import torch

    width = max(len(r["input_ids"]) for r in rows)

    def pad(key: str, value: float | int, dtype) -> Any:
        return torch.tensor([[value] * (width - len(r[key])) + r[key] for r in rows], dtype=dtype)

    mask = torch.tensor([[0] * (width - len(r["input_ids"])) + [1] * len(r["input_ids"]) for r in rows])
    return {"input_ids": pad("input_ids", 0, torch.long), "labels": pad("labels", -100, torch.long),
            "weights": pad("weights", 0.0, torch.float32), "attention_mask": mask,
            "position_ids": (mask.cumsum(1) - 1).clamp(min=0)}


def weighted_loss(logits, labels, weights):
    """(1/T) Σ_t w_t · (−log p(y_t)) over each sequence's labelled tokens, averaged over the batch."""
    import torch.nn.functional as F

    logits, labels, weights = logits[:, :-1].float(), labels[:, 1:], weights[:, 1:]
    mask = labels != -100
    nll = F.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
    per_sequence = (nll * weights * mask).sum(1) / mask.sum(1).clamp(min=1)
    return per_sequence.mean()


def weighted_trainer():
    """The transformers Trainer subclass with the weighted loss (defined on first use: lazy imports)."""
    from transformers import Trainer

    class _Weighted(Trainer):
        """The transformers Trainer with the weighted token loss; logits only for the answer positions."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
            labels, weights = inputs.pop("labels"), inputs.pop("weights")
            answer = int((labels != -100).sum(1).max()) + 1
            outputs = model(**inputs, logits_to_keep=answer)
            loss = weighted_loss(outputs.logits, labels[:, -answer:], weights[:, -answer:])
            return (loss, outputs) if return_outputs else loss

    return _Weighted
