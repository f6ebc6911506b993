"""The ``siftrank`` command: build indexes, search them, evaluate pipelines on test collections.

Bad input ends with one ``error: ...`` line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from retrieval.errors import SiftrankError

app = typer.Typer(name="siftrank", help=__doc__, no_args_is_help=True, pretty_exceptions_enable=False,
                  add_completion=False)
index_app = typer.Typer(help="Build FAISS indexes over a corpus.", no_args_is_help=True)
app.add_typer(index_app, name="index")

# The shared data folder beside the repository (../shared/data), or $SIFTRANK_DATA.
DEFAULT_DATA = Path(os.environ.get("SIFTRANK_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")

Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens (cache hits, builds) to stderr.")]
ModelOpt = Annotated[Optional[str], typer.Option(help="Encoder: 'bundled:all-MiniLM-L6-v2' or a local sentence-transformers folder. Default: the pipeline config's.")]
PipelineOpt = Annotated[Optional[Path], typer.Option("--pipeline", help="Pipeline config (TOML): encoder, index and later stages. Default: bundled MiniLM, flat index.")]


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")


@index_app.command("build")
def index_build(
    corpus: Annotated[Path, typer.Option("--corpus", help="A corpus file (corpus.jsonl[.gz], collection.tsv) or a dataset directory holding one.")],
    out: Annotated[Path, typer.Option("--out", help="Index directory to write (written atomically).")],
    pipeline: PipelineOpt = None,
    model: ModelOpt = None,
    kind: Annotated[Optional[str], typer.Option(help="flat (exact), ivf (inverted lists) or hnsw (graph). Default: the config's (flat).")] = None,
    device: Annotated[Optional[str], typer.Option(help="Index device: auto (GPU when FAISS sees one), cpu or gpu.")] = None,
    precision: Annotated[Optional[str], typer.Option(help="Encoder precision: auto (fp16 GPU, bf16 on CPUs with native bf16, else fp32), fp32, bf16, fp16.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing index directory (only once the new one is complete).")] = False,
    ray: Annotated[Optional[str], typer.Option("--ray", help="Build a sharded index on Ray: a cluster address (HOST:PORT, ray://HOST:PORT, auto) or 'local'. A failed build resumes when run again.")] = None,
    shards: Annotated[int, typer.Option(min=1, help="With --ray: number of FAISS shards (one search actor each).")] = 2,
    verbose: Verbose = False,
) -> None:
    """Encode a corpus and write a FAISS index directory (index.faiss, docs.parquet, manifest.json), or with
    --ray a sharded one (encoded by Ray Data actors, one FAISS shard per partition)."""
    from retrieval.data import Dataset
    from retrieval.indexer import Indexer

    _logging(verbose)
    config = _config(pipeline, model=model, kind=kind, device=device, precision=precision)
    _refuse_existing(out, overwrite)
    dataset = Dataset.corpus_only(corpus)
    if ray is not None:
        from retrieval.sharded import ShardedIndex

        start = time.perf_counter()
        sharded = ShardedIndex.build(dataset, config.encoder.model_dump(mode="json"), out, shards, config.index.kind,
                                     config.index.params, address=ray, overwrite=overwrite)
        typer.echo(f"wrote {out}: {len(sharded)} passages in {shards} {config.index.kind} shards "
                   f"({time.perf_counter() - start:.1f} s on Ray)")
        return
    index = Indexer(config.encoder.build(), config.index.kind, config.index.params, config.index.device).build(dataset)
    index.save(out, overwrite=overwrite)
    m = index.manifest.metrics
    typer.echo(f"wrote {out}: {len(index)} passages, {index.kind}, {m['passages_per_second']} passages/s "
               f"({m['encoder_precision']} on {m['encoder_device']})")


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="The query text.")],
    index: Annotated[Path, typer.Option("--index", help="Index directory from 'siftrank index build'.")],
    k: Annotated[int, typer.Option("-k", min=1, help="How many hits to show.")] = 10,
    model: ModelOpt = None,
    pipeline: PipelineOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print hits as JSON lines.")] = False,
    verbose: Verbose = False,
) -> None:
    """Search an index with one query and print the ranked hits. The encoder defaults to the one that
    built the index; another model is refused."""
    from retrieval.index import Index
    from retrieval.pipeline import Pipeline

    _logging(verbose)
    loaded = Index.load(index)
    config = _config(pipeline, model=model or loaded.manifest.source_model)
    hits = Pipeline(config.encoder.build(), loaded, depth=k).search(query, k=k)
    for hit in hits:
        if as_json:
            typer.echo(hit.model_dump_json())
        else:
            text = (hit.text or "").replace("\n", " ")
            typer.echo(f"{hit.rank:>3}  {hit.score:.4f}  {hit.id}  {text[:100]}")


@app.command("eval")
def evaluate(
    dataset: Annotated[Path, typer.Option("--dataset", help="Dataset directory (BEIR layout or MS MARCO tsv).")] = DEFAULT_DATA / "msmarco-dl19",
    out: Annotated[Optional[Path], typer.Option("--out", help="Output directory: metrics.json and run.<stage>.trec.")] = None,
    split: Annotated[str, typer.Option(help="Qrels split: qrels/<split>.tsv or qrels.<split>.tsv.")] = "test",
    qrels: Annotated[Optional[str], typer.Option(help="Qrels file, a path or a name in the dataset (e.g. qrels.test.in_corpus.tsv for retrieval over the closed DL19 corpus).")] = None,
    pipeline: PipelineOpt = None,
    model: ModelOpt = None,
    kind: Annotated[Optional[str], typer.Option(help="Index kind: flat, ivf, hnsw. Default: the config's.")] = None,
    precision: Annotated[Optional[str], typer.Option(help="Encoder precision: auto, fp32, bf16, fp16.")] = None,
    first_stage: Annotated[str, typer.Option(help="dense (encoder + index) or bm25 (the lexical baseline).")] = "dense",
    first_stage_run: Annotated[Optional[Path], typer.Option(help="Take candidates from this TREC run instead of retrieving (re-ranking setup).")] = None,
    score_run: Annotated[Optional[list[Path]], typer.Option(help="Only score these TREC runs against the qrels (repeatable); no pipeline.")] = None,
    ties: Annotated[str, typer.Option(help="Tie-break for tied scores in --score-run files: trec_eval (descending docid), docid (ascending), rank (the file's rank column).")] = "trec_eval",
    verbose: Verbose = False,
) -> None:
    """Evaluate a pipeline stage by stage (nDCG@10, RR@10, R@100, R@1000, AP via ir_measures), or score runs."""
    from eval.report import markdown_table, print_table
    from retrieval.artifacts import write_text_atomic
    from retrieval.data import Dataset

    _logging(verbose)
    if score_run:
        from eval.metrics import MetricSuite
        from retrieval.data import read_run

        data = Dataset.load(dataset, split=split, qrels=qrels, with_corpus=False)
        suite = MetricSuite(data.qrels)
        rows = {path.name: suite.evaluate(read_run(path, ties=ties)) for path in score_run}
        print_table(rows, title=f"{data.name} / {data.qrels_path.name}")
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            write_text_atomic(out / "metrics.json", json.dumps({"runs": rows, "qrels": str(data.qrels_path)}, indent=2) + "\n")
            write_text_atomic(out / "runs.md", markdown_table(rows))
        return
    if out is None:
        raise SiftrankError("--out is required (where metrics.json and the runs go)")
    from eval.runner import EvalRunner
    from retrieval.pipeline import Pipeline

    config = _config(pipeline, model=model, kind=kind, precision=precision)
    start = time.perf_counter()
    data = Dataset.load(dataset, split=split, qrels=qrels, with_corpus=first_stage_run is None or config.rerank is not None)
    if first_stage_run is not None:
        pipe = Pipeline(depth=config.index.depth, **Pipeline.later_stages(config, data))
    else:
        pipe = Pipeline.from_config(config, data, first_stage=first_stage)
    setup = time.perf_counter() - start
    metrics = EvalRunner(pipe, data, out).run(first_stage_run, extra_timings={"setup_seconds": round(setup, 3)})
    stages = metrics["stages"]
    print_table(stages, title=f"{data.name} / {data.qrels_path.name} ({len(data.queries)} queries)",
                columns=list(next(iter(stages.values()))))
    if "rerank" in stages:
        cost = stages["rerank"]
        typer.echo(f"ranker: {cost['input_tokens_per_query']:.0f} input and {cost['output_tokens_per_query']:.0f} output "
                   f"tokens, {cost['seconds_per_query']:.2f} s per query; {cost['parse_failures']} parse failures, "
                   f"{cost['repaired_answers']} repaired answers")
    if "filter" in stages:
        from eval.report import FILTER_COLUMNS

        rows = {"adapter": stages["filter"], **stages["filter"]["baselines"]}
        print_table(rows, title="relevance filter over the first-stage candidates (thresholds from training data)",
                    columns=[c for c in FILTER_COLUMNS if c != "nDCG@10"])
    typer.echo(f"wrote {out}/metrics.json")


FEATURES = {"auto": (True, True), "global": (False, False), "embedding": (True, False), "stats": (False, True),
            "embedding+stats": (True, True)}


@app.command()
def calibrate(
    out: Annotated[Path, typer.Option("--out", help="Calibrator artifact directory to write (atomically).")],
    dataset: Annotated[Path, typer.Option("--dataset", help="Training dataset directory.")] = DEFAULT_DATA / "scifact",
    split: Annotated[str, typer.Option(help="Qrels split to train on.")] = "train",
    qrels: Annotated[Optional[str], typer.Option(help="Qrels file (path or name in the dataset) instead of --split.")] = None,
    pipeline: PipelineOpt = None,
    k: Annotated[int, typer.Option("--k", min=1, help="Candidates per query (the first-stage depth the filter will see).")] = 100,
    family: Annotated[str, typer.Option(help="Monotone map: linear, sqrt, quadratic or power.")] = "power",
    features: Annotated[str, typer.Option(help="Query features: auto (choose on validation among all), global (Platt-like, no query part), embedding, stats, embedding+stats.")] = "auto",
    target_recall: Annotated[Optional[float], typer.Option(help="Choose the global threshold for this recall on validation queries (default 0.95).")] = None,
    target_precision: Annotated[Optional[float], typer.Option(help="Or for this precision.")] = None,
    folds: Annotated[int, typer.Option(help="Also run query-level k-fold cross-validation with this many folds (0: off) and report it.")] = 0,
    seed: Annotated[int, typer.Option(help="Seed for the validation split, initialisation and negative sampling.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing artifact.")] = False,
    verbose: Verbose = False,
) -> None:
    """Train a Cosine Adapter relevance calibrator on a dataset's top-K candidates and choose its threshold."""
    from eval.calibration import CalibrationCV, aggregate
    from eval.report import FILTER_COLUMNS, print_table
    from retrieval.calibration import FAMILIES
    from retrieval.data import Dataset
    from retrieval.pipeline import open_index
    from training.calibrate import CalibratorTrainer, CandidateSet

    _logging(verbose)
    _refuse_existing(out, overwrite)
    if features not in FEATURES:
        raise SiftrankError(f"--features must be one of {', '.join(FEATURES)}, not '{features}'")
    if target_recall is not None and target_precision is not None:
        raise SiftrankError("give --target-recall or --target-precision, not both")
    for name, value in (("target recall", target_recall), ("target precision", target_precision)):
        if value is not None and not 0.0 < value <= 1.0:
            raise SiftrankError(f"{name} must be within (0, 1], not {value}")
    if target_recall is None and target_precision is None:
        target_recall = 0.95
    use_embedding, use_stats = FEATURES[features]

    def make_trainer(trainer_seed: int) -> CalibratorTrainer:
        return CalibratorTrainer(family=family, use_embedding=use_embedding, use_stats=use_stats, seed=trainer_seed,
                                 target_recall=target_recall, target_precision=target_precision)

    if family not in FAMILIES:
        raise SiftrankError(f"--family must be one of {', '.join(FAMILIES)}, not '{family}'")
    config = _config(pipeline)
    data = Dataset.load(dataset, split=split, qrels=qrels)
    CandidateSet.check_judgments(data)
    encoder = config.encoder.build()
    candidates = CandidateSet.retrieve(data, encoder, open_index(config, encoder, data), k)
    metrics: dict = {}
    if folds:
        if not 2 <= folds <= len(candidates):
            raise SiftrankError(f"--folds must be between 2 and the number of queries ({len(candidates)})")
        tables, chosen = CalibrationCV(make_trainer, folds, seed).run(candidates, data.qrels, encoder.identity())
        metrics["cv"] = {"folds": folds, "aggregate": aggregate(tables), "chosen": chosen}
        print_table(metrics["cv"]["aggregate"], title=f"{folds}-fold query cross-validation, K={k} (mean ± std over folds)",
                    columns=FILTER_COLUMNS)
    calibrator = make_trainer(seed).fit(candidates, encoder.identity())
    calibrator.save(out, overwrite=overwrite, metrics=metrics,
                    data={"dataset": str(data.root), "qrels": str(data.qrels_path), "queries": len(candidates),
                          "positives": candidates.positives, "k": k})
    chosen_config = calibrator.extra["chosen"]
    typer.echo(f"wrote {out}: {family} map, features={chosen_config['features']}, hidden={chosen_config['hidden']}, "
               f"decay={chosen_config['decay']}, threshold={calibrator.threshold:.4g} "
               f"(validation PR-AUC {chosen_config['val_pr_auc']:.4f})")


