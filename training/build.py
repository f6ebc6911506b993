"""Build a domain pipeline from a recipe, stage by stage, with lineage: prune → finetune → index →
calibrate → rank, then ``pipeline.toml``.

Every stage writes its artifact atomically under the output folder (``prune/``, ``finetune/``, ...)
and records its *lineage* in the artifact's manifest: a key over the stage's parameters, the data it
read (file digests) and the keys of the artifacts it was built from. A stage whose artifact carries
the key it would be built with is reused; so a re-run after an interruption (kill -9 included: only
the unfinished stage left a hidden temp folder, removed on the next run) redoes only that stage, and
changing one parameter rebuilds that stage and those after it. One build at a time per folder (a lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from retrieval.artifacts import MANIFEST, Manifest, write_text_atomic
from retrieval.data import Dataset, Run, file_digest
from retrieval.encoder import Encoder, model_fingerprint, resolve_model_path
from retrieval.errors import SiftrankError
from retrieval.probe import cpu_model
from training.recipe import Recipe

PIPELINE_FILE = "pipeline.toml"
REPORT_FILE = "build.json"
LOCK_FILE = ".build.lock"
MIN_HELD_OUT = 20  # fewer held-out queries than this: calibrate on all training queries instead


@dataclass
class StageRecord:
    """What happened to one stage in a build."""

    name: str
    status: str  # built | reused | prebuilt
    key: str = ""
    seconds: float = 0.0  # building it (for a reused stage: when it was built)
    path: str = ""
    inputs: dict[str, str] = field(default_factory=dict)


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def lineage(path: Path) -> dict[str, Any]:
    """The lineage stored in an artifact's manifest ({}: no artifact, or one without lineage)."""
    manifest = Path(path) / MANIFEST
    if not manifest.is_file():
        return {}
    try:
        found = json.loads(manifest.read_text()).get("lineage", {})
    except (json.JSONDecodeError, AttributeError):
        return {}
    return found if isinstance(found, dict) else {}


def lineage_key(path: Path) -> str | None:
    """The lineage key stored in an artifact's manifest (None: no artifact, or one without lineage)."""
    return lineage(path).get("key")


def _stamp(path: Path, lineage: dict[str, Any]) -> None:
    """Add the lineage to an artifact's manifest (atomically): the last step of every stage."""
    manifest = Path(path) / MANIFEST
    raw = json.loads(manifest.read_text())
    raw["lineage"] = lineage
    write_text_atomic(manifest, json.dumps(raw, indent=2) + "\n")


