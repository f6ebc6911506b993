"""Training examples from qrels, with one definition of "relevant" for every trainer and for eval.

Relevant means the dataset's level (:func:`retrieval.data.relevant_grade`): grade ≥ 2 on graded TREC
DL qrels (grade 1 is "related", not relevant), ≥ 1 on binary qrels. Hard negatives are passages judged
0 or unjudged, so a grade-1 passage is neither a positive nor a negative.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from retrieval.data import Dataset, Qrels, relevant_grade
from retrieval.errors import SiftrankError

Triplet = tuple[str, str, str]


def relevant_docs(qrels: Qrels, qid: str, level: int | None = None) -> list[str]:
    """The passages judged relevant to ``qid`` at the dataset's level (or ``level``), best grade first."""
    level = relevant_grade(qrels) if level is None else level
    judged = qrels.get(qid, {})
    return [d for d, g in sorted(judged.items(), key=lambda item: (-item[1], item[0])) if g >= level]


def judged_queries(dataset: Dataset) -> list[str]:
    """Queries (in the dataset's order) with at least one relevant passage: the ones a trainer can use."""
    level = relevant_grade(dataset.qrels)
    return [q for q in dataset.queries if relevant_docs(dataset.qrels, q, level)]


def training_pairs(dataset: Dataset, ranked: Mapping[str, list[str]], qids: list[str],
                   per_query: int | None = None) -> list[Triplet]:
    """(query, positive, hard negative) for every relevant passage of ``qids`` (at most ``per_query``
    each), the negative being the best-ranked candidate (``ranked``: each query's first-stage order) that is
    judged 0 or unjudged."""
    return training_examples(dataset, ranked, qids, per_query)[0]


def training_examples(dataset: Dataset, ranked: Mapping[str, list[str]], qids: list[str],
                      per_query: int | None = None) -> tuple[list[Triplet], list[float]]:
    """:func:`training_pairs` with each triplet's weight (the positive's in ``dataset.weights``, else 1). On a
    weighted dataset (labels from clicks) every passage judged 0 (shown above a click, never clicked) is a
    negative too, paired with the query's heaviest positive."""
    if not qids:
        raise SiftrankError(f"{dataset.root}: no training queries with relevant passages")
    store, level = dataset.store, relevant_grade(dataset.qrels)
    triplets: list[Triplet] = []
    weights: list[float] = []
    for q in qids:
        negative = next((d for d in ranked[q] if dataset.qrels[q].get(d, 0) <= 0), None)
        positives = [d for d in relevant_docs(dataset.qrels, q, level) if d in store]
        if negative is None or not positives:
            continue
        weight = dataset.weights.get(q, {})
        chosen = sorted(positives, key=lambda d: -weight.get(d, 1.0))[:per_query] if weight else positives[:per_query]
        texts = store.texts(chosen + [negative])
        triplets += [(dataset.queries[q], t, texts[-1]) for t in texts[:-1]]
        weights += [weight.get(d, 1.0) for d in chosen]
        if weight:
            skipped = [d for d, g in sorted(dataset.qrels[q].items()) if g <= 0 and d != negative and d in store]
            if skipped:
                query, best = dataset.queries[q], store.texts(chosen[:1])[0]
                triplets += [(query, best, t) for t in store.texts(skipped)]
                weights += [weight.get(chosen[0], 1.0)] * len(skipped)
    return triplets, weights


def general_triplets(root: Path, limit: int = 256) -> list[Triplet]:
    """General-domain triplets from the MS MARCO training samples in ``root`` (msmarco-train-toy)."""
    triplets: list[Triplet] = []
    flag = root / "flagembedding_msmarco_10q_25hardneg.jsonl"
    if flag.is_file():
        for line in flag.read_text().splitlines():
            record = json.loads(line)
            triplets += [(record["query"], record["pos"][0], neg) for neg in record["neg"][:10]]
    splade = root / "splade_toy_triples_100.tsv"
    if splade.is_file():
        triplets += [(a, b, c) for a, b, c, *_ in (line.split("\t") for line in splade.read_text().splitlines()
                                                    if line.count("\t") >= 2)]
    if not triplets:
        raise SiftrankError(f"{root}: no general calibration triplets (expected the msmarco-train-toy files)")
    return triplets[:limit]
