"""Artifacts on disk: manifests, atomic writes and the cache folder.

Every artifact siftrank writes (an index, later a pruned model or a calibrator) is a directory with a
``manifest.json``. It is written into a hidden temp directory next to its destination and renamed into
place in one step, so a crash or a bad input never leaves a half-written artifact visible.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from retrieval.errors import SiftrankError

MANIFEST = "manifest.json"


class Manifest(BaseModel):
    """What an artifact is, what made it, from which data, and how well it did at build time."""

    model_config = ConfigDict(extra="allow")

    kind: str
    version: int = 1
    source_model: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    encoder: dict[str, Any] = Field(default_factory=dict)  # the encoder identity an artifact is bound to
    extra: dict[str, Any] = Field(default_factory=dict)
    lineage: dict[str, Any] = Field(default_factory=dict)  # a build stage's: its key, inputs, seconds (training.stages)
    created: str = Field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))

    def write(self, directory: Path) -> None:
        """Write ``manifest.json`` into ``directory`` (atomically)."""
        write_text_atomic(directory / MANIFEST, self.model_dump_json(indent=2) + "\n")

    @classmethod
    def read(cls, directory: Path, kind: str | None = None) -> Manifest:
        """Read and validate ``directory/manifest.json``; with ``kind``, refuse other artifact kinds."""
        path = Path(directory) / MANIFEST
        if not path.is_file():
            raise SiftrankError(f"{directory}: not a siftrank artifact (no {MANIFEST})")
        try:
            manifest = cls.model_validate(json.loads(path.read_text()))
        except (json.JSONDecodeError, ValidationError) as exc:
            raise SiftrankError(f"{path}: invalid manifest ({exc.__class__.__name__}: {exc})") from None
        if kind is not None and manifest.kind != kind:
            raise SiftrankError(f"{directory}: is a '{manifest.kind}' artifact, expected '{kind}'")
        return manifest


@runtime_checkable
class Artifact(Protocol):
    """The one contract of everything siftrank writes (an index, a calibrator, a pruned, fine-tuned or distilled
    encoder, an adapter, a ranker): ``save(path, overwrite)`` makes a directory holding a :class:`Manifest` of
    kind ``artifact_kind``, written through :func:`atomic_dir` (refused over an existing one unless
    ``overwrite``). What went into it (data, metrics, the training report) is the object's own state."""

    artifact_kind: str

    def save(self, path: Path, overwrite: bool = False) -> None: ...


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file through a temp file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp directory; on success it becomes ``path`` in one rename, on error it vanishes.

    An existing ``path`` is refused unless ``overwrite``; then it is replaced only after the new
    directory is complete, so readers see either the old artifact or the new one.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise SiftrankError(f"{path} already exists (pass --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old.{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


DATA_ENV = "SIFTRANK_DATA"
DATA_DEFAULT = "../shared/data"  # relative to the working directory: the shared data beside a checkout
DATA_PREFIX = "data:"


def data_home() -> Path:
    """The data folder every command reads by default: ``$SIFTRANK_DATA``, else ``../shared/data`` from the
    working directory (never a path derived from where siftrank is installed)."""
    return Path(os.environ.get(DATA_ENV) or DATA_DEFAULT).expanduser()


def resolve_path(base: Path, path: Path | str, data_root: Path | None = None) -> Path:
    """A path from a config file made usable wherever the command runs: ``data:NAME`` is NAME under the data
    folder (``data_root``, else :func:`data_home`), an absolute path stays, anything else is under ``base``
    (the config file's folder)."""
    text = str(path)
    if text.startswith(DATA_PREFIX):
        return (Path(data_root) if data_root is not None else data_home()) / text[len(DATA_PREFIX):]
    candidate = Path(text).expanduser()
    return candidate if candidate.is_absolute() else Path(base) / candidate


def cache_dir(sub: str = "") -> Path:
    """siftrank's cache: ``$SIFTRANK_CACHE`` or ``~/.cache/siftrank`` (indexes, converted models)."""
    root = Path(os.environ.get("SIFTRANK_CACHE") or Path.home() / ".cache" / "siftrank").expanduser()
    return root / sub if sub else root