class PipelineBuilder:
    """Runs a :class:`~training.recipe.Recipe` into an output folder (see the module doc)."""

    def __init__(self, recipe: Recipe, out: Path, echo: Callable[[str], None] = print, progress: bool = True) -> None:
        self.recipe, self.out, self.echo, self.progress = recipe, Path(out), echo, progress
        self.records: list[StageRecord] = []
        self._keys: dict[str, str] = {}

    # ---- checks before any work ------------------------------------------------------------------
    def check(self) -> None:
        """Every input the recipe names exists and fits together; raises one SiftrankError otherwise."""
        r = self.recipe
        root = Path(r.data.dataset)
        try:
            self.dataset = Dataset.load(root, split=r.data.split, with_corpus=False)
        except SiftrankError as exc:
            raise SiftrankError(f"recipe [data]: {exc} (the domain dataset needs training qrels for split "
                                f"'{r.data.split}')") from None
        from training.triplets import judged_queries

        if len(judged_queries(self.dataset)) < 2:
            raise SiftrankError(f"recipe [data]: {self.dataset.qrels_path} has fewer than 2 queries with a relevant passage")
        needs_general = (r.prune.enabled and r.prune.artifact is None and r.prune.method in ("gaprune", "fisher-general")) \
            or (r.finetune.enabled and r.finetune.artifact is None and r.finetune.general > 0)
        if needs_general:
            if r.data.general is None:
                raise SiftrankError("recipe: [data] general is needed (GAPrune's general Fisher, or finetune.general > 0)")
            from training.triplets import general_triplets

            general_triplets(Path(r.data.general), 1)  # the folder exists and holds triplets
        self.base_path = resolve_model_path(r.encoder.base)
        self.base_fingerprint = model_fingerprint(self.base_path)
        if r.rank.enabled:
            self._check_rank_model()
        self._check_prebuilt()

    def _check_rank_model(self) -> None:
        model = self.recipe.rank.model
        if model.startswith("bundled:"):
            from retrieval.causal_lm import bundled_gguf

            try:
                bundled_gguf(model.removeprefix("bundled:"))
            except SiftrankError as exc:
                raise SiftrankError(f"recipe [rank] model: {exc}") from None
        elif not (Path(model) / "config.json").is_file():
            raise SiftrankError(f"recipe [rank] model '{model}' is not a local Hugging Face folder with a config.json")

    def _check_prebuilt(self) -> None:
        """Prebuilt artifacts must be of the right kind and built from the model they will sit on."""
        r = self.recipe
        if r.prune.enabled and r.prune.artifact:
            manifest = Manifest.read(Path(r.prune.artifact), kind="pruned-encoder")
            self._same_model(manifest.source_model, "prune", "the recipe's [encoder] base")
        if r.finetune.enabled and r.finetune.artifact:
            path = Path(r.finetune.artifact)
            manifest = Manifest.read(path)
            if manifest.kind not in ("finetuned-encoder", "adapter"):
                raise SiftrankError(f"recipe [finetune] artifact {path}: a '{manifest.kind}' artifact, expected a "
                                    "fine-tuned encoder or an adapter")
            upstream = self._upstream_fingerprint("finetune")
            if upstream is not None and (manifest.encoder or {}).get("fingerprint") != upstream:
                raise SiftrankError(f"recipe [finetune] artifact {path}: built from another base model "
                                    f"({(manifest.encoder or {}).get('model', '?')}) than the one this recipe gives it")
        if r.calibrate.enabled and r.calibrate.artifact:
            Manifest.read(Path(r.calibrate.artifact), kind="calibrator")  # its encoder is checked when loaded
        if r.rank.enabled and r.rank.artifact:
            manifest = Manifest.read(Path(r.rank.artifact), kind="ranker-adapter")
            built_on = (getattr(manifest, "base", None) or {}).get("model", manifest.source_model)
            if built_on != r.rank.model:
                raise SiftrankError(f"recipe [rank] artifact {r.rank.artifact}: trained on {built_on}, not on the "
                                    f"recipe's rank model {r.rank.model}")

    def _same_model(self, source: str | None, stage: str, what: str) -> None:
        try:
            same = source is not None and model_fingerprint(resolve_model_path(source)) == self.base_fingerprint
        except SiftrankError:
            same = False
        if not same:
            raise SiftrankError(f"recipe [{stage}] artifact: built from {source}, not from {what} ({self.recipe.encoder.base})")

    def _upstream_fingerprint(self, stage: str) -> str | None:
        """The fingerprint of the model a prebuilt finetune artifact must sit on, where known before work."""
        r = self.recipe
        if not r.prune.enabled:
            return self.base_fingerprint
        if r.prune.artifact:
            return model_fingerprint(Path(r.prune.artifact))
        path = self.out / "prune"
        if lineage_key(path) == self._prune_key():
            return model_fingerprint(path)
        raise SiftrankError(f"recipe [{stage}] artifact: its base is the pruned model, which this build has not "
                            "made yet: build without the prebuilt artifact first, or give [prune] artifact too")

    # ---- lineage keys --------------------------------------------------------------------------------
    def _data_digest(self) -> str:
        if "data" not in self._keys:
            assert self.dataset.qrels_path is not None
            self._keys["data"] = _key(file_digest(self.dataset.corpus_path), file_digest(self.dataset.qrels_path))
        return self._keys["data"]

    def _general_digest(self) -> str | None:
        folder = self.recipe.data.general
        if folder is None:
            return None
        if "general" not in self._keys:
            files = sorted(p for p in Path(folder).iterdir() if p.is_file())
            self._keys["general"] = _key([(p.name, file_digest(p)) for p in files])
        return self._keys["general"]

    def _prune_key(self) -> str:
        r = self.recipe
        if r.prune.artifact:
            return _key("prune", "prebuilt", model_fingerprint(Path(r.prune.artifact)))
        return _key("prune", r.prune.lineage(), self.base_fingerprint, self._data_digest(), self._general_digest())

    # ---- the build ---------------------------------------------------------------------------------
    def build(self) -> list[StageRecord]:
        """Check, then run every stage (reusing what is up to date); writes pipeline.toml and build.json."""
        self.check()
        self.out.mkdir(parents=True, exist_ok=True)
        with self._lock():
            self._remove_stale()
            start = time.perf_counter()
            stages = self.recipe.active()
            encoder_model, adapter, encoder_key = self.recipe.encoder.base, None, self.base_fingerprint
            self.data = Dataset.load(Path(self.recipe.data.dataset), split=self.recipe.data.split)
            for number, name in enumerate(stages, 1):
                self.echo(f"[{number}/{len(stages)}] {name}")
                if name == "prune":
                    path, key = self._stage("prune", self._prune_key(), {"base": self.base_fingerprint}, self._prune,
                                            prebuilt=self.recipe.prune.artifact)
                    encoder_model, encoder_key = str(path), key
                elif name == "finetune":
                    ft = self.recipe.finetune
                    key = _key("finetune", ft.lineage(), encoder_key, self._data_digest(),
                               self._general_digest() if ft.general else None)
                    path, key = self._stage("finetune", key, {"encoder": encoder_key},
                                            functools.partial(self._finetune, encoder_model), prebuilt=ft.artifact)
                    if Manifest.read(path).kind == "adapter":
                        adapter = str(path)
                    else:
                        encoder_model = str(path)
                    encoder_key = key
                elif name == "index":
                    key = _key("index", self.recipe.index.lineage(), encoder_key, file_digest(self.data.corpus_path))
                    path, index_key = self._stage("index", key, {"encoder": encoder_key},
                                                  functools.partial(self._index, encoder_model, adapter))
                elif name == "calibrate":
                    cal = self.recipe.calibrate
                    held_out = "finetune" in stages  # calibrate on queries the encoder never trained on
                    key = _key("calibrate", cal.lineage(), index_key, self._data_digest(), {"held_out": held_out})
                    self._stage("calibrate", key, {"index": index_key},
                                functools.partial(self._calibrate, encoder_model, adapter, held_out), prebuilt=cal.artifact)
                elif name == "rank":
                    rank = self.recipe.rank
                    key = _key("rank", rank.lineage(), index_key, self._data_digest())
                    self._stage("rank", key, {"index": index_key},
                                functools.partial(self._rank, encoder_model, adapter), prebuilt=rank.artifact)
            self._write_pipeline(encoder_model, adapter)
            wall = time.perf_counter() - start
            write_text_atomic(self.out / REPORT_FILE, json.dumps({
                "recipe": self.recipe.model_dump(mode="json"), "stages": [asdict(r) for r in self.records],
                "wall_seconds": round(wall, 1), "stage_seconds_from_scratch": round(sum(r.seconds for r in self.records), 1),
                "cpu": cpu_model(), "python": platform.python_version()}, indent=2) + "\n")
            built = sum(r.seconds for r in self.records if r.status == "built")
            total = sum(r.seconds for r in self.records)
            self.echo(f"wrote {self.out / PIPELINE_FILE} ({wall:.0f} s now, {built:.0f} s of it building; "
                      f"{total:.0f} s for all stages from scratch)")
        return self.records

    def _stage(self, name: str, key: str, inputs: dict[str, str], make: Callable[[Path], dict[str, Any]],
               prebuilt: str | None = None) -> tuple[Path, str]:
        """Reuse ``out/name`` when its lineage key is ``key``; else build it with ``make`` and stamp it."""
        if prebuilt:
            self.records.append(StageRecord(name, "prebuilt", key, path=prebuilt, inputs=inputs))
            self.echo(f"      prebuilt artifact {prebuilt}")
            return Path(prebuilt), key
        target = self.out / name
        if lineage_key(target) == key:  # seconds: what building it took
            self.records.append(StageRecord(name, "reused", key, lineage(target).get("seconds", 0.0), str(target), inputs))
            self.echo(f"      reused {target} (lineage {key} unchanged)")
            return target, key
        start = time.perf_counter()
        details = make(target)
        seconds = round(time.perf_counter() - start, 1)
        _stamp(target, {"key": key, "stage": name, "inputs": inputs, "seconds": seconds, "details": details,
                        "recipe": self.recipe.name})
        self.records.append(StageRecord(name, "built", key, seconds, str(target), inputs))
        self.echo(f"      built {target} in {seconds:.0f} s")
        return target, key

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        with open(self.out / LOCK_FILE, "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise SiftrankError(f"{self.out}: another build is running in this folder") from None
            yield

    def _remove_stale(self) -> None:
        """Hidden temp folders of a stage that was killed half-way (never a finished artifact)."""
        for stale in self.out.glob(".*.tmp"):
            self.echo(f"      removing {stale.name} (left by an interrupted build)")
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)

    # ---- the stages ----------------------------------------------------------------------------------
    def _prune(self, target: Path) -> dict[str, Any]:
        from training.prune import Pruner, calibration_sets

        p, r = self.recipe.prune, self.recipe
        general = Path(r.data.general) if r.data.general else None
        pruner = Pruner(str(self.base_path), seed=p.seed)
        domain_set, general_set = calibration_sets(str(self.base_path), Path(r.data.dataset), r.data.split, general,
                                                   p.triplets)
        report = pruner.prune(p.method, p.sparsity, domain_set, general_set, "global", p.structured, p.retrain_steps,
                              general_mix=p.general_mix)
        pruner.save(target, {"parameters": report["parameters"], "data": report["data"], "metrics": report["metrics"]},
                    overwrite=True)
        return {"parameters": report["metrics"]["parameters"]}

    def _finetune(self, base: str, target: Path) -> dict[str, Any]:
        from training.finetune import FineTuner
        from training.triplets import general_triplets

        ft, r = self.recipe.finetune, self.recipe
        general = general_triplets(Path(r.data.general), ft.general) if ft.general and r.data.general else []
        best: tuple[float, FineTuner, dict[str, Any]] | None = None
        for seed in ft.seeds:
            tuner = FineTuner(base, ft.method, seed=seed, learning_rate=ft.learning_rate, batch_size=ft.batch_size)
            report = tuner.train(self.data, steps=ft.steps, progress=self.progress, general=general)
            score = tuner.validation_score()
            self.echo(f"      seed {seed}: validation nDCG@10 {score:.4f}")
            if best is None or score > best[0]:
                best = (score, tuner, report)
        assert best is not None
        score, tuner, report = best
        tuner.save(target, report, overwrite=True)
        return {"seed": tuner.seed, "validation_ndcg@10": score, "seeds": ft.seeds, "general_triplets": len(general)}

    def _index(self, model: str, adapter: str | None, target: Path) -> dict[str, Any]:
        from retrieval.indexer import Indexer

        index = Indexer(Encoder(model, adapter=adapter), self.recipe.index.kind, self.recipe.index.params,
                        progress=self.progress).build(self.data)
        index.save(target, overwrite=True)
        return dict(index.manifest.metrics)

    def _searcher(self, model: str, adapter: str | None) -> tuple[Encoder, Any]:
        from retrieval.index import Index

        encoder = Encoder(model, adapter=adapter)
        index = Index.load(self.out / "index")
        index.check_encoder(encoder.identity())
        return encoder, index

    def _calibrate(self, model: str, adapter: str | None, held_out: bool, target: Path) -> dict[str, Any]:
        """The filter, calibrated on queries the encoder has not seen: a fine-tuned encoder scores its own
        training queries' positives higher than new queries', so a threshold chosen on them keeps less
        recall than it promises (measured: 84% instead of 95% on SciFact test). With a finetune stage the
        calibration uses its validation queries (never trained on); otherwise all training queries."""
        from dataclasses import replace

        from training.calibrate import CalibratorTrainer, CandidateSet, feature_flags
        from training.finetune import validation_split

        cal = self.recipe.calibrate
        encoder, index = self._searcher(model, adapter)
        data = self.data
        unseen = validation_split(data)[1] if held_out else []
        if held_out and len(unseen) < MIN_HELD_OUT:
            self.echo(f"      only {len(unseen)} held-out queries: calibrating on all training queries (recall may fall short)")
            held_out = False
        if held_out:
            data = replace(data, queries={q: data.queries[q] for q in unseen}, qrels={q: data.qrels[q] for q in unseen})
        CandidateSet.check_judgments(data)
        candidates = CandidateSet.retrieve(data, encoder, index, cal.k)
        use_embedding, use_stats = feature_flags(cal.features)
        calibrator = CalibratorTrainer(family=cal.family, use_embedding=use_embedding, use_stats=use_stats, seed=cal.seed,
                                       target_recall=cal.target_recall).fit(candidates, encoder.identity())
        calibrator.save(target, overwrite=True, data={"dataset": str(data.root), "qrels": str(data.qrels_path),
                                                      "queries": len(candidates), "k": cal.k,
                                                      "held_out": "finetune validation queries" if held_out else "all"})
        return {"threshold": calibrator.threshold, "chosen": calibrator.extra.get("chosen", {}).get("features")}

    def _rank(self, model: str, adapter: str | None, target: Path) -> dict[str, Any]:
        from training.listwise import ListwiseTrainer

        rank = self.recipe.rank
        encoder, index = self._searcher(model, adapter)
        qids = list(self.data.queries)
        scores, ranked = index.search(encoder.encode_queries([self.data.queries[q] for q in qids]), 50)
        run: Run = {q: dict(zip(docs, map(float, row))) for q, docs, row in zip(qids, ranked, scores)}
        trainer = ListwiseTrainer(rank.model, depth=rank.depth, learning_rate=5e-4, steps=rank.steps, seed=rank.seed)
        report, fusion, used = trainer.fit(self.data, run, [], validation=rank.validation)
        trainer.save(target, report, data=used, overwrite=True)
        return {"fusion": fusion.fusion.to_dict() if fusion else None, "steps": report.get("steps")}

    # ---- the result ------------------------------------------------------------------------------------
    def _write_pipeline(self, model: str, adapter: str | None) -> None:
        """``pipeline.toml`` naming the built artifacts (relative to the folder, so it can move)."""
        from retrieval.config import PipelineConfig

        def rel(path: str) -> str:
            p = Path(path)
            return p.relative_to(self.out).as_posix() if p.is_relative_to(self.out) else str(p)

        r = self.recipe
        spec = model if model == r.encoder.base else rel(model)
        lines = [f"# Built by `siftrank build` from recipe '{r.name}' ({self.recipe.data.dataset}).",
                 "# Paths are relative to this file.", "[encoder]", f'model = "{spec}"']
        if adapter:
            lines.append(f'adapter = "{rel(adapter)}"')
        lines += ["", "[index]", f'kind = "{r.index.kind}"', 'path = "index"', "", "[first_stage]", 'kind = "dense"']
        if r.calibrate.enabled:
            calibrator = r.calibrate.artifact or str(self.out / "calibrate")
            lines += ["", "[filter]", 'kind = "cosine-adapter"', f'calibrator = "{rel(calibrator)}"']
        if r.rank.enabled:
            ranker = r.rank.artifact or str(self.out / "rank")
            lines += ["", "[rerank]", 'kind = "llm"', f'model = "{r.rank.model}"', f'adapter = "{rel(ranker)}"',
                      f"depth = {r.rank.depth}", f'mode = "{r.rank.mode}"', "max_passage_tokens = 48", 'fusion = "auto"']
        text = "\n".join(lines) + "\n"
        write_text_atomic(self.out / PIPELINE_FILE, text)
        PipelineConfig.load(self.out / PIPELINE_FILE)  # what eval, search and serve will read
