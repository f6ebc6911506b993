"""A sharded index on Ray: built by Ray Data encoder actors, searched by one Ray actor per shard.

Building: the corpus is cut into ``shards`` contiguous partitions. For each partition, Ray Data maps
batches of passages through a pool of encoder actors (one GPU each where the cluster has GPUs) and
writes ``id, title, text, vector`` as parquet; a Ray task then builds that partition's FAISS index (an
ordinary :class:`~retrieval.index.Index` directory). Everything is written into a hidden staging folder
next to the destination, each shard atomically; only when every shard is complete is the top-level
manifest written and the folder renamed into place. So a failed build leaves no index visible, and
running the same build again resumes: finished shards (same encoder, same partition) are kept.

Searching: :class:`ShardedIndex` starts one actor per shard, sends each query batch to all of them and
merges the per-shard top-k by score. With flat shards the merged top-k is exactly the single-index top-k.
It offers the methods the Pipeline uses (``search``, ``texts``, ``check_encoder``), so pipelines and the
API use it unchanged.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from retrieval.artifacts import Manifest, atomic_dir
from retrieval.data import Dataset
from retrieval.docstore import DocStore
from retrieval.errors import SiftrankError
from retrieval.index import DOCS_FILE, SHARDED_KIND, Index
from retrieval.where import Where

log = logging.getLogger(__name__)


def connect(address: str | None) -> Any:
    """Connect to the Ray cluster at ``address`` (``local`` or None: start or join a local one)."""
    try:
        import ray
    except ImportError:
        raise SiftrankError("Ray is not installed: pip install 'siftrank[ray]'") from None
    if ray.is_initialized():
        return ray
    target = None if address in (None, "", "local") else address
    if target is not None and target != "auto":
        _check_reachable(target)
    try:
        ray.init(address=target, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                 configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise SiftrankError(f"cannot reach the Ray cluster at '{address}': {exc}") from None
    return ray


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a cluster address nobody answers (ray.init would wait for minutes)."""
    import socket

    host_port = address.removeprefix("ray://")
    host, sep, port = host_port.rpartition(":")
    if not sep or not port.isdigit():
        raise SiftrankError(f"Ray address '{address}' is not HOST:PORT (or ray://HOST:PORT, local, auto)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise SiftrankError(f"cannot reach the Ray cluster at '{address}': {exc}") from None


class _EncodeBatches:
    """A Ray Data actor: one Encoder, loaded once, applied to batches of passages."""

    def __init__(self, encoder: dict[str, Any]) -> None:
        from retrieval.config import EncoderSection

        self.encoder = EncoderSection(**encoder).build()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [f"{t} {x}" if t else str(x) for t, x in zip(batch["title"], batch["text"])]
        batch["vector"] = self.encoder.encode_documents(texts).astype(np.float32)
        return batch


def _build_shard(vectors_dir: str, out: str, identity: dict[str, Any], kind: str, params: dict[str, Any],
                 data: dict[str, Any]) -> int:
    """Read one partition's parquet and write its FAISS index directory (atomically)."""
    import polars as pl
    import ray

    rows = list(ray.data.read_parquet(vectors_dir).iter_batches(batch_format="numpy", batch_size=None))
    ids = np.concatenate([b["id"] for b in rows]).astype(str)
    order = np.argsort([int(i) for i in np.concatenate([b["_row"] for b in rows])])  # the corpus order
    vectors = np.concatenate([b["vector"] for b in rows])[order]
    docs = pl.DataFrame({"id": ids[order], "title": np.concatenate([b["title"] for b in rows]).astype(str)[order],
                         "text": np.concatenate([b["text"] for b in rows]).astype(str)[order]})
    index = Index.build(vectors, docs, identity, kind=kind, device="cpu", params=params, data=data)
    index.save(Path(out), overwrite=True)
    return len(index)


class ShardedIndex:
    """A sharded index directory (``manifest.json`` + ``shard-i/`` Index folders) searched through Ray."""

    def __init__(self, manifest: Manifest, path: Path, address: str | None = None) -> None:
        self.manifest, self.path, self.address = manifest, Path(path), address
        self._actors: list[Any] | None = None

    # ---- building -----------------------------------------------------------------------------
    @classmethod
    def build(cls, dataset: Dataset, encoder: dict[str, Any], out: Path, shards: int = 2, kind: str = "flat",
              params: dict[str, Any] | None = None, address: str | None = None, actors: int | None = None,
              batch_size: int = 256, overwrite: bool = False) -> ShardedIndex:
        """Encode ``dataset``'s corpus on Ray and write ``shards`` FAISS shards under ``out``; resumable."""
        from retrieval.config import EncoderSection

        out = Path(out)
        if out.exists() and not overwrite:
            raise SiftrankError(f"{out} already exists (use --overwrite to replace it)")
        if shards < 1 or shards > max(1, len(dataset.corpus)):
            raise SiftrankError(f"shards must be between 1 and the number of passages ({len(dataset.corpus)}), got {shards}")
        spec = EncoderSection(**encoder).model_dump(mode="json")
        identity = EncoderSection(**spec).build().identity()
        ray = connect(address)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        cpus = int(ray.cluster_resources().get("CPU", 1))
        staging = out.parent / f".{out.name}.partial"
        staging.mkdir(parents=True, exist_ok=True)
        corpus = dataset.corpus.with_row_index("_row")
        bounds = np.linspace(0, len(corpus), shards + 1).astype(int)
        data = {"corpus": str(dataset.corpus_path), "corpus_sha256": dataset.corpus_digest()}
        counts = []
        for i in range(shards):
            part = corpus.slice(int(bounds[i]), int(bounds[i + 1] - bounds[i]))
            shard_dir = staging / f"shard-{i}"
            expected = {**data, "rows": [int(bounds[i]), int(bounds[i + 1])]}
            if _complete(shard_dir, identity, expected):
                log.info("shard %d already built: kept", i)
                counts.append(len(part))
                continue
            vectors_dir = staging / f"vectors-{i}"
            shutil.rmtree(vectors_dir, ignore_errors=True)
            _encode_partition(ray, part, spec, vectors_dir, gpus, actors or max(1, gpus or cpus // 2), batch_size)
            counts.append(ray.get(ray.remote(_build_shard).options(num_cpus=1).remote(
                str(vectors_dir), str(shard_dir), identity, kind, params or {}, expected)))
        manifest = Manifest(kind=SHARDED_KIND, source_model=str(identity["model"]), encoder=identity, data=data,
                            parameters={"index_kind": kind, "shards": shards, "count": int(sum(counts)),
                                        "counts": counts, "dim": int(identity["dim"]), **(params or {})})
        manifest.write(staging)
        with atomic_dir(out, overwrite=overwrite) as tmp:
            for i in range(shards):
                os.replace(staging / f"shard-{i}", tmp / f"shard-{i}")
            os.replace(staging / "manifest.json", tmp / "manifest.json")
        shutil.rmtree(staging, ignore_errors=True)
        return cls.load(out, address)

    # ---- loading and searching -------------------------------------------------------------------
    @classmethod
    def load(cls, path: Path, address: str | None = None) -> ShardedIndex:
        """Open a sharded index, checking that every shard agrees with the top-level manifest."""
        path = Path(path)
        manifest = Manifest.read(path, kind=SHARDED_KIND)
        identity = dict(getattr(manifest, "encoder", {}) or {})
        counts = manifest.parameters.get("counts", [])
        for i in range(int(manifest.parameters["shards"])):
            shard = Index.load(path / f"shard-{i}", device="cpu")
            if shard.encoder.get("fingerprint") != identity.get("fingerprint") or shard.kind != manifest.parameters["index_kind"]:
                raise SiftrankError(f"{path}/shard-{i}: built with encoder {shard.encoder.get('fingerprint')} ({shard.kind}), "
                                    f"but the sharded index says {identity.get('fingerprint')} "
                                    f"({manifest.parameters['index_kind']}): mismatched shard")
            if i < len(counts) and len(shard) != counts[i]:
                raise SiftrankError(f"{path}/shard-{i}: {len(shard)} passages, the manifest says {counts[i]}")
        return cls(manifest, path, address)

    @property
    def kind(self) -> str:
        return f"sharded-{self.manifest.parameters['index_kind']}"

    @property
    def encoder(self) -> dict[str, Any]:
        return dict(getattr(self.manifest, "encoder", {}) or {})

    def __len__(self) -> int:
        return int(self.manifest.parameters["count"])

    def check_encoder(self, identity: dict[str, Any]) -> None:
        Index(self.manifest.model_copy(update={"kind": "index"}), self.path).check_encoder(identity)

    @property
    def actors(self) -> list[Any]:
        """One Ray actor per shard, each holding its shard's FAISS index and passages."""
        if self._actors is None:
            ray = connect(self.address)
            shard_actor = ray.remote(num_cpus=0)(_Shard)
            self._actors = [shard_actor.remote(str(self.path / f"shard-{i}"))
                            for i in range(int(self.manifest.parameters["shards"]))]
        return self._actors

    def warm(self) -> None:
        import ray

        ray.get([a.ids.remote() for a in self.actors])

    def search(self, queries: np.ndarray, k: int, where: Where | None = None) -> tuple[np.ndarray, list[list[str]]]:
        """Every shard's top-``k``, merged by score (descending; ties by shard order)."""
        import ray

        if where is not None:
            raise SiftrankError("metadata filters are not supported on a sharded (Ray) index yet: use a single index")
        if k < 1:
            raise SiftrankError(f"k must be at least 1, not {k}")
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        parts = ray.get([a.search.remote(queries, k) for a in self.actors])
        k = min(k, len(self))
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids: list[list[str]] = []
        for row in range(len(queries)):
            merged = [(float(s), d) for shard_scores, shard_ids in parts for s, d in zip(shard_scores[row], shard_ids[row])]
            merged.sort(key=lambda pair: -pair[0])  # stable: equal scores keep shard order
            top = merged[:k]
            scores[row, :len(top)] = [s for s, _ in top]
            ids.append([d for _, d in top])
        return scores, ids

    @functools.cached_property
    def store(self) -> DocStore:
        """Every shard's passages, read from the shards' documents tables (texts are looked up here, not
        on the actors)."""
        shards = int(self.manifest.parameters["shards"])
        return DocStore(pl.concat([pl.read_parquet(self.path / f"shard-{i}" / DOCS_FILE) for i in range(shards)]),
                        str(self.path))

    def close(self) -> None:
        """Stop the shard actors."""
        if self._actors is not None:
            import ray

            for actor in self._actors:
                ray.kill(actor)
            self._actors = None


class _Shard:
    """A Ray actor serving one shard."""

    def __init__(self, path: str) -> None:
        self.index = Index.load(Path(path), device="auto")

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        return self.index.search(queries, k)

    def ids(self) -> list[str]:
        return self.index.docs["id"].to_list()



def _complete(shard_dir: Path, identity: dict[str, Any], expected: dict[str, Any]) -> bool:
    """A finished shard of the same corpus rows, built with the same encoder (so a resumed build keeps it)."""
    try:
        shard = Index.load(shard_dir, device="cpu")
    except SiftrankError:
        return False
    return shard.encoder.get("fingerprint") == identity.get("fingerprint") and shard.manifest.data == expected


def _encode_partition(ray, part, encoder: dict[str, Any], out: Path, gpus: int, actors: int, batch_size: int) -> None:
    """Ray Data: the partition's passages through a pool of encoder actors, written as parquet."""
    dataset = ray.data.from_arrow(part.select("_row", "id", "title", "text").to_arrow())
    encoded = dataset.map_batches(_EncodeBatches, fn_constructor_kwargs={"encoder": encoder}, batch_size=batch_size,
                                  batch_format="numpy", concurrency=actors, num_gpus=1 if gpus else 0)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    encoded.write_parquet(str(tmp))
    os.replace(tmp, out)
