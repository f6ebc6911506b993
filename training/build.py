"""Build a domain pipeline from a recipe: its build stages in registry order (``training.stages``), then
``pipeline.toml``.

Every stage writes its artifact atomically under the output folder (``prune/``, ``finetune/``, ...)
and records its *lineage* in the artifact's manifest: a key over the stage's parameters, the data it
read (file digests) and the keys of the artifacts it was built from. A stage whose artifact carries
the key it would be built with is reused; so a re-run after an interruption (kill -9 included: only
the unfinished stage left a hidden temp folder, removed on the next run) redoes only that stage, and
changing one parameter rebuilds that stage and those after it. One build at a time per folder (a lock).
The stages share one :class:`~training.stages.context.BuildContext`: the dataset, the encoder, its index
and the first stage are loaded once for the whole build.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrieval.artifacts import write_text_atomic
from retrieval.config import PipelineConfig
from retrieval.data import Dataset
from retrieval.errors import SiftrankError
from retrieval.probe import cpu_model
from training.recipe import Recipe
from training.stages.base import BuildStage
from training.stages.context import BuildContext
from training.stages.lineage import read_lineage, stamp
from training.stages.registry import build_stage

if TYPE_CHECKING:
    from training.clicks import ClickLabels

PIPELINE_FILE = "pipeline.toml"
REPORT_FILE = "build.json"
LOCK_FILE = ".build.lock"


@dataclass
class StageRecord:
    """What happened to one stage in a build."""

    name: str
    status: str  # built | reused | prebuilt
    key: str = ""
    seconds: float = 0.0  # building it (for a reused stage: when it was built)
    path: str = ""
    inputs: dict[str, str] = field(default_factory=dict)
    decision: str | None = None  # what the stage chose on validation data, and why (a built or a reused one)


class PipelineBuilder:
    """Runs a :class:`~training.recipe.Recipe` into an output folder (see the module doc)."""

    def __init__(self, recipe: Recipe, out: Path, echo: Callable[[str], None] = print, progress: bool = True) -> None:
        self.recipe, self.out, self.echo, self.progress = recipe, Path(out).absolute(), echo, progress
        self.records: list[StageRecord] = []
        self._clicks: tuple[ClickLabels, Path] | None = None  # labels read from the event log, written by build()
        self.stages: list[BuildStage] = [build_stage(name)(recipe.stage(name)) for name in recipe.active()]

    def check(self) -> BuildContext:
        """Every input the recipe names exists and fits together; raises one SiftrankError otherwise. Writes
        nothing: click labels are read and validated here, written under the build's lock."""
        from training.triplets import judged_queries

        data: Dataset | None = None
        if self.recipe.data.events:
            data = self._click_labels()
            self.recipe = self.recipe.model_copy(update={"data": self.recipe.data.model_copy(
                update={"dataset": str(data.root), "split": "train"})})
        r = self.recipe
        if data is None:
            try:
                data = Dataset.load(Path(r.data.dataset), split=r.data.split, with_corpus=False)
            except SiftrankError as exc:
                raise SiftrankError(f"recipe [data]: {exc} (the domain dataset needs training qrels for split "
                                    f"'{r.data.split}', or an event log as [data] events)") from None
        if len(judged_queries(data)) < 2:
            raise SiftrankError(f"recipe [data]: {data.qrels_path} has fewer than 2 queries with a relevant passage")
        # a click build hands over the labels with the corpus it read; otherwise the keys need no corpus
        ctx = BuildContext(r, self.out, self.echo, self.progress, **({"dataset": data} if self._clicks else {"judgments": data}))
        for stage in self.stages:
            stage.check(ctx)
        return ctx

    def _click_labels(self) -> Dataset:
        """Labels from the recipe's event log (and its dataset's training qrels, if it has a qrels file for the
        split) as the dataset ``out/clicks`` will hold; a bad log fails here, before any training."""
        from training.clicks import ClickLabels

        data = self.recipe.data
        corpus = Dataset.corpus_only(Path(data.dataset))
        judged: Dataset | None = None  # a corpus and a log, no judgments: the deployment this exists for
        if data.judgments and Dataset.qrels_file(corpus.root, data.split) is not None:
            judged = Dataset.load(corpus.root, split=data.split, with_corpus=False)  # malformed qrels: an error
        exclude: set[str] = set()
        if data.held_out:
            exclude = set(Dataset.load(corpus.root, qrels=data.held_out, with_corpus=False).queries.values())
        labels = ClickLabels.from_log(Path(data.events or ""), set(corpus.corpus["id"].to_list()), data.eta,
                                      data.propensity_clip, exclude, data.click_labels)
        if judged is not None:
            labels = labels.with_judgments(judged)
        self._clicks = (labels, corpus.corpus_path)
        c, prop = labels.counts, labels.propensity
        estimated = f"estimated {prop['eta']:.2f} from {prop['swapped_searches']} swapped searches" if prop.get("eta") is not None else "not estimated"
        self.echo(f"      click labels: {c['clicks']} clicks in {c['searches_with_clicks']} of {c['searches']} searches -> "
                  f"{c['queries']} queries, {c['positives']} positives, {c['negatives']} skipped negatives; position "
                  f"bias eta {prop['eta_used']:.2f} ({estimated}); {c['excluded_searches']} searches of held-out queries dropped"
                  + (f"; plus {len(judged.qrels)} judged queries" if judged else ""))
        return labels.dataset(self.out / "clicks", corpus)

    def build(self) -> PipelineConfig:
        """Check, then run every stage (reusing what is up to date); writes pipeline.toml and build.json and
        returns the pipeline config as read back from pipeline.toml (what happened: :attr:`records`)."""
        ctx = self.check()
        self.out.mkdir(parents=True, exist_ok=True)
        with self._lock():
            self._remove_stale()
            if self._clicks:  # the labels every stage trains on (their digest keys the stages)
                labels, corpus_path = self._clicks
                labels.write(self.out / "clicks", corpus_path)
            start = time.perf_counter()
            for number, stage in enumerate(self.stages, 1):
                self.echo(f"[{number}/{len(self.stages)}] {stage.name}")
                path, key = self._stage(stage, ctx)
                stage.use(ctx, path, key)
            config = self._write_pipeline(ctx.config())
            wall = time.perf_counter() - start
            write_text_atomic(self.out / REPORT_FILE, json.dumps({
                "recipe": self.recipe.model_dump(mode="json"), "stages": [asdict(r) for r in self.records],
                "wall_seconds": round(wall, 1), "stage_seconds_from_scratch": round(sum(r.seconds for r in self.records), 1),
                "cpu": cpu_model(), "python": platform.python_version()}, indent=2) + "\n")
            for record in self.records:
                if record.decision:
                    self.echo(f"decision [{record.name}]: {record.decision}")
            built = sum(r.seconds for r in self.records if r.status == "built")
            total = sum(r.seconds for r in self.records)
            self.echo(f"wrote {self.out / PIPELINE_FILE} ({wall:.0f} s now, {built:.0f} s of it building; "
                      f"{total:.0f} s for all stages from scratch)")
        return config

    def _stage(self, stage: BuildStage, ctx: BuildContext) -> tuple[Path, str]:
        """Reuse ``out/<stage>`` when its lineage key is the one it would be built with; else build and stamp it."""
        inputs = stage.lineage_inputs(ctx)
        prebuilt = getattr(stage.params, "artifact", None)
        if prebuilt:
            key = stage.prebuilt_key(Path(prebuilt))
            self.records.append(StageRecord(stage.name, "prebuilt", key, path=prebuilt, inputs=inputs))
            self.echo(f"      prebuilt artifact {prebuilt}")
            return Path(prebuilt), key
        key, target = stage.key(ctx), self.out / stage.name
        found = read_lineage(target)
        if found.get("key") == key:  # seconds: what building it took
            self.records.append(StageRecord(stage.name, "reused", key, found.get("seconds", 0.0), str(target), inputs,
                                            (found.get("details") or {}).get("decision")))
            self.echo(f"      reused {target} (lineage {key} unchanged)")
            return target, key
        begin = time.perf_counter()
        details = stage.run(ctx, target)
        seconds = round(time.perf_counter() - begin, 1)
        stamp(target, {"key": key, "stage": stage.name, "inputs": inputs, "seconds": seconds, "details": details,
                        "recipe": self.recipe.name})
        self.records.append(StageRecord(stage.name, "built", key, seconds, str(target), inputs, details.get("decision")))
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

    def _write_pipeline(self, config: PipelineConfig) -> PipelineConfig:
        """``pipeline.toml``: the config the build reached, serialised by a TOML library with paths relative
        to the folder (so it can move), then read back and validated as eval, search and serve will."""
        import tomli_w

        def rel(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: rel(v) for k, v in value.items()}
            if isinstance(value, str) and Path(value).is_absolute() and Path(value).is_relative_to(self.out):
                return Path(value).relative_to(self.out).as_posix()
            return value

        raw = rel(config.model_dump(mode="json", exclude_none=True))
        header = (f"# Built by `siftrank build` from recipe '{self.recipe.name}' ({self.recipe.data.dataset}).\n"
                  "# Paths are relative to this file.\n")
        write_text_atomic(self.out / PIPELINE_FILE, header + tomli_w.dumps(raw))
        return PipelineConfig.load(self.out / PIPELINE_FILE)  # what eval, search and serve will read
