"""What the stages of one pipeline share: its config, the dataset, and the encoder, index and document
store, each built on first use and at most once (a hybrid stage and a filter use the same encoder)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from retrieval.errors import SiftrankError
from retrieval.searchable import SearchIndex, open_index

if TYPE_CHECKING:
    from retrieval.config import PipelineConfig
    from retrieval.data import Dataset
    from retrieval.docstore import DocStore
    from retrieval.encoder import Encoder


class StageContext:
    """Lazily built shared resources for the stages of one pipeline."""

    def __init__(self, config: PipelineConfig, dataset: Dataset | None = None, progress: bool = True,
                 encoder: Encoder | None = None, index: SearchIndex | None = None) -> None:
        """``encoder`` and ``index``: ones the caller already holds (a build), used instead of loading them."""
        self.config, self.dataset, self.progress = config, dataset, progress
        if encoder is not None:
            self.__dict__["encoder"] = encoder
        if index is not None:
            index.check_encoder(self.encoder.identity())
            self.__dict__["index"] = index

    @property
    def has_corpus(self) -> bool:
        return self.dataset is not None and self.dataset.corpus.height > 0

    @functools.cached_property
    def encoder(self) -> Encoder:
        return self.config.encoder.build()

    @functools.cached_property
    def index(self) -> SearchIndex:
        """The config's prebuilt index (``[index].path``, one FAISS index or a sharded one), else the dataset's
        cached one (built if missing); refused when it was built by another encoder."""
        section = self.config.index
        index: SearchIndex
        if section.path is not None:
            index = open_index(section.path, section.device, section.ray)
        elif not self.has_corpus:
            raise SiftrankError("no index: set [index].path in the pipeline config or give a dataset")
        else:
            from retrieval.indexer import Indexer

            assert self.dataset is not None
            index = Indexer(self.encoder, section.kind, section.params, section.device, self.progress).cached(self.dataset)
        index.check_encoder(self.encoder.identity())
        return index

    @functools.cached_property
    def store(self) -> DocStore:
        """The one owner of passage texts: the dataset's corpus, else the index's documents."""
        if self.has_corpus:
            assert self.dataset is not None
            return self.dataset.store
        if self.config.index.path is not None or "index" in self.__dict__:
            return self.index.store
        raise SiftrankError("this pipeline reads passages (a ranker, a filter over a run, or texts in results): "
                            "give it a dataset with a corpus or an [index].path")
