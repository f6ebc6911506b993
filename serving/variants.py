"""The variants a service runs: one pipeline (and micro-batcher) per named variant, loaded and warmed together.

A pool is immutable once built: reloading builds a new pool beside the old one and the service swaps
the reference in one assignment, so a failed reload leaves the old pool serving.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from retrieval.config import PipelineConfig
from retrieval.data import Dataset
from retrieval.errors import SiftrankError
from retrieval.hits import Hit
from retrieval.pipeline import Pipeline
from serving.batcher import MicroBatcher, ProcessSpec
from serving.experiment import ExperimentConfig

log = logging.getLogger(__name__)
WARM_QUERIES = ["what is the boiling point of water", "effects of exercise on health"]


@dataclass
class Variant:
    name: str
    pipeline: Pipeline
    batcher: MicroBatcher
    texts: dict[str, str] | None  # doc id -> text where the pipeline has no dense index (BM25 variants)

    def finish(self, hits: list[Hit], k: int, min_relevance: float | None) -> list[Hit]:
        hits = self.pipeline.finish(hits, k, with_text=self.texts is None, min_relevance=min_relevance)
        if self.texts is not None:
            hits = [h.model_copy(update={"text": self.texts.get(h.id)}) for h in hits]
        return hits


class VariantPool:
    """Every variant of an experiment, built from its pipeline configs and warmed before serving."""

    def __init__(self, config: ExperimentConfig, variants: dict[str, Variant]) -> None:
        self.config, self.variants = config, variants

    @classmethod
    def build(cls, config: ExperimentConfig, progress: bool = False) -> VariantPool:
        """Load (or build and cache) each variant's index, then warm every pipeline with a small batch."""
        datasets: dict[Path, Dataset] = {}
        variants = {}
        experiment = config.experiment
        shadow_only = {s.variant for s in experiment.shadows} - {experiment.primary, *experiment.ab, *experiment.interleave}
        for name, section in config.variants.items():
            pipeline_config = PipelineConfig.load(section.pipeline)
            root = section.data or config.service.data
            dataset = None
            if root is not None:
                dataset = datasets.get(root) or datasets.setdefault(root, Dataset.corpus_only(root))
            if dataset is None and (section.first_stage == "bm25" or pipeline_config.index.path is None):
                raise SiftrankError(f"variant '{name}': no corpus (set [service].data or the variant's data) "
                                    "and no [index].path in its pipeline config")
            pipeline = Pipeline.from_config(pipeline_config, dataset, section.first_stage, progress)
            if pipeline_config.index.depth is None and pipeline.calibrator is None:
                pipeline.depth = config.service.max_k  # the API never returns more than max_k
            texts = None
            if pipeline.index is None and dataset is not None:
                texts = dict(zip(dataset.corpus["id"].to_list(), dataset.doc_texts()))
            if name in shadow_only:
                process = ProcessSpec(section.pipeline, root, section.first_stage, pipeline.depth,
                                      os.environ.get("SIFTRANK_CACHE")) if config.service.shadow_process else None
                batcher = MicroBatcher(pipeline, name, config.service.batch_window_ms, config.service.max_batch,
                                       config.service.shadow_nice, config.service.shadow_threads, process)
            else:
                batcher = MicroBatcher(pipeline, name, config.service.batch_window_ms, config.service.max_batch)
            variants[name] = Variant(name, pipeline, batcher, texts)
        pool = cls(config, variants)
        pool.warm()
        return pool

    def promoted(self, config: ExperimentConfig, name: str) -> VariantPool:
        """The same variants under ``config``, with ``name`` (a former shadow) given a full-priority
        in-process batcher; the shadow batcher is returned to be closed by the caller."""
        variants = dict(self.variants)
        old = variants[name]
        service = config.service
        variants[name] = Variant(name, old.pipeline, MicroBatcher(old.pipeline, name, service.batch_window_ms,
                                                                   service.max_batch), old.texts)
        return VariantPool(config, variants)

    def warm(self) -> None:
        for variant in self.variants.values():
            if variant.pipeline.index is not None:
                variant.pipeline.index.warm()
            variant.batcher.run_batch(WARM_QUERIES)
            log.info("variant %s warmed (%s)", variant.name, " -> ".join(variant.pipeline.stages))

    def __getitem__(self, name: str) -> Variant:
        if name not in self.variants:
            raise KeyError(name)
        return self.variants[name]

    def describe(self) -> list[dict[str, object]]:
        experiment = self.config.experiment
        shadows = {s.variant: s for s in experiment.shadows}
        return [{"name": name, "stages": v.pipeline.stages, "primary": name == experiment.primary,
                 "ab_weight": experiment.ab.get(name), "interleaved": name in experiment.interleave,
                 "shadow_sample_rate": shadows[name].sample_rate if name in shadows else None}
                for name, v in self.variants.items()]

    async def close(self) -> None:
        for variant in self.variants.values():
            await variant.batcher.close()
