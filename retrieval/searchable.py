"""The one index protocol every first stage searches through: a single FAISS index (flat, IVF or HNSW,
:class:`~retrieval.index.Index`) or one sharded across Ray actors (:class:`~retrieval.sharded.ShardedIndex`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from retrieval.artifacts import MANIFEST, Manifest

if TYPE_CHECKING:
    from retrieval.docstore import DocStore
    from retrieval.where import Where


class SearchIndex(Protocol):
    """What the pipeline needs of an index: its kind and size, the encoder it was built with, warming up,
    top-k search by inner product (cosine on normalised vectors) and the passages it holds."""

    @property
    def manifest(self) -> Manifest: ...

    @property
    def kind(self) -> str: ...

    def __len__(self) -> int: ...

    def check_encoder(self, identity: dict[str, Any]) -> None: ...

    def warm(self) -> None: ...

    def search(self, queries: np.ndarray, k: int, where: Where | None = None) -> tuple[np.ndarray, list[list[str]]]: ...

    @property
    def store(self) -> DocStore: ...


def open_index(path: Path, device: str = "auto", address: str | None = None) -> SearchIndex:
    """The index directory at ``path``, whichever kind it is (a sharded one is searched on Ray at ``address``)."""
    from retrieval.index import SHARDED_KIND, Index

    if (Path(path) / MANIFEST).is_file() and Manifest.read(path).kind == SHARDED_KIND:
        from retrieval.sharded import ShardedIndex

        return ShardedIndex.load(path, address=address)
    return Index.load(path, device=device)
