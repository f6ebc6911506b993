"""Training commands: ``calibrate`` (relevance filter), ``prune`` (GAPrune), ``distil`` (a smaller, faster encoder
for one corpus), ``finetune`` (adapters), and ``train-ranker`` (the LLM full-ranker). Each writes one artifact atomically and refuses to overwrite."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from retrieval.artifacts import data_home
from retrieval.errors import SiftrankError
from serving.cli.common import (
    OverwriteOpt,
    PipelineOpt,
    TrainDatasetOpt,
    Verbose,
    app,
    load_config,
    refuse_existing,
    refuse_stages,
    setup_logging,
)


@app.command()
def calibrate(
    out: Annotated[Path, typer.Option("--out", "-o", help="Calibrator artifact directory to write (atomically).")],
    dataset: TrainDatasetOpt,
    split: Annotated[str, typer.Option(help="Qrels split to train on.")] = "train",
    qrels: Annotated[Optional[str], typer.Option(help="Qrels file (path or name in the dataset) instead of --split.")] = None,
    pipeline: PipelineOpt = None,
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="Candidates per query (the first-stage depth the filter will see).")] = 100,
    family: Annotated[str, typer.Option(help="Monotone map: linear, sqrt, quadratic or power.")] = "power",
    features: Annotated[str, typer.Option(help="Query features: auto (choose by cross-validation among all), global (no learned query part), embedding, stats, embedding+stats.")] = "auto",
    target_recall: Annotated[Optional[float], typer.Option(help="Choose the global threshold for this recall on the out-of-fold scores of the training queries (default 0.95).")] = None,
    target_precision: Annotated[Optional[float], typer.Option(help="Or for this precision.")] = None,
    folds: Annotated[int, typer.Option(help="Also run query-level k-fold cross-validation with this many folds (0: off) and report it.")] = 0,
    seed: Annotated[int, typer.Option(help="Seed for the validation split, initialisation and negative sampling.")] = 0,
    overwrite: OverwriteOpt = False,
    verbose: Verbose = False,
) -> None:
    """Train a Cosine Adapter relevance calibrator on a dataset's top-K candidates and choose its threshold."""
    from eval.report import FILTER_COLUMNS, print_table
    from retrieval.calibration import FAMILIES
    from retrieval.data import Dataset
    from retrieval.stages.context import StageContext
    from training.calibrate import CalibratorTrainer, CandidateSet, feature_flags
    from training.calibration_cv import CalibrationCV, aggregate

    setup_logging(verbose)
    refuse_existing(out, overwrite)
    feature_flags(features)  # an unknown name fails before any work
    if target_recall is not None and target_precision is not None:
        raise SiftrankError("give --target-recall or --target-precision, not both")
    for name, value in (("target recall", target_recall), ("target precision", target_precision)):
        if value is not None and not 0.0 < value <= 1.0:
            raise SiftrankError(f"{name} must be within (0, 1], not {value}")
    if target_recall is None and target_precision is None:
        target_recall = 0.95

    def make_trainer(trainer_seed: int) -> CalibratorTrainer:
        return CalibratorTrainer.named(features, family=family, seed=trainer_seed, target_recall=target_recall,
                                       target_precision=target_precision)

    if family not in FAMILIES:
        raise SiftrankError(f"--family must be one of {', '.join(FAMILIES)}, not '{family}'")
    config = load_config(pipeline)
    refuse_stages(config, "calibrate", first_stages=("dense", "bm25", "hybrid"))  # calibrated on its first stage's candidates
    data = Dataset.load(dataset, split=split, qrels=qrels)
    CandidateSet.check_judgments(data)
    context = StageContext(config, data)
    encoder = context.encoder
    candidates = CandidateSet.retrieve(data, config.first_stage.build(context), encoder, k)
    metrics: dict = {}
    if folds:
        if not 2 <= folds <= len(candidates):
            raise SiftrankError(f"--folds must be between 2 and the number of queries ({len(candidates)})")
        tables, chosen = CalibrationCV(make_trainer, folds, seed).run(candidates, data.qrels, encoder.identity())
        metrics["cv"] = {"folds": folds, "aggregate": aggregate(tables), "chosen": chosen}
        print_table(metrics["cv"]["aggregate"], title=f"{folds}-fold query cross-validation, K={k} (mean ± std over folds)",
                    columns=FILTER_COLUMNS)
    calibrator = make_trainer(seed).fit(candidates, encoder.identity())
    calibrator.metrics = metrics
    calibrator.data = {"dataset": str(data.root), "qrels": str(data.qrels_path), "queries": len(candidates),
                          "positives": candidates.positives, "k": k}
    calibrator.save(out, overwrite=overwrite)
    chosen_config = calibrator.extra["chosen"]
    typer.echo(f"wrote {out}: {family} map of {chosen_config['input']}, features={chosen_config['features']}, "
               f"hidden={chosen_config['hidden']}, decay={chosen_config['decay']}, threshold={calibrator.threshold:.4g} "
               f"(cross-validated PR-AUC {chosen_config['cv_pr_auc']:.4f})")


