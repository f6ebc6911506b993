"""The vector index: FAISS flat, IVF or HNSW over normalised vectors, on GPU when one is present.

One code path for both: the index is built on CPU (training and adding), then, with ``device`` auto or
gpu and ``faiss.get_num_gpus() > 0``, cloned onto all GPUs, sharded, with fp16 storage, for search.
HNSW has no GPU implementation in FAISS and stays on CPU. On disk an index is a directory:
``index.faiss``, ``docs.parquet`` (id, title, text in vector order) and ``manifest.json`` (the
encoder identity it was built with, sizes, parameters), written atomically and loaded lazily.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from retrieval.artifacts import Manifest, atomic_dir
from retrieval.docstore import DocStore
from retrieval.errors import SiftrankError
from retrieval.where import Masks, Where

KINDS: tuple[str, ...] = ("flat", "ivf", "hnsw")
FAISS_FILE, DOCS_FILE = "index.faiss", "docs.parquet"

SHARDED_KIND = "sharded-index"  # the manifest kind of retrieval.sharded.ShardedIndex (Ray; optional)

def gpu_count() -> int:
    """GPUs that FAISS can use (0 with the CPU wheel)."""
    import faiss

    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


def default_params(kind: str, n: int) -> dict[str, Any]:
    """Parameters an IR engineer would start from for ``n`` vectors."""
    if kind == "ivf":
        # ~4*sqrt(n) lists, but at least 39 training points per centroid (FAISS's own floor).
        nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
        return {"nlist": nlist, "nprobe": max(1, min(nlist, 32))}
    if kind == "hnsw":
        return {"M": 32, "ef_construction": 200, "ef_search": 128}
    return {}


def _none(queries: int) -> tuple[np.ndarray, np.ndarray]:
    """No hits for each of ``queries``."""
    return np.zeros((queries, 0), np.float32), np.zeros((queries, 0), np.int64)


def _make_cpu_index(kind: str, dim: int, params: dict[str, Any]):
    import faiss

    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "ivf":
        return faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, int(params["nlist"]), faiss.METRIC_INNER_PRODUCT)
    if kind == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dim, int(params["M"]), faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = int(params["ef_construction"])
        return hnsw
    raise SiftrankError(f"index kind must be one of {', '.join(KINDS)}, not '{kind}'")


def _apply_search_params(index, kind: str, params: dict[str, Any]) -> None:
    import faiss

    if kind == "ivf":
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", int(params["nprobe"]))
    elif kind == "hnsw":
        index.hnsw.efSearch = int(params["ef_search"])


class Index:
    artifact_kind = "index"
    """Top-k inner-product search over string document ids, with the documents kept beside the vectors."""

    def __init__(self, manifest: Manifest, path: Path | None = None, cpu_index=None, docs: pl.DataFrame | None = None,
                 device: str = "auto") -> None:
        self.manifest = manifest
        self.path = path
        self.device = device
        self._cpu_index = cpu_index
        self._search_index = None
        self._docs = docs
        self._id_array: np.ndarray | None = None
        self._masks = Masks()

    # ---- building and persistence -------------------------------------------------------------
    @classmethod
    def build(cls, vectors: np.ndarray, docs: pl.DataFrame, encoder: dict[str, Any], kind: str = "flat",
              device: str = "auto", params: dict[str, Any] | None = None, data: dict[str, Any] | None = None,
              empty: bool = False) -> Index:
        """Build an index over ``vectors`` (row i is ``docs[i]``) made by the encoder ``encoder``; ``empty``: no
        vectors is allowed (a live corpus that documents will be written to; flat or HNSW)."""
        if kind not in KINDS:
            raise SiftrankError(f"index kind must be one of {', '.join(KINDS)}, not '{kind}'")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, int(encoder["dim"])) if empty else \
            np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or (len(vectors) == 0 and not (empty and kind != "ivf")):
            raise SiftrankError("cannot build an index from an empty corpus" + (" (an IVF index needs documents to train on)" if empty else ""))
        if len(vectors) != len(docs):
            raise SiftrankError(f"{len(vectors)} vectors for {len(docs)} documents")
        if docs["id"].n_unique() != len(docs):
            raise SiftrankError("document ids must be unique")
        if vectors.shape[1] != int(encoder["dim"]):
            raise SiftrankError(f"vectors have {vectors.shape[1]} dimensions, the encoder {encoder['dim']}")
        merged = {**default_params(kind, len(vectors)), **(params or {})}
        index = _make_cpu_index(kind, vectors.shape[1], merged)
        if kind == "ivf":
            if len(vectors) < int(merged["nlist"]):
                raise SiftrankError(f"IVF with nlist={merged['nlist']} needs at least that many documents")
            index.train(vectors)
        index.add(vectors)
        manifest = Manifest(kind=cls.artifact_kind, source_model=str(encoder["model"]),
                            parameters={"index_kind": kind, **merged, "dim": vectors.shape[1], "count": len(vectors)},
                            data=data or {}, encoder=encoder)
        columns = ["id", "title", "text", *(c for c in docs.columns if c not in ("id", "title", "text"))]
        return cls(manifest, None, index, docs.select(columns), device)

    def save(self, path: Path, overwrite: bool = False) -> None:
        """Write the index directory atomically (a crash leaves no partial index)."""
        import faiss

        with atomic_dir(Path(path), overwrite=overwrite) as tmp:
            faiss.write_index(self.cpu_index, str(tmp / FAISS_FILE))
            self.docs.write_parquet(tmp / DOCS_FILE)
            self.manifest.write(tmp)
        self.path = Path(path)

    @classmethod
    def load(cls, path: Path, device: str = "auto") -> Index:
        """Open an index directory: the manifest now, the vectors and documents on first use."""
        path = Path(path)
        if not path.is_dir():
            raise SiftrankError(f"{path}: index directory not found")
        manifest = Manifest.read(path, kind=cls.artifact_kind)
        for name in (FAISS_FILE, DOCS_FILE):
            if not (path / name).is_file():
                raise SiftrankError(f"{path}: incomplete index (no {name})")
        return cls(manifest, path, device=device)

    # ---- properties -----------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return str(self.manifest.parameters["index_kind"])

    @property
    def build_params(self) -> dict[str, Any]:
        """The parameters it was built with (nlist, M, ...), to build another index of the same kind."""
        return {k: v for k, v in self.manifest.parameters.items() if k not in ("index_kind", "dim", "count")}

    @property
    def encoder(self) -> dict[str, Any]:
        return dict(getattr(self.manifest, "encoder", {}) or {})

    def __len__(self) -> int:
        return int(self.manifest.parameters["count"])

    @property
    def cpu_index(self):
        if self._cpu_index is None:
            import faiss

            assert self.path is not None
            self._cpu_index = faiss.read_index(str(self.path / FAISS_FILE))
        return self._cpu_index

    @property
    def docs(self) -> pl.DataFrame:
        if self._docs is None:
            assert self.path is not None
            self._docs = pl.read_parquet(self.path / DOCS_FILE)
            if len(self._docs) != len(self):
                raise SiftrankError(f"{self.path}: {len(self._docs)} documents but {len(self)} vectors")
        return self._docs

    @property
    def on_gpu(self) -> bool:
        return self._search_target() == "gpu"

    def check_encoder(self, identity: dict[str, Any]) -> None:
        """Refuse to search with vectors from another model than the one that built the index."""
        built = self.encoder
        if built.get("fingerprint") != identity.get("fingerprint") or int(built.get("dim", -1)) != int(identity["dim"]):
            where = self.path or "this index"
            raise SiftrankError(
                f"{where} was built with encoder '{built.get('model')}' (fingerprint {built.get('fingerprint')}, "
                f"dim {built.get('dim')}) but the query encoder is '{identity.get('model')}' (fingerprint "
                f"{identity.get('fingerprint')}, dim {identity.get('dim')}): rebuild the index or use the same model")

    # ---- search -------------------------------------------------------------------------------------
    def _search_target(self) -> str:
        if self.device == "cpu":
            return "cpu"
        gpus = gpu_count()
        if self.device == "gpu" and gpus == 0:
            raise SiftrankError("index device 'gpu' requested but FAISS sees no GPU (install the gpu extra)")
        return "gpu" if gpus > 0 and self.kind != "hnsw" else "cpu"

    @property
    def search_index(self):
        """The index that answers queries: the CPU index, or its sharded fp16 clone on all GPUs."""
        if self._search_index is None:
            index = self.cpu_index
            _apply_search_params(index, self.kind, self.manifest.parameters)
            if self._search_target() == "gpu":
                import faiss

                options = faiss.GpuMultipleClonerOptions()
                options.shard = True
                options.useFloat16 = True
                # The clone copies nprobe from the CPU index (GpuIndexIVF::copyFrom), set just above.
                index = faiss.index_cpu_to_all_gpus(index, co=options)
            self._search_index = index
        return self._search_index

    def warm(self) -> None:
        """Load vectors and documents now (for a service's readiness probe)."""
        _ = self.search_index, self.docs

    def search(self, queries: np.ndarray, k: int, where: Where | None = None) -> tuple[np.ndarray, list[list[str]]]:
        """Top-``k`` inner products (cosine for normalised vectors) and doc ids for each query row; with ``where``,
        among the matching documents only, and ``min(k, matches)`` of them for every query."""
        if k < 1:
            raise SiftrankError(f"k must be at least 1, not {k}")
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.shape[1] != int(self.manifest.parameters["dim"]):
            raise SiftrankError(f"query vectors have {queries.shape[1]} dimensions, the index {self.manifest.parameters['dim']}")
        if where is None:
            scores, positions = self.search_index.search(queries, min(k, len(self))) if len(self) else _none(len(queries))
        else:
            scores, positions = self._filtered(queries, k, self._masks.get(where, self.docs))
        return scores, self._ids(positions)

    def search_rows(self, queries: np.ndarray, k: int, allowed: np.ndarray, where: Where | None = None) -> tuple[np.ndarray, list[list[str]]]:
        """:meth:`search` among the rows where ``allowed`` (a live corpus's undeleted rows) and ``where`` match."""
        if where is not None:
            allowed = allowed & self._masks.get(where, self.docs)
        scores, positions = self._filtered(np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32), k, allowed)
        return scores, self._ids(positions)

    def _ids(self, positions: np.ndarray) -> list[list[str]]:
        if self._id_array is None:
            self._id_array = self.docs["id"].to_numpy()
        ids = self._id_array
        return [[str(ids[p]) for p in row if p >= 0] for row in positions]

    def _filtered(self, queries: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Search restricted to ``allowed`` rows by a FAISS ID selector (on the CPU index: GPU indexes take none);
        a query that an approximate index (IVF lists not probed, HNSW's graph cut off by the filter) answers with
        fewer than ``min(k, matches)`` hits is answered exactly over the matching vectors instead."""
        import faiss

        matches = np.flatnonzero(allowed)
        want = min(k, len(matches))
        if want == 0:
            return _none(len(queries))
        bitmap = np.packbits(allowed, bitorder="little")
        selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bitmap))
        params = self.manifest.parameters
        kind_options = {"ivf": ("SearchParametersIVF", {"nprobe": int(params.get("nprobe", 1))}),
                        "hnsw": ("SearchParametersHNSW", {"efSearch": max(int(params.get("ef_search", 16)), want)}),
                        "flat": ("SearchParameters", {})}[self.kind]
        options = getattr(faiss, kind_options[0])(sel=selector, **kind_options[1])
        scores, positions = self.cpu_index.search(queries, want, params=options)
        short = np.flatnonzero((positions >= 0).sum(axis=1) < want)
        if len(short):
            vectors = self.vectors(matches)
            exact = queries[short] @ vectors.T
            top = np.argsort(-exact, axis=1, kind="stable")[:, :want]
            scores[short] = np.take_along_axis(exact, top, axis=1)
            positions[short] = matches[top]
        return scores, positions

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """The stored vectors of ``rows`` (an IVF index gets its direct map on first use)."""
        index = self.cpu_index
        if self.kind == "ivf" and index.direct_map.type == 0:
            index.make_direct_map()
        return index.reconstruct_batch(rows.astype(np.int64))

    @functools.cached_property
    def store(self) -> DocStore:
        """The passages kept beside the vectors, by id (display text, the ranker's input)."""
        return DocStore(self.docs, str(self.path or "index"))
