"""Lineage keys: what makes a build stage's artifact reusable (its parameters, inputs and data digests)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from retrieval.artifacts import MANIFEST, Manifest
from retrieval.errors import SiftrankError


def lineage_key(*parts: Any) -> str:
    """A short stable key over JSON-able parts (parameters, digests, upstream keys)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def read_lineage(path: Path) -> dict[str, Any]:
    """The lineage in an artifact's manifest ({}: no artifact, or an unreadable one: it is rebuilt)."""
    if not (Path(path) / MANIFEST).is_file():
        return {}
    try:
        return Manifest.read(path).lineage
    except SiftrankError:
        return {}


def stamp(path: Path, lineage: dict[str, Any]) -> None:
    """Record the lineage in an artifact's manifest (atomically): the last step of every build stage."""
    manifest = Manifest.read(path)
    manifest.lineage = lineage
    manifest.write(Path(path))