@app.command()
def prune(
    out: Annotated[Path, typer.Option("--out", "-o", help="Pruned sentence-transformers folder to write (atomically).")],
    dataset: TrainDatasetOpt,
    model: Annotated[str, typer.Option(help="Model to prune: bundled:all-MiniLM-L6-v2 or a local sentence-transformers folder.")] = "bundled:all-MiniLM-L6-v2",
    method: Annotated[str, typer.Option(help="gaprune (DAI), magnitude, random, fisher-domain or fisher-general.")] = "gaprune",
    sparsity: Annotated[float, typer.Option(help="Share of the target weights (or FFN neurons with --structured) to remove, in (0, 1).")] = 0.5,
    target: Annotated[str, typer.Option(help="Regex over parameter names selecting the matrices to prune (default: both FFN matrices of every layer).")] = r"layer\.\d+\.(intermediate\.dense|output\.dense)\.weight$",
    scope: Annotated[str, typer.Option(help="Budget: global (one threshold over all targets) or matrix (the same share of every matrix).")] = "global",
    structured: Annotated[bool, typer.Option(help="Remove whole FFN neurons (summed scores), giving smaller dense matrices.")] = False,
    retrain_steps: Annotated[int, typer.Option(min=0, help="InfoNCE steps on the domain triplets afterwards, masks kept.")] = 0,
    split: Annotated[str, typer.Option(help="Qrels split of the domain dataset (its training qrels give the triplets).")] = "train",
    general: Annotated[Optional[Path], typer.Option(help="Folder with the general MS MARCO training samples. Default: $SIFTRANK_DATA/msmarco-train-toy.", show_default=False)] = None,
    triplets: Annotated[int, typer.Option(min=1, help="Calibration triplets per set.")] = 256,
    seed: Annotated[int, typer.Option(help="Seed for random pruning and retraining batches.")] = 0,
    beta: Annotated[Optional[float], typer.Option(help="DAI weight of the general Fisher term (paper: 1; default chosen on held-out SciFact-train queries, docs/pruning.md).")] = None,
    normalise: Annotated[Optional[str], typer.Option(help="Per-tensor scale of the DAI terms: mean, rms, max, or raw (the paper's scale).")] = None,
    overwrite: OverwriteOpt = False,
    verbose: Verbose = False,
) -> None:
    """Prune the embedding model with GAPrune (or a baseline) and write a sentence-transformers folder."""
    from training.prune import DEFAULT_BETA, DEFAULT_NORMALISE, METHODS, Pruner, check_sparsity
    from training.stages.context import BuildContext

    setup_logging(verbose)
    refuse_existing(out, overwrite)
    check_sparsity(sparsity)
    if method not in METHODS:
        raise SiftrankError(f"--method must be one of {', '.join(METHODS)}, not '{method}'")
    pruner = Pruner(model, target=target, seed=seed, beta=DEFAULT_BETA if beta is None else beta,
                    normalise=normalise or DEFAULT_NORMALISE)
    general = general if general is not None else data_home() / "msmarco-train-toy"
    report = pruner.build(out, BuildContext.plain(model, dataset, split), method, sparsity, triplets, general, scope,
                          structured, retrain_steps, overwrite=overwrite)
    typer.echo(f"wrote {out}: {method} {sparsity:.0%}{' structured' if structured else ''}, "
               f"{report['metrics']['parameters']:,} parameters")


