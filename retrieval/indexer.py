"""Encode a corpus into an :class:`~retrieval.index.Index`, with a cache keyed by corpus and encoder.

The cache key is the corpus file's sha256, the encoder's fingerprint and precision, the index kind
and its parameters, so a second evaluation of the same dataset never re-encodes, and a changed corpus or
model never reuses stale vectors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from retrieval.artifacts import cache_dir
from retrieval.data import Dataset
from retrieval.encoder import Encoder
from retrieval.index import Index, default_params

log = logging.getLogger(__name__)
VECTOR_FORMAT = 3  # 3: OpenVINO int8 is NNCF-calibrated. Bump when the way vectors are computed changes, so stale caches are not reused


class Indexer:
    """Builds indexes for datasets with one encoder; ``cached`` reuses earlier builds."""

    def __init__(self, encoder: Encoder, kind: str = "flat", params: dict[str, Any] | None = None,
                 device: str = "auto", progress: bool = True) -> None:
        self.encoder = encoder
        self.kind = kind
        self.params = dict(params or {})
        self.device = device
        self.progress = progress

    def _calibrate(self, dataset: Dataset) -> None:
        """Give the encoder passages of this corpus (evenly spaced) for its speed probe and int8 calibration."""
        if self.encoder.calibration is None:
            texts = dataset.doc_texts()
            self.encoder.calibrate_on(texts[::max(1, len(texts) // 1000)][:1000])

    def build(self, dataset: Dataset) -> Index:
        """Encode every passage of ``dataset`` and index the vectors (timings go in the manifest)."""
        self._calibrate(dataset)
        start = time.perf_counter()
        vectors = self.encoder.encode_documents(dataset.doc_texts(), progress=self.progress)
        encode_s = time.perf_counter() - start
        index = Index.build(vectors, dataset.corpus, self.encoder.identity(), kind=self.kind, device=self.device,
                            params=self.params, data={"corpus": str(dataset.corpus_path), "corpus_sha256": dataset.corpus_digest()})
        index.manifest.metrics = {"encode_seconds": round(encode_s, 2), "passages_per_second": round(len(vectors) / encode_s, 1),
                                  "build_seconds": round(time.perf_counter() - start - encode_s, 2),
                                  "encoder_precision": self.encoder.numerics, "encoder_device": self.encoder.device,
                                  "encoder_choice": self.encoder.choice["reason"]}
        return index

    def cache_key(self, dataset: Dataset) -> str:
        self._calibrate(dataset)  # an auto encoder measures its choice on this corpus's passages
        params = {**default_params(self.kind, len(dataset.corpus)), **self.params}
        # Precision is part of the key: bf16 and fp32 vectors differ slightly, and benchmarks compare them.
        blob = json.dumps([VECTOR_FORMAT, dataset.corpus_digest(), self.encoder.fingerprint, self.encoder.numerics,
                           self.kind, params],
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def cache_path(self, dataset: Dataset, root: Path | None = None) -> Path:
        """Where the cached index of ``dataset`` lives (or will)."""
        return (root or cache_dir("indexes")) / f"{dataset.name}-{self.kind}-{self.cache_key(dataset)}"

    def cached(self, dataset: Dataset, root: Path | None = None) -> Index:
        """The index for ``dataset`` from the cache, built and stored there atomically if missing."""
        path = self.cache_path(dataset, root)
        if path.is_dir():
            log.info("using cached index %s", path)
            return Index.load(path, device=self.device)
        log.info("building index %s", path)
        index = self.build(dataset)
        index.save(path, overwrite=True)
        return index
