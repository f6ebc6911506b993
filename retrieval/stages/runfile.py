"""Run-file first stage: candidates read from a TREC run (the re-ranking setup); unknown queries get none."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from retrieval.artifacts import resolve_path
from retrieval.data import read_run
from retrieval.errors import SiftrankError
from retrieval.hits import Hit
from retrieval.stages.base import FirstStage, QueryBatch, StageParams
from retrieval.stages.context import StageContext


class RunParams(StageParams):
    path: Path  # a TREC run file

    def resolve(self, base: Path) -> RunParams:
        return self.model_copy(update={"path": resolve_path(base, self.path)})


class RunFileRetriever(FirstStage):
    """Each query's candidates from a run, ordered by score (ties by doc id)."""

    kind = "run"
    Params = RunParams

    def __init__(self, run: Mapping[str, Mapping[str, float]], source: str = "run") -> None:
        self.run, self.source = run, source

    @classmethod
    def from_config(cls, params: RunParams, context: StageContext) -> RunFileRetriever:
        if not params.path.is_file():
            raise SiftrankError(f"{params.path}: run file not found")
        return cls(read_run(params.path), str(params.path))

    def retrieve(self, queries: QueryBatch, depth: int) -> list[list[Hit]]:
        out = []
        for q in queries.qids:
            ordered = sorted(self.run.get(q, {}).items(), key=lambda item: (-item[1], item[0]))[:depth]
            out.append([Hit(d, r, float(s)) for r, (d, s) in enumerate(ordered, 1)])
        return out

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.source}