@app.command()
def prune(
    out: Annotated[Path, typer.Option("--out", help="Pruned sentence-transformers folder to write (atomically).")],
    model: Annotated[str, typer.Option(help="Model to prune: bundled:all-MiniLM-L6-v2 or a local sentence-transformers folder.")] = "bundled:all-MiniLM-L6-v2",
    method: Annotated[str, typer.Option(help="gaprune (DAI), magnitude, random, fisher-domain or fisher-general.")] = "gaprune",
    sparsity: Annotated[float, typer.Option(help="Share of the target weights (or FFN neurons with --structured) to remove, in (0, 1).")] = 0.5,
    target: Annotated[str, typer.Option(help="Regex over parameter names selecting the matrices to prune (default: both FFN matrices of every layer).")] = r"layer\.\d+\.(intermediate\.dense|output\.dense)\.weight$",
    scope: Annotated[str, typer.Option(help="Budget: global (one threshold over all targets) or matrix (the same share of every matrix).")] = "global",
    structured: Annotated[bool, typer.Option(help="Remove whole FFN neurons (summed scores), giving smaller dense matrices.")] = False,
    retrain_steps: Annotated[int, typer.Option(min=0, help="InfoNCE steps on the domain triplets afterwards, masks kept.")] = 0,
    domain: Annotated[Path, typer.Option(help="Domain dataset (its training qrels give the triplets).")] = DEFAULT_DATA / "scifact",
    domain_split: Annotated[str, typer.Option(help="Qrels split of the domain dataset.")] = "train",
    general: Annotated[Path, typer.Option(help="Folder with the general MS MARCO training samples.")] = DEFAULT_DATA / "msmarco-train-toy",
    triplets: Annotated[int, typer.Option(min=1, help="Calibration triplets per set.")] = 256,
    seed: Annotated[int, typer.Option(help="Seed for random pruning and retraining batches.")] = 0,
    beta: Annotated[Optional[float], typer.Option(help="DAI weight of the general Fisher term (paper: 1; default chosen on held-out SciFact-train queries, docs/pruning.md).")] = None,
    normalise: Annotated[Optional[str], typer.Option(help="Per-tensor scale of the DAI terms: mean, rms, max, or raw (the paper's scale).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    verbose: Verbose = False,
) -> None:
    """Prune the embedding model with GAPrune (or a baseline) and write a sentence-transformers folder."""
    from training.prune import DEFAULT_BETA, DEFAULT_NORMALISE, METHODS, Pruner, calibration_sets, check_sparsity

    _logging(verbose)
    _refuse_existing(out, overwrite)
    check_sparsity(sparsity)
    if method not in METHODS:
        raise SiftrankError(f"--method must be one of {', '.join(METHODS)}, not '{method}'")
    pruner = Pruner(model, target=target, seed=seed, beta=DEFAULT_BETA if beta is None else beta,
                    normalise=normalise or DEFAULT_NORMALISE)
    domain_set, general_set = calibration_sets(model, domain, domain_split, general, triplets)
    report = pruner.prune(method, sparsity, domain_set, general_set, scope, structured, retrain_steps)
    pruner.save(out, {"parameters": report["parameters"], "data": report["data"], "metrics": report["metrics"]}, overwrite)
    typer.echo(f"wrote {out}: {method} {sparsity:.0%}{' structured' if structured else ''}, "
               f"{report['metrics']['parameters']:,} parameters")


@app.command()
def finetune(
    out: Annotated[Path, typer.Option("--out", help="Output: an adapter artifact (connected, lora) or a sentence-transformers folder (full, bitfit); written atomically.")],
    method: Annotated[str, typer.Option(help="connected (inside LoRA + aside pathway), lora (peft, every linear layer), bitfit (biases) or full.")] = "connected",
    model: Annotated[str, typer.Option(help="Base model: bundled:all-MiniLM-L6-v2, a local sentence-transformers folder, or a pruned one (its masks are kept).")] = "bundled:all-MiniLM-L6-v2",
    dataset: Annotated[Path, typer.Option(help="Dataset whose training qrels give the (query, positive, hard negative) triplets.")] = DEFAULT_DATA / "scifact",
    split: Annotated[str, typer.Option(help="Qrels split to train on (a share of its queries is held out for validation).")] = "train",
    epochs: Annotated[float, typer.Option(min=0.01, help="Epochs over the training triplets.")] = 4,
    steps: Annotated[Optional[int], typer.Option(min=1, help="Stop after this many steps (overrides --epochs).")] = None,
    batch_size: Annotated[int, typer.Option(min=2, help="Triplets per batch (in-batch negatives).")] = 32,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate (default per method: full 5e-5, bitfit 1e-3, lora and connected 5e-4).")] = None,
    eval_steps: Annotated[int, typer.Option(min=1, help="Validate every N steps.")] = 20,
    max_fraction: Annotated[Optional[float], typer.Option(help="Trainable-parameter budget as a fraction of the model; exceeding it is an error.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of initialisation, batching and data order.")] = 0,
    checkpoint_steps: Annotated[int, typer.Option(min=0, help="Every N steps write a loadable checkpoint to OUT.checkpoints/step-N (0: none).")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    verbose: Verbose = False,
) -> None:
    """Fine-tune the embedding model contrastively (in-batch + mined hard negatives) with one method."""
    from retrieval.data import Dataset
    from training.finetune import FineTuner

    _logging(verbose)
    _refuse_existing(out, overwrite)
    tuner = FineTuner(model, method, seed=seed, learning_rate=lr, epochs=epochs, batch_size=batch_size,
                      eval_steps=eval_steps, max_fraction=max_fraction, checkpoint_steps=checkpoint_steps,
                      checkpoint_dir=out.with_name(out.name + ".checkpoints") if checkpoint_steps else None)
    data = Dataset.load(dataset, split=split)
    report = tuner.train(data, steps=steps)
    tuner.save(out, report, overwrite)
    typer.echo(f"wrote {out}: {method}, {report['trainable']:,} trainable parameters "
               f"({report['trainable_fraction']:.2%}), {report['steps']} steps in {report['wall_seconds']:.0f} s")


@app.command("train-ranker")
def train_ranker(
    out: Annotated[Path, typer.Option("--out", help="Output: a ranker-adapter artifact (LoRA weights + manifest), written atomically.")],
    dataset: Annotated[Path, typer.Option(help="Dataset whose qrels give the listwise labels.")] = DEFAULT_DATA / "msmarco-dl19",
    split: Annotated[str, typer.Option(help="Qrels split.")] = "test",
    qrels: Annotated[Optional[str], typer.Option(help="Qrels file, a path or a name in the dataset.")] = None,
    first_stage_run: Annotated[Optional[Path], typer.Option(help="Candidates from this TREC run (default: BM25 over the corpus).")] = None,
    model: Annotated[str, typer.Option(help="Causal LM: bundled:SmolLM2-135M-Instruct or a local Hugging Face folder.")] = "bundled:SmolLM2-135M-Instruct",
    loss: Annotated[str, typer.Option(help="importance (the paper's weighted tokens) or ce (plain cross-entropy).")] = "importance",
    depth: Annotated[int, typer.Option(min=2, help="Candidates per training list.")] = 20,
    pool: Annotated[int, typer.Option(min=2, help="Candidates per query that random lists are drawn from.")] = 100,
    samples: Annotated[int, typer.Option(min=1, help="Lists per query: the first-stage top-depth plus shuffled random subsets.")] = 4,
    extra: Annotated[Optional[list[str]], typer.Option(help="More training data, repeatable: DIR:SPLIT (a dataset; BM25 candidates) or a FlagEmbedding jsonl (query/pos/neg).")] = None,
    folds: Annotated[int, typer.Option(min=0, help="Query-level k-fold: train on all folds but --fold (0: all queries).")] = 0,
    fold: Annotated[int, typer.Option(min=0, help="The held-out fold (with --folds).")] = 0,
    steps: Annotated[int, typer.Option(min=1, help="Optimiser steps.")] = 200,
    accumulation: Annotated[int, typer.Option(min=1, help="Lists per optimiser step (gradient accumulation).")] = 4,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 3e-4,
    lora_rank: Annotated[int, typer.Option(min=1, help="LoRA rank (every linear projection).")] = 16,
    max_passage_tokens: Annotated[int, typer.Option(min=8, help="Passage truncation (tokens).")] = 48,
    separator_weight: Annotated[float, typer.Option(min=0.0, help="Loss weight of the ' >' separators (paper: 1).")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of the folds, sampling and training.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    verbose: Verbose = False,
) -> None:
    """Train the LLM full-ranker (LoRA) on complete listwise labels with the importance-aware loss."""
    from retrieval.data import Dataset, read_run
    from training.listwise import ListwiseTrainer, build_lists

    _logging(verbose)
    _refuse_existing(out, overwrite)
    data = Dataset.load(dataset, split=split, qrels=qrels)
    trainer = ListwiseTrainer(model, loss=loss, depth=depth, max_passage_tokens=max_passage_tokens, lora_rank=lora_rank,
                              learning_rate=lr, steps=steps, accumulation=accumulation,
                              separator_weight=separator_weight, seed=seed)
    lists, used = build_lists(data, read_run(first_stage_run) if first_stage_run else None, extra or [], depth, pool,
                              samples, folds, fold, seed)
    report = trainer.train(lists)
    trainer.save(out, report, data=used, overwrite=overwrite)
    typer.echo(f"wrote {out}: {report['lists']} lists, {report['steps']} steps in {report['wall_seconds']:.0f} s, "
               f"{report['trainable']:,} trainable parameters")


@app.command()
def serve(
    experiment: Annotated[Optional[Path], typer.Option(help="Experiment config (TOML): variants, primary, shadows, A/B, interleaving. Default: one variant serving --pipeline over --dataset.")] = None,
    dataset: Annotated[Optional[Path], typer.Option(help="Corpus to serve (a dataset folder or corpus file); its index is built once and cached. Ignored with --experiment.")] = None,
    pipeline: PipelineOpt = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 8000,
    event_log: Annotated[Optional[Path], typer.Option(help="SQLite event log (WAL). Default: the experiment's, or out/events.db.")] = None,
    verbose: Verbose = False,
) -> None:
    """Serve the search API (FastAPI + uvicorn): /search, /feedback, /variants, /readyz, /metrics, /docs."""
    import uvicorn

    from serving.app import create_app
    from serving.experiment import ExperimentConfig
    from serving.variants import VariantPool

    _logging(verbose)
    if experiment is not None:
        config = ExperimentConfig.load(experiment)
        if event_log is not None:
            config.service.event_log = event_log
    else:
        config = ExperimentConfig.single(dataset or DEFAULT_DATA / "msmarco-dl19", pipeline, event_log)
    # Load and warm before listening, so a bad config or corpus fails here with one error line.
    pool = VariantPool.build(config, progress=True)
    typer.echo(f"serving {', '.join(pool.variants)} on http://{host}:{port} (docs: /docs)", err=True)
    uvicorn.run(create_app(config, experiment, pool), host=host, port=port, log_level="info" if verbose else "warning")


@app.command("ab-report")
def ab_report(
    log: Annotated[Path, typer.Option("--log", help="The service's SQLite event log.")],
    out: Annotated[Optional[Path], typer.Option(help="Folder for report.md, report.json and report.png.")] = None,
    dataset: Annotated[Optional[Path], typer.Option(help="Dataset with queries and qrels: adds nDCG@10 per variant on judged queries.")] = None,
    qrels: Annotated[Optional[str], typer.Option(help="Qrels file (a name in the dataset or a path); default: the split's.")] = None,
) -> None:
    """Per-variant latency, primary-vs-shadow agreement, interleaving wins and (with qrels) nDCG@10."""
    from eval.report import markdown_table
    from retrieval.artifacts import write_text_atomic
    from retrieval.data import Dataset
    from serving.abreport import ABReport

    report = ABReport(log)
    latency, agreement, wins = report.latency(), report.shadow_agreement(), report.interleaving()
    ndcg = None
    if dataset is not None:
        data = Dataset.load(dataset, qrels=qrels, with_corpus=False)
        ndcg = report.ndcg(data.queries, data.qrels)
    sections = [("Latency (ms)", latency, "variant"), ("Primary vs shadow", agreement, "pair"),
                ("Team-draft interleaving", wins, "pair")] + ([("nDCG@10 on judged queries", ndcg, "variant")] if ndcg else [])
    text = "\n\n".join(f"## {title}\n\n{markdown_table(rows, label) if rows else '(none in this log)'}"
                        for title, rows, label in sections) + "\n"
    typer.echo(text)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "report.md", f"# A/B report: {log.name}\n\n{text}")
        write_text_atomic(out / "report.json", json.dumps({"latency": latency, "shadow": agreement,
                                                           "interleaving": wins, "ndcg": ndcg}, indent=2) + "\n")
        report.plot(out / "report.png", latency, wins, ndcg)
        typer.echo(f"wrote {out}/report.md, report.json, report.png", err=True)


@app.command()
def replay(
    dataset: Annotated[Path, typer.Option(help="Dataset whose queries are replayed and whose qrels drive the simulated clicks.")] = DEFAULT_DATA / "msmarco-dl19",
    url: Annotated[str, typer.Option(help="The running service.")] = "http://127.0.0.1:8000",
    users: Annotated[int, typer.Option(min=1, help="Simulated users; each issues every query once.")] = 10,
    k: Annotated[int, typer.Option(min=1, max=100, help="Hits per search.")] = 10,
    qrels: Annotated[Optional[str], typer.Option(help="Qrels file (a name in the dataset or a path).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the click simulation and query order.")] = 0,
) -> None:
    """Drive a running service with a collection's queries and clicks simulated from its qrels."""
    import httpx

    from retrieval.data import Dataset
    from serving.replay import Replayer

    data = Dataset.load(dataset, qrels=qrels, with_corpus=False)
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            counts = Replayer(client, data.queries, data.qrels, k=k, seed=seed).run(users)
    except httpx.HTTPError as exc:
        raise SiftrankError(f"{url}: {exc}") from None
    typer.echo(json.dumps(dict(counts), indent=2))


def _refuse_existing(out: Path, overwrite: bool) -> None:
    """Never replace an artifact unless asked: checked before any work is done."""
    if out.exists() and not overwrite:
        raise SiftrankError(f"{out} already exists (pass --overwrite to replace it)")


def _config(path: Optional[Path], **overrides: Optional[str]):
    """The pipeline config with command-line overrides applied (and validated again)."""
    from retrieval.config import PipelineConfig

    config = PipelineConfig.load(path)
    raw = config.model_dump()
    for key, value in overrides.items():
        if value is None:
            continue
        section = "index" if key in ("kind", "device") else "encoder"
        raw[section]["model" if key == "model" else key] = value
    try:
        return PipelineConfig.model_validate(raw)
    except Exception as exc:  # pydantic ValidationError: a bad --kind or --precision
        raise SiftrankError(f"invalid option: {exc}") from None


def main() -> None:
    """Entry point: run the app, turning bad input into one line and exit status 2."""
    try:
        app()
    except SiftrankError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
