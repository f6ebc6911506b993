"""Writes to the served corpus: ``POST /documents``, ``DELETE /documents/{id}``, and compaction.

A write is validated against the corpus (metadata types), appended to the durable document log (fsync'd:
after this it survives kill -9), then applied to every live variant on that variant's own worker thread,
where its encoder embeds the new documents between two search batches; the response comes after all of
them, so an acknowledged write is already searchable. Writes are serialised by one lock, which compaction
also takes: compaction folds each variant's delta into a new base and snapshot (atomically) while searches
go on, then truncates the log to what every snapshot holds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from retrieval.doclog import DocumentLog
from retrieval.errors import SiftrankError
from retrieval.live import LiveCorpus, documents_frame
from serving.variants import Variant, VariantPool, snapshot_folder

log = logging.getLogger(__name__)


class DocumentWriter:
    """The one writer of a service's live corpus (every live variant's copy of it)."""

    def __init__(self, path: Path, compact_after: int) -> None:
        self.log, self.path, self.compact_after = DocumentLog(path), Path(path), compact_after
        self.lock = asyncio.Lock()
        self.compacting: asyncio.Task[int] | None = None
        self.last_compaction: dict[str, Any] = {}

    @staticmethod
    def live(pool: VariantPool) -> list[Variant]:
        """The variants whose corpus is live (all in-process variants of a service with a document log)."""
        return [v for v in pool.variants.values() if v.pipeline is not None and v.pipeline.live is not None]

    def primary(self, pool: VariantPool) -> LiveCorpus:
        corpus = pool[pool.config.experiment.primary].pipeline
        if corpus is None or corpus.live is None:
            raise SiftrankError("the primary variant does not serve a live corpus")
        return corpus.live

    async def write(self, pool: VariantPool, upserts: list[dict[str, Any]], deletes: list[str]) -> int:
        """Log the batch durably, apply it to every live variant, and return its version."""
        variants = self.live(pool)
        frame = documents_frame(upserts, self.primary(pool).store.schema)  # a type clash is refused: nothing written
        loop = asyncio.get_running_loop()
        async with self.lock:
            version = await asyncio.to_thread(self.log.append, upserts, deletes)
            await asyncio.gather(*(loop.run_in_executor(v.batcher.executor, _apply, v, version, frame, deletes)
                                   for v in variants))
        if self.compacting is None and any(_pending(v) >= self.compact_after for v in variants):
            self.compacting = loop.create_task(self.compact(pool))
        return version

    async def compact(self, pool: VariantPool) -> int:
        """Snapshot every live variant (its delta folded into a new base), then drop the log they all hold."""
        start = time.perf_counter()
        try:
            async with self.lock:
                versions = [await asyncio.to_thread(_save, v, snapshot_folder(self.path, v.name)) for v in self.live(pool)]
                through = min(versions, default=0)
                dropped = await asyncio.to_thread(self.log.truncate, through)
            self.last_compaction = {"version": through, "operations_dropped": dropped,
                                    "seconds": round(time.perf_counter() - start, 3)}
            log.info("compacted the live corpus at version %d (%d log operations dropped)", through, dropped)
            return through
        finally:
            self.compacting = None

    def close(self) -> None:
        self.log.close()


def _apply(variant: Variant, version: int, frame, deletes: list[str]) -> None:
    assert variant.pipeline is not None and variant.pipeline.live is not None
    variant.pipeline.live.apply(version, frame, deletes)


def _save(variant: Variant, folder: Path) -> int:
    assert variant.pipeline is not None and variant.pipeline.live is not None
    return variant.pipeline.live.save(folder)


def _pending(variant: Variant) -> int:
    assert variant.pipeline is not None and variant.pipeline.live is not None
    state = variant.pipeline.live.state
    return state.delta.height + len(state.deleted)
