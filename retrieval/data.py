"""Test collections on disk: corpus, queries, qrels and TREC runs.

Reads the BEIR layout (``corpus.jsonl[.gz]``, ``queries.jsonl``, ``qrels/<split>.tsv`` or
``qrels.<split>.tsv``, ``runs/*.trec``) and MS MARCO's native tsv files (``collection.tsv``,
``queries.<split>.tsv``, 4-column ``qrels.<split>.tsv``). Every malformed line is reported with its
file and line number, because a silently skipped judgment changes every metric.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from retrieval.corpus import CorpusReader
from retrieval.docstore import DocStore
from retrieval.errors import SiftrankError

Qrels = dict[str, dict[str, int]]
CLICK_LABELS_FILE = "clicks.json"  # in a dataset folder: its qrels are labels from an event log (training.clicks)
Run = dict[str, dict[str, float]]
CORPUS_FILES = ("corpus.jsonl", "corpus.jsonl.gz", "collection.tsv", "collection.tsv.gz", "corpus.parquet", "corpus.csv",
                "corpus.csv.gz", "corpus.tsv", "corpus.tsv.gz")


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Non-blank lines of a text file (gz or plain) with 1-based line numbers."""
    if not path.is_file():
        raise SiftrankError(f"{path}: file not found")
    try:
        with _open_text(path) as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    yield number, line.rstrip("\n")
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise SiftrankError(f"{path}: cannot read ({exc})") from None


