"""Recipe section names → build stage classes, in build order. Entries are import paths, loaded on first
use. Adding a build stage is one module and one line here."""

from __future__ import annotations

import functools
import importlib
from typing import Any

BUILD_STAGES = {
    "prune": "training.stages.prune:PruneStage",
    "finetune": "training.stages.finetune:FinetuneStage",
    "compress": "training.stages.compress:CompressStage",
    "index": "training.stages.index:IndexStage",
    "first_stage": "training.stages.first_stage:FirstStageStage",
    "calibrate": "training.stages.calibrate:CalibrateStage",
    "rank": "training.stages.rank:RankStage",
}


@functools.cache
def build_stage(name: str) -> Any:
    """The build stage class registered as ``name``."""
    module, cls = BUILD_STAGES[name].split(":")
    return getattr(importlib.import_module(module), cls)
