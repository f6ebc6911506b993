"""Lineage keys: what makes a build stage's artifact reusable (its parameters, inputs and data digests)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from retrieval.artifacts import MANIFEST


def lineage_key(*parts: Any) -> str:
    """A short stable key over JSON-able parts (parameters, digests, upstream keys)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def read_lineage(path: Path) -> dict[str, Any]:
    """The lineage stored in an artifact's manifest ({}: no artifact, or one without lineage)."""
    manifest = Path(path) / MANIFEST
    if not manifest.is_file():
        return {}
    try:
        found = json.loads(manifest.read_text()).get("lineage", {})
    except (json.JSONDecodeError, AttributeError):
        return {}
    return found if isinstance(found, dict) else {}