def _jsonl(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    for number, line in _lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SiftrankError(f"{path}:{number}: malformed JSON ({exc.msg})") from None
        if not isinstance(record, dict) or any(key not in record for key in required):
            raise SiftrankError(f"{path}:{number}: expected an object with keys {', '.join(required)}")
        yield number, record


def read_corpus(path: Path, reader: CorpusReader | None = None) -> pl.DataFrame:
    """Corpus as a DataFrame ``id, title, text`` plus metadata columns (string ids), from BEIR jsonl, MS MARCO
    tsv, or any JSONL/CSV/TSV/Parquet table (:class:`~retrieval.corpus.CorpusReader`)."""
    return (reader or CorpusReader()).read(Path(path)).docs


def read_queries(path: Path) -> dict[str, str]:
    """Queries ``{id: text}`` from BEIR jsonl or MS MARCO tsv."""
    path = Path(path)
    queries: dict[str, str] = {}
    if ".jsonl" in path.name:
        items = ((n, str(r["_id"]), str(r["text"])) for n, r in _jsonl(path, ("_id", "text")))
    else:
        items = (_tsv_query(path, n, line) for n, line in _lines(path))
    for number, qid, text in items:
        if qid in queries:
            raise SiftrankError(f"{path}:{number}: duplicate query id '{qid}'")
        queries[qid] = text
    if not queries:
        raise SiftrankError(f"{path}: no queries")
    return queries


def _tsv_query(path: Path, number: int, line: str) -> tuple[int, str, str]:
    parts = line.split("\t")
    if len(parts) != 2:
        raise SiftrankError(f"{path}:{number}: expected 'id<TAB>text'")
    return number, parts[0], parts[1]


def relevant_grade(qrels: Qrels) -> int:
    """The grade from which a judgment counts as relevant in binary measures: 2 on graded qrels
    (the TREC DL passage convention), 1 on binary qrels such as BEIR's."""
    top = max((g for docs in qrels.values() for g in docs.values()), default=1)
    return 2 if top >= 2 else 1


def read_qrels(path: Path) -> Qrels:
    """Judgments ``{qid: {docid: grade}}`` from BEIR tsv (with header) or TREC 4-column qrels."""
    path = Path(path)
    qrels: Qrels = {}
    for number, line in _lines(path):
        parts = line.split()
        if len(parts) == 4:
            qid, doc_id, grade = parts[0], parts[2], parts[3]
        elif len(parts) == 3:
            qid, doc_id, grade = parts
        else:
            raise SiftrankError(f"{path}:{number}: expected 'query-id corpus-id score' or 'qid 0 docid grade'")
        try:
            value = int(float(grade))
        except ValueError:
            if number == 1:  # the BEIR header line
                continue
            raise SiftrankError(f"{path}:{number}: grade '{grade}' is not a number") from None
        qrels.setdefault(qid, {})[doc_id] = value
    if not qrels:
        raise SiftrankError(f"{path}: no judgments")
    return qrels


def normalised_query(text: str) -> str:
    """A query text with case and spacing ignored: how the event log's queries are grouped and matched."""
    return " ".join(text.lower().split())


def weights_path(qrels_path: Path) -> Path:
    """Where the training weights of a qrels file lie: ``NAME.weights.tsv`` beside ``NAME.tsv``."""
    return qrels_path.with_name(qrels_path.stem + ".weights.tsv")


def read_weights(path: Path, qrels: Qrels) -> dict[str, dict[str, float]]:
    """Training weights ``{qid: {docid: weight}}`` (tsv with header) of judgments in ``qrels``."""
    weights: dict[str, dict[str, float]] = {}
    for number, line in _lines(path):
        parts = line.split("\t")
        if number == 1 and parts[-1].strip() == "weight":
            continue
        try:
            qid, doc_id, value = parts[0], parts[1], float(parts[2])
        except (IndexError, ValueError):
            raise SiftrankError(f"{path}:{number}: expected 'query-id<TAB>corpus-id<TAB>weight'") from None
        if doc_id not in qrels.get(qid, {}) or not value >= 0:
            raise SiftrankError(f"{path}:{number}: weight {parts[2].strip()} for a judgment the qrels lack, or negative")
        weights.setdefault(qid, {})[doc_id] = value
    return weights


TIE_BREAKS = ("trec_eval", "docid", "rank")


def read_run(path: Path, ties: str = "trec_eval") -> Run:
    """A TREC run ``qid Q0 docid rank score tag`` as ``{qid: {docid: score}}``.

    Runs with rounded scores have ties, and the tie-break decides the metric (DL19's RepLLaMA run:
    nDCG@10 0.7384 under trec_eval's rule, 0.7445 as published). ``trec_eval`` keeps the scores (ties
    broken by descending docid, as trec_eval does); ``docid`` breaks ties by ascending docid and
    ``rank`` by the file's rank column, by rewriting the scores into a strictly decreasing sequence.
    """
    if ties not in TIE_BREAKS:
        raise SiftrankError(f"tie-break must be one of {', '.join(TIE_BREAKS)}, not '{ties}'")
    path = Path(path)
    rows: dict[str, dict[str, tuple[float, int]]] = {}
    for number, line in _lines(path):
        parts = line.split()
        if len(parts) != 6:
            raise SiftrankError(f"{path}:{number}: expected 6 columns 'qid Q0 docid rank score tag'")
        try:
            score, rank = float(parts[4]), int(parts[3])
        except ValueError:
            raise SiftrankError(f"{path}:{number}: rank '{parts[3]}' or score '{parts[4]}' is not a number") from None
        rows.setdefault(parts[0], {})[parts[2]] = (score, rank)
    if not rows:
        raise SiftrankError(f"{path}: empty run")
    if ties == "trec_eval":
        return {q: {d: s for d, (s, _) in docs.items()} for q, docs in rows.items()}
    key = (lambda item: (-item[1][0], item[0])) if ties == "docid" else (lambda item: (-item[1][0], item[1][1]))
    return {q: {d: float(len(docs) - i) for i, (d, _) in enumerate(sorted(docs.items(), key=key))} for q, docs in rows.items()}


def format_run(run: Mapping[str, Mapping[str, float]], tag: str) -> str:
    """TREC run text, documents of each query sorted by descending score (ties by id)."""
    lines: list[str] = []
    for qid in sorted(run):
        ranked = sorted(run[qid].items(), key=lambda item: (-item[1], item[0]))
        lines.extend(f"{qid} Q0 {doc} {rank} {score:.6f} {tag}" for rank, (doc, score) in enumerate(ranked, 1))
    return "\n".join(lines) + "\n"


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes: the identity of a corpus in cache keys and manifests."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _first(directory: Path, names: list[str]) -> Path | None:
    return next((directory / name for name in names if (directory / name).is_file()), None)


@dataclass
class Dataset:
    """A test collection: corpus, queries restricted to the judged ones, qrels, published runs."""

    root: Path
    corpus_path: Path
    corpus: pl.DataFrame
    queries: dict[str, str]
    qrels: Qrels
    qrels_path: Path | None = None
    run_paths: list[Path] = field(default_factory=list)
    #: per-judgment training weights (``<qrels>.weights.tsv`` beside the qrels, e.g. inverse-propensity click
    #: weights); a judgment without one weighs 1
    weights: dict[str, dict[str, float]] = field(default_factory=dict)
    #: the labels judge only what users were shown (a folder of click labels, marked by ``clicks.json``):
    #: rankings are scored condensed to judged documents when choosing on them (``measures.per_query``)
    condensed: bool = False
    #: how the corpus file was read (:attr:`CorpusReader.key`; empty for the defaults), part of its digest
    corpus_options: str = ""
    #: bad corpus rows left out (``on_error="skip"``), each "file:line: why"
    corpus_skipped: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, root: Path, split: str = "test", qrels: str | Path | None = None, with_corpus: bool = True) -> Dataset:
        """Load ``root`` with the qrels of ``split`` or the qrels file ``qrels`` (a path or a name in root).

        Queries are limited to the judged ones (the TREC convention); qrels naming a query the
        queries file lacks are an error, since they would silently score zero.
        """
        root = Path(root)
        if not root.is_dir():
            raise SiftrankError(f"{root}: dataset directory not found")
        corpus_path = _first(root, list(CORPUS_FILES))
        if corpus_path is None:
            raise SiftrankError(f"{root}: no {', '.join(CORPUS_FILES)}")
        query_path = _first(root, ["queries.jsonl", f"queries.{split}.tsv", "queries.tsv"])
        if query_path is None:
            raise SiftrankError(f"{root}: no queries.jsonl or queries.{split}.tsv")
        qrels_path = cls._qrels_path(root, split, qrels)
        judged = read_qrels(qrels_path)
        queries = read_queries(query_path)
        unknown = sorted(set(judged) - set(queries))
        if unknown:
            shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise SiftrankError(f"{qrels_path}: {len(unknown)} judged queries are not in {query_path.name}: {shown}")
        corpus = read_corpus(corpus_path) if with_corpus else pl.DataFrame()
        runs = sorted((root / "runs").glob("*.trec")) if (root / "runs").is_dir() else []
        beside = weights_path(qrels_path)
        weights = read_weights(beside, judged) if beside.is_file() else {}
        return cls(root, corpus_path, corpus, {q: queries[q] for q in queries if q in judged}, judged, qrels_path, runs,
                   weights, (root / CLICK_LABELS_FILE).is_file())

    @classmethod
    def corpus_only(cls, path: Path, reader: CorpusReader | None = None) -> Dataset:
        """A dataset with just a corpus (a corpus file, or a dataset directory holding one), for indexing;
        ``reader`` says which fields hold id, text and title and what a bad row does."""
        path = Path(path)
        if path.is_dir():
            found = _first(path, list(CORPUS_FILES))
            if found is None:
                raise SiftrankError(f"{path}: no {', '.join(CORPUS_FILES)}")
            root, path = path, found
        elif path.is_file():
            root = path.parent
        else:
            raise SiftrankError(f"{path}: corpus not found")
        reader = reader or CorpusReader()
        table = reader.read(path)
        return cls(root, path, table.docs, {}, {}, corpus_options=reader.key, corpus_skipped=table.skipped)

    @staticmethod
    def qrels_file(root: Path, split: str) -> Path | None:
        """The qrels file of ``split`` in the BEIR or MS MARCO layout, None when the dataset has none."""
        return _first(Path(root), [f"qrels/{split}.tsv", f"qrels.{split}.tsv"])

    @staticmethod
    def _qrels_path(root: Path, split: str, qrels: str | Path | None) -> Path:
        if qrels is not None:
            for candidate in (Path(qrels), root / str(qrels), root / "qrels" / str(qrels)):
                if candidate.is_file():
                    return candidate
            raise SiftrankError(f"qrels file '{qrels}' not found (as a path, or inside {root})")
        found = Dataset.qrels_file(root, split)
        if found is None:
            raise SiftrankError(f"{root}: no qrels/{split}.tsv or qrels.{split}.tsv (pick one with --qrels)")
        return found

    @property
    def name(self) -> str:
        return self.root.name

    @functools.cached_property
    def store(self) -> DocStore:
        """The corpus's passages by id (title and body joined, BEIR convention)."""
        return DocStore(self.corpus, str(self.corpus_path))

    def doc_texts(self) -> list[str]:
        """Texts to encode, in corpus order."""
        return self.store.all_texts()

    def corpus_digest(self) -> str:
        digest = file_digest(self.corpus_path)
        return digest if not self.corpus_options else hashlib.sha256(f"{digest} {self.corpus_options}".encode()).hexdigest()


def query_folds(qids: list[str], folds: int, seed: int = 0) -> list[list[str]]:
    """Query-level k-fold split: ``folds`` disjoint parts of a seeded permutation of ``qids``."""
    import numpy as np

    if folds < 2 or folds > len(qids):
        raise SiftrankError(f"folds must be between 2 and the number of queries ({len(qids)}), got {folds}")
    order = np.random.default_rng(seed).permutation(len(qids))
    return [[qids[i] for i in part] for part in np.array_split(order, folds)]