@app.command()
def distil(
    out: Annotated[Path, typer.Option("--out", "-o", help="Smaller sentence-transformers folder to write (atomically).")],
    corpus: Annotated[Path, typer.Option("--corpus", help="The corpus the model will encode: a corpus file or a dataset directory holding one (only its passages are read).", show_default=False)],
    model: Annotated[str, typer.Option(help="Model to shrink: bundled:all-MiniLM-L6-v2 or a local BERT-style sentence-transformers folder.")] = "bundled:all-MiniLM-L6-v2",
    sparsity: Annotated[float, typer.Option(help="Share of every layer's FFN neurons to remove, in (0, 1).")] = 0.5,
    loss: Annotated[str, typer.Option(help="layers (the vector and every layer's token states) or cosine (the vector only).")] = "layers",
    scoring: Annotated[str, typer.Option(help="Neurons removed first: magnitude (smallest weights) or activation (least output on the corpus).")] = "magnitude",
    epochs: Annotated[float, typer.Option(min=0.01, help="Passes over the training texts.")] = 1.0,
    limit: Annotated[int, typer.Option(min=1, help="Most corpus passages to train on (their openings are added as short inputs).")] = 15000,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate (default: the one benchmarks/distil_select.py chose).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Texts per step.")] = 32,
    seed: Annotated[int, typer.Option(help="Seed of the sampling and batch order.")] = 0,
    overwrite: OverwriteOpt = False,
    verbose: Verbose = False,
) -> None:
    """Remove FFN neurons from the embedding model and distil the full model back into it on a corpus's own
    passages (no queries, no labels): a faster encoder for that corpus (docs/speed.md)."""
    from retrieval.data import Dataset
    from training.distil import LEARNING_RATE, Distiller

    setup_logging(verbose)
    refuse_existing(out, overwrite)
    distiller = Distiller(model, sparsity, epochs=epochs, batch_size=batch_size, seed=seed, loss=loss, scoring=scoring,
                          learning_rate=LEARNING_RATE if lr is None else lr)
    report = distiller.run(Dataset.corpus_only(corpus).doc_texts(), limit)
    distiller.save(out, overwrite)
    metrics = report["metrics"]
    typer.echo(f"wrote {out}: FFN {metrics['intermediate_size']} wide, {metrics['parameters']:,} parameters "
               f"(from {metrics['parameters_before']:,}), {metrics['steps']} steps in {metrics['wall_seconds']:.0f} s")


@app.command()
def finetune(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output: an adapter artifact (connected, lora) or a sentence-transformers folder (full, bitfit); written atomically.")],
    dataset: TrainDatasetOpt,
    method: Annotated[str, typer.Option(help="A method of the fine-tuning registry (training.adapters.METHODS, docs/finetuning.md), e.g. connected (inside LoRA + aside pathway), lora (peft, every linear layer), ia3, bitfit (biases) or full.")] = "connected",
    model: Annotated[str, typer.Option(help="Base model: bundled:all-MiniLM-L6-v2, a local sentence-transformers folder, or a pruned one (its masks are kept).")] = "bundled:all-MiniLM-L6-v2",
    split: Annotated[str, typer.Option(help="Qrels split to train on (a share of its queries is held out for validation).")] = "train",
    epochs: Annotated[float, typer.Option(min=0.01, help="Epochs over the training triplets.")] = 4,
    steps: Annotated[Optional[int], typer.Option(min=1, help="Stop after this many steps (overrides --epochs).")] = None,
    batch_size: Annotated[int, typer.Option(min=2, help="Triplets per batch (in-batch negatives).")] = 32,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate (default per method: full 5e-5, bitfit 1e-3, lora, adalora and connected 5e-4).")] = None,
    eval_steps: Annotated[int, typer.Option(min=1, help="Validate every N steps.")] = 20,
    max_fraction: Annotated[Optional[float], typer.Option(help="Trainable-parameter budget as a fraction of the model; exceeding it is an error.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of initialisation, batching and data order.")] = 0,
    checkpoint_steps: Annotated[int, typer.Option(min=0, help="Every N steps write a loadable checkpoint to OUT.checkpoints/step-N (0: none).")] = 0,
    overwrite: OverwriteOpt = False,
    verbose: Verbose = False,
) -> None:
    """Fine-tune the embedding model contrastively (in-batch + mined hard negatives) with one method."""
    from training.finetune import FineTuner
    from training.stages.context import BuildContext

    setup_logging(verbose)
    refuse_existing(out, overwrite)
    ctx = BuildContext.plain(model, dataset, split)  # hard negatives from the dense first stage, as a build mines them
    tuner = FineTuner(ctx.encoder, method, seed=seed, learning_rate=lr, epochs=epochs, batch_size=batch_size,
                      eval_steps=eval_steps, max_fraction=max_fraction, checkpoint_steps=checkpoint_steps,
                      checkpoint_dir=out.with_name(out.name + ".checkpoints") if checkpoint_steps else None)
    report = tuner.train(ctx.dataset, ctx.ranked_ids, steps=steps)
    tuner.save(out, overwrite)
    typer.echo(f"wrote {out}: {method}, {report['trainable']:,} trainable parameters "
               f"({report['trainable_fraction']:.2%}), {report['steps']} steps in {report['wall_seconds']:.0f} s")


