"""The experiment config of the search service (TOML, validated): variants, primary, shadows, A/B, interleaving.

    [service]                       # optional; every key has a default
    data = "data:msmarco-dl19"      # dataset a variant's index is built from (cached) without [index].path
    event_log = "out/events.db"     # data:NAME is NAME under $SIFTRANK_DATA (default ../shared/data)

    [variants.dense]                # each variant is a pipeline config (or the defaults: dense), or a folder
    [variants.bm25]                 # holding pipeline.toml (what `siftrank build` writes)
    pipeline = "configs/bm25.toml"

    [experiment]
    name = "dl19"
    primary = "dense"
    ab = { dense = 0.5, bm25 = 0.5 }            # sticky by hash(experiment, user id)
    interleave = ["dense", "bm25"]              # team-draft interleaving ...
    interleave_share = 0.5                      # ... for this share of users (sticky); the others get A/B
    shadows = [{ variant = "bm25", sample_rate = 1.0, timeout_ms = 2000 }]

Paths are relative to the config file (``data:NAME``: under the data folder). `siftrank serve --event-log` and
$SIFTRANK_EVENT_LOG replace the event log. Unknown keys are errors, not silently ignored.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from retrieval.artifacts import resolve_path
from retrieval.config import load_toml


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServiceSection(_Strict):
    data: Path | None = None
    event_log: Path = Path("out/events.db")
    max_query_chars: int = Field(512, ge=1)
    max_k: int = Field(100, ge=1, le=1000)
    max_body_bytes: int = Field(16_384, ge=256)
    batch_window_ms: float = Field(0.0, ge=0.0)  # extra wait for company; 0: batch what queued up while the last batch ran
    max_batch: int = Field(32, ge=1)
    shadow_queue: int = Field(64, ge=1)  # bounded: a full queue drops shadow work (counted), never waits
    shadow_workers: int = Field(1, ge=1)
    shadow_nice: int = Field(19, ge=0, le=19)  # CPU priority of shadow-only variants' worker threads
    shadow_threads: int = Field(1, ge=1)  # torch threads of a shadow-only variant's worker
    shadow_process: bool = True  # shadow-only variants run in their own worker process (no shared GIL)
    # live documents (POST/DELETE /documents): the durable write log; snapshots go beside it (<log>.snapshots/)
    documents_log: Path | None = None
    compact_after: int = Field(5000, ge=1)  # documents written since the last snapshot that start a compaction
    max_documents_bytes: int = Field(4_000_000, ge=1024)  # body limit of POST /documents (search keeps max_body_bytes)
    event_batch: int = Field(256, ge=1)
    event_flush_ms: float = Field(50.0, gt=0.0)


class VariantSection(_Strict):
    pipeline: Path | None = None  # a pipeline config (its first stage included) or a folder with pipeline.toml; None: the defaults
    data: Path | None = None  # overrides [service].data for this variant


class ShadowSection(_Strict):
    variant: str
    sample_rate: float = Field(1.0, ge=0.0, le=1.0)
    timeout_ms: float = Field(2000.0, gt=0.0)


class ExperimentSection(_Strict):
    name: str = "default"
    primary: str
    ab: dict[str, float] = Field(default_factory=dict)
    interleave: list[str] = Field(default_factory=list)
    interleave_share: float = Field(1.0, ge=0.0, le=1.0)  # users (by hash) interleaved; the rest get A/B
    shadows: list[ShadowSection] = Field(default_factory=list)
    # share of searches (not interleaved) whose top hit is swapped with a random lower rank: the intervention
    # that lets a click-trained build estimate position bias (Joachims et al. 2017); it costs those users a
    # worse list, so keep it small
    explore_swaps: float = Field(0.0, ge=0.0, le=0.5)

    @model_validator(mode="after")
    def _shape(self) -> ExperimentSection:
        if self.ab and (any(w < 0 for w in self.ab.values()) or sum(self.ab.values()) <= 0):
            raise ValueError("A/B weights must be >= 0 with a positive sum")
        if self.interleave and len(self.interleave) != 2:
            raise ValueError("interleave needs exactly two variants")
        return self


class ExperimentConfig(_Strict):
    """A validated experiment: every name it mentions is a defined variant."""

    service: ServiceSection = Field(default_factory=ServiceSection)
    variants: dict[str, VariantSection]
    experiment: ExperimentSection

    @model_validator(mode="after")
    def _names(self) -> ExperimentConfig:
        named = [self.experiment.primary, *self.experiment.ab, *self.experiment.interleave,
                 *(s.variant for s in self.experiment.shadows)]
        unknown = sorted({n for n in named if n not in self.variants})
        if unknown:
            raise ValueError(f"unknown variant(s) {', '.join(unknown)}; defined: {', '.join(self.variants)}")
        return self

    @classmethod
    def single(cls, data: Path | None, pipeline: Path | None = None, event_log: Path | None = None) -> ExperimentConfig:
        """One variant ("default") serving one pipeline: what `siftrank serve` runs without an experiment."""
        service = ServiceSection(data=data, **({"event_log": event_log} if event_log else {}))
        return cls(service=service, variants={"default": VariantSection(pipeline=pipeline)},
                   experiment=ExperimentSection(primary="default"))

    @classmethod
    def load(cls, path: Path) -> ExperimentConfig:
        """Read and validate a TOML experiment; relative paths resolve against the file's folder."""
        path = Path(path)
        config = load_toml(cls, path, "experiment config")
        base = path.parent
        service = config.service
        service.event_log = _under(base, service.event_log)  # type: ignore[assignment]
        service.data = _under(base, service.data)  # type: ignore[assignment]  # None stays None
        service.documents_log = _under(base, service.documents_log)  # type: ignore[assignment]
        for variant in config.variants.values():
            variant.pipeline, variant.data = _under(base, variant.pipeline), _under(base, variant.data)
            if variant.pipeline is not None and variant.pipeline.is_dir():
                variant.pipeline = variant.pipeline / "pipeline.toml"
        return config

    def interleaves(self, unit: str) -> bool:
        """Whether this user (or session) sees team-draft interleaved lists (sticky)."""
        experiment = self.experiment
        return bool(experiment.interleave) and bucket(f"{experiment.name}:interleave:{unit}") < experiment.interleave_share

    def swap_rank(self, query_id: str, shown: int) -> int | None:
        """The rank (2..shown) this search's top hit is swapped with, or None (most searches)."""
        share = self.experiment.explore_swaps
        if shown < 2 or bucket(f"{self.experiment.name}:swap:{query_id}") >= share:
            return None
        return 2 + int(bucket(f"{self.experiment.name}:swap-rank:{query_id}") * (shown - 1))

    def assign(self, unit: str) -> str:
        """The A/B variant of a user (or session): sticky, a hash of (experiment, unit) into the weights."""
        weights = self.experiment.ab
        if not weights:
            return self.experiment.primary
        point = bucket(f"{self.experiment.name}:{unit}") * sum(weights.values())
        for name, weight in weights.items():
            point -= weight
            if point < 0:
                return name
        return next(reversed(weights))


def bucket(key: str) -> float:
    """A stable uniform number in [0, 1) for ``key`` (the same in every process and run)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def _under(base: Path, path: Path | None) -> Path | None:
    return None if path is None else resolve_path(base, path)
