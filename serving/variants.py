"""The variants a service runs: one pipeline (and micro-batcher) per named variant, loaded and warmed together.

A pool is immutable once built: reloading builds a new pool beside the old one and the service swaps
the reference in one assignment, so a failed reload leaves the old pool serving. A shadow-only variant
that runs in its own process is built only there: the serving process holds its config, not its index.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from retrieval.config import PipelineConfig
from retrieval.data import Dataset
from retrieval.doclog import DocumentLog
from retrieval.errors import SiftrankError
from retrieval.hits import Hit
from retrieval.live import documents_frame
from retrieval.pipeline import Pipeline, relevance_cut
from serving.batcher import MicroBatcher, ProcessSpec
from serving.experiment import ExperimentConfig

log = logging.getLogger(__name__)
WARM_QUERIES = ["what is the boiling point of water", "effects of exercise on health"]


@dataclass
class Variant:
    """A named pipeline behind its batcher; ``pipeline`` is None when it runs in its own process."""

    name: str
    config: PipelineConfig
    batcher: MicroBatcher
    pipeline: Pipeline | None = None

    @property
    def stages(self) -> list[str]:
        return self.pipeline.stages if self.pipeline is not None else self.config.stages()

    @property
    def corpus_version(self) -> int | None:
        """The version of the live corpus this variant searches now (None: its corpus is not live)."""
        live = self.pipeline.live if self.pipeline is not None else None
        return live.state.version if live is not None else None

    @property
    def encoder(self) -> str | None:
        """How this variant encodes queries and passages, and why: with ``backend = "auto"`` the ways timed on
        this CPU and the fastest faithful one kept (None: no encoder, or a variant in its own process)."""
        encoder = self.pipeline.encoder if self.pipeline is not None else None
        if encoder is None:
            return None
        chosen = f"{encoder.backend} {encoder.precision}, queries {encoder.query_precision}"
        return f"{chosen} ({encoder.choice['reason']})"

    def finish(self, hits: list[Hit], k: int, min_relevance: float | None) -> list[Hit]:
        """The top-``k`` with texts (a process-run shadow's are logged, never shown: no texts)."""
        if self.pipeline is not None:
            return self.pipeline.finish(hits, k, with_text=True, min_relevance=min_relevance)
        return relevance_cut(hits, min_relevance, self.config.filter is not None)[:k]


def snapshot_folder(documents_log: Path, variant: str) -> Path:
    """Where a variant's snapshot of the live corpus lies (beside the document log)."""
    return Path(documents_log).with_name(Path(documents_log).name + ".snapshots") / variant


def go_live(pipeline: Pipeline, documents_log: Path, name: str) -> None:
    """Serve the variant's corpus live: its last snapshot (if any) plus every logged write after it."""
    corpus = pipeline.go_live(snapshot_folder(documents_log, name))
    doclog = DocumentLog(documents_log)
    try:
        replayed = 0
        for version, upserts, deletes in doclog.since(corpus.state.version):
            corpus.apply(version, documents_frame(upserts, corpus.store.schema), deletes)
            replayed += 1
    finally:
        doclog.close()
    log.info("variant %s: live corpus at version %d (%d documents, %d batches replayed)", name, corpus.state.version,
             len(corpus.state), replayed)


class VariantPool:
    """Every variant of an experiment, built from its pipeline configs and warmed before serving."""

    def __init__(self, config: ExperimentConfig, variants: dict[str, Variant]) -> None:
        self.config, self.variants = config, variants

    @classmethod
    def build(cls, config: ExperimentConfig, progress: bool = False) -> VariantPool:
        """Load (or build and cache) each variant's index, then warm every pipeline with a small batch."""
        datasets: dict[Path, Dataset] = {}
        variants = {}
        service, experiment = config.service, config.experiment
        shadow_only = {s.variant for s in experiment.shadows} - {experiment.primary, *experiment.ab, *experiment.interleave}
        for name, section in config.variants.items():
            pipeline_config = PipelineConfig.load(section.pipeline)
            root = section.data or service.data
            if root is None and pipeline_config.index.path is None:
                raise SiftrankError(f"variant '{name}': no corpus (set [service].data or the variant's data) "
                                    "and no [index].path in its pipeline config")
            # the API never returns more than max_k: a first stage without its own depth stops there
            depth = None if pipeline_config.first_stage.depth or pipeline_config.filter else service.max_k
            if name in shadow_only and service.shadow_process:
                if service.documents_log is not None:
                    raise SiftrankError(f"variant '{name}': a live corpus ([service].documents_log) needs every variant in "
                                        "the serving process: set [service].shadow_process = false")
                spec = ProcessSpec(section.pipeline, root, depth, os.environ.get("SIFTRANK_CACHE"))
                batcher = MicroBatcher(None, name, service.batch_window_ms, service.max_batch, service.shadow_nice,
                                       service.shadow_threads, spec)
                variants[name] = Variant(name, pipeline_config, batcher)
                continue
            dataset = None
            if root is not None:
                dataset = datasets.get(root) or datasets.setdefault(root, Dataset.corpus_only(root))
            pipeline = Pipeline.from_config(pipeline_config, dataset, progress)
            if service.documents_log is not None:
                go_live(pipeline, service.documents_log, name)
            if name in shadow_only:
                batcher = MicroBatcher(pipeline, name, service.batch_window_ms, service.max_batch, service.shadow_nice,
                                       service.shadow_threads, depth=depth)
            else:
                batcher = MicroBatcher(pipeline, name, service.batch_window_ms, service.max_batch, depth=depth)
            variants[name] = Variant(name, pipeline_config, batcher, pipeline)
        pool = cls(config, variants)
        pool.warm()
        return pool

    def promoted(self, config: ExperimentConfig, name: str) -> VariantPool:
        """The same variants under ``config``, with ``name`` (a former shadow) given a full-priority
        in-process batcher (built here if it ran in its own process); the caller closes the old batcher."""
        variants = dict(self.variants)
        old = variants[name]
        service = config.service
        pipeline = old.pipeline
        if pipeline is None:
            spec = old.batcher.process
            assert spec is not None
            dataset = Dataset.corpus_only(spec.data) if spec.data is not None else None
            pipeline = Pipeline.from_config(old.config, dataset, progress=False)
        batcher = MicroBatcher(pipeline, name, service.batch_window_ms, service.max_batch, depth=old.batcher.run_depth)
        variants[name] = Variant(name, old.config, batcher, pipeline)
        return VariantPool(config, variants)

    def warm(self) -> None:
        for variant in self.variants.values():
            if variant.pipeline is not None:
                variant.pipeline.first_stage.warm()
            variant.batcher.run_batch(WARM_QUERIES)
            log.info("variant %s warmed (%s)", variant.name, " -> ".join(variant.stages))

    def __getitem__(self, name: str) -> Variant:
        if name not in self.variants:
            raise KeyError(name)
        return self.variants[name]

    def describe(self) -> list[dict[str, object]]:
        experiment = self.config.experiment
        shadows = {s.variant: s for s in experiment.shadows}
        return [{"name": name, "stages": v.stages, "primary": name == experiment.primary,
                 "ab_weight": experiment.ab.get(name), "interleaved": name in experiment.interleave,
                 "shadow_sample_rate": shadows[name].sample_rate if name in shadows else None,
                 "own_process": v.pipeline is None, "encoder": v.encoder}
                for name, v in self.variants.items()]

    async def close(self) -> None:
        for variant in self.variants.values():
            await variant.batcher.close()