@app.command("train-ranker")
def train_ranker(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output: a ranker-adapter artifact (LoRA weights + manifest), written atomically.")],
    dataset: TrainDatasetOpt,
    split: Annotated[str, typer.Option(help="Qrels split.")] = "train",
    qrels: Annotated[Optional[str], typer.Option(help="Qrels file, a path or a name in the dataset.")] = None,
    first_stage_run: Annotated[Optional[Path], typer.Option(help="Candidates from this TREC run, the first stage the ranker will rerank (default: BM25 over the corpus).")] = None,
    model: Annotated[str, typer.Option(help="Causal LM: bundled:SmolLM2-135M-Instruct or a local Hugging Face folder.")] = "bundled:SmolLM2-135M-Instruct",
    loss: Annotated[str, typer.Option(help="importance (the paper's weighted tokens) or ce (plain cross-entropy).")] = "importance",
    depth: Annotated[int, typer.Option(min=2, help="Most candidates per training list (lists of 5..depth are drawn).")] = 20,
    pool: Annotated[int, typer.Option(min=2, help="Candidates per query that random lists are drawn from.")] = 50,
    samples: Annotated[int, typer.Option(min=1, help="Lists per query: the first-stage top-depth plus shuffled random subsets.")] = 2,
    extra: Annotated[Optional[list[str]], typer.Option(help="More training data, repeatable: DIR:SPLIT (a dataset; BM25 candidates) or a FlagEmbedding jsonl (query/pos/neg).")] = None,
    folds: Annotated[int, typer.Option(min=0, help="Query-level k-fold: train on all folds but --fold (0: all queries).")] = 0,
    fold: Annotated[int, typer.Option(min=0, help="The held-out fold (with --folds).")] = 0,
    validation: Annotated[int, typer.Option(min=0, help="Training queries kept out of the lists and scored during training (early stopping, fusion weight); 0: none, no fusion.")] = 40,
    every: Annotated[int, typer.Option(min=1, help="Optimiser steps between validations.")] = 20,
    patience: Annotated[int, typer.Option(min=1, help="Validations without a gain before training stops.")] = 2,
    steps: Annotated[int, typer.Option(min=1, help="Most optimiser steps.")] = 60,
    accumulation: Annotated[int, typer.Option(min=1, help="Lists per optimiser step (gradient accumulation).")] = 4,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 5e-4,
    lora_rank: Annotated[int, typer.Option(min=1, help="LoRA rank (every linear projection).")] = 16,
    max_passage_tokens: Annotated[int, typer.Option(min=8, help="Passage truncation (tokens); use the same at ranking time.")] = 48,
    separator_weight: Annotated[float, typer.Option(min=0.0, help="Loss weight of the ' >' separators (paper: 1).")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of the folds, sampling and training.")] = 0,
    overwrite: OverwriteOpt = False,
    verbose: Verbose = False,
) -> None:
    """Train the LLM full-ranker (LoRA) on complete listwise labels with the importance-aware loss, stop
    early on validation queries and store the fusion weight chosen on them (defaults: `make rerank-study`'s recipe)."""
    from retrieval.data import Dataset, read_run
    from training.listwise import ListwiseTrainer

    setup_logging(verbose)
    refuse_existing(out, overwrite)
    data = Dataset.load(dataset, split=split, qrels=qrels)
    trainer = ListwiseTrainer(model, loss=loss,  # type: ignore[arg-type]  # checked by the trainer
                              depth=depth, max_passage_tokens=max_passage_tokens, lora_rank=lora_rank,
                              learning_rate=lr, steps=steps, accumulation=accumulation,
                              separator_weight=separator_weight, seed=seed)
    report, fusion, _ = trainer.fit(data, read_run(first_stage_run) if first_stage_run else None, extra or [], pool,
                                       samples, folds, fold, validation, every, patience)
    trainer.save(out, overwrite=overwrite)
    typer.echo(f"wrote {out}: {report['lists']} lists, {report['steps']} steps in {report['wall_seconds']:.0f} s "
               f"({report['seconds_per_step']} s per step, {'bf16' if report['bf16'] else 'fp32'}, {report['cpu']}), "
               f"{report['trainable']:,} trainable parameters")
    if fusion is not None:
        typer.echo(f"fusion: {fusion.fusion.method}, ranker weight {fusion.fusion.weight} (validation CV nDCG@10 "
                   f"{fusion.cv_fused:.4f} fused vs {fusion.cv_first:.4f} first stage; weight 0 = ranker off)")
