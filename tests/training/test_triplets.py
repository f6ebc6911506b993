"""One definition of "relevant" for every trainer and for eval: the dataset's level."""

from __future__ import annotations

from pathlib import Path

from retrieval.data import Dataset, relevant_grade
from training.stages.context import BuildContext
from training.triplets import judged_queries, relevant_docs, training_pairs


def test_graded_qrels_take_grade_2_binary_qrels_grade_1(tiny: Path, tiny_binary: Path) -> None:
    graded, binary = Dataset.load(tiny), Dataset.load(tiny_binary)
    assert relevant_grade(graded.qrels) == 2 and relevant_grade(binary.qrels) == 1
    # q2: d3 is grade 3, d4 grade 1 ("related"): a positive only where grades are binary
    assert relevant_docs(graded.qrels, "q2") == ["d3"] and relevant_docs(binary.qrels, "q2") == ["d3", "d4"]
    assert relevant_docs(graded.qrels, "q1") == ["d1", "d2"]  # best grade first
    assert judged_queries(graded) == ["q1", "q2", "q3"]


def test_triplets_use_the_level_and_never_take_a_related_passage_as_negative(tiny: Path) -> None:
    context = BuildContext.plain("bundled:all-MiniLM-L6-v2", tiny, "test", progress=False)
    data = context.dataset
    candidates = context.ranked_ids(["q1", "q2", "q3"], 12)  # the pipeline's first stage (dense here)
    triplets = training_pairs(data, candidates, ["q1", "q2", "q3"])
    texts = dict(zip(data.corpus["id"].to_list(), data.doc_texts()))
    positives = {(q, p) for q, p, _ in triplets}
    assert len(triplets) == 5  # d1, d2 | d3 | d5, d6: the grade-1 d4 is no positive
    assert (data.queries["q2"], texts["d4"]) not in positives
    doc_of = {t: d for d, t in texts.items()}
    qid_of = {t: q for q, t in data.queries.items()}
    grades = [data.qrels[qid_of[q]].get(doc_of[n], 0) for q, _, n in triplets]
    assert grades and all(g <= 0 for g in grades)  # negatives are judged 0 or unjudged, never "related"
    assert all(len(c) == 12 for c in candidates.values())


def test_training_candidates_come_from_the_pipelines_first_stage_whatever_its_kind(tiny: Path) -> None:
    """BM25 and hybrid first stages give training candidates too (the calibrator's and the ranker's)."""
    context = BuildContext.plain("bundled:all-MiniLM-L6-v2", tiny, "test", progress=False)
    for kind in ("bm25", "hybrid"):
        context.set_first_stage({"kind": kind}, kind)
        batch, hits = context.candidates(["q1", "q2"], 5)
        assert context.first_stage.kind == kind and batch.qids == ["q1", "q2"] and all(0 < len(h) <= 5 for h in hits)


def test_weighted_labels_carry_their_weights_and_add_the_skipped_passages_as_negatives(tmp_path: Path) -> None:
    from dataclasses import replace

    from tests.conftest import write_dataset
    from training.triplets import training_examples

    data = Dataset.load(write_dataset(tmp_path / "tiny"), split="test")
    ranked = {q: list(data.corpus["id"]) for q in data.queries}
    plain, ones = training_examples(data, ranked, ["q1"])
    assert ones == [1.0] * len(plain)
    # as click labels: d2 weighs 3, d1 0.5; d5 was skipped above a click (grade 0)
    clicks = replace(data, qrels={"q1": {"d1": 2, "d2": 2, "d5": 0}}, weights={"q1": {"d1": 0.5, "d2": 3.0}})
    triplets, weights = training_examples(clicks, ranked, ["q1"])
    texts = dict(zip(data.corpus["id"].to_list(), data.doc_texts()))
    assert [t[1] for t in triplets[:2]] == [texts["d2"], texts["d1"]] and weights[:2] == [3.0, 0.5]
    negatives = [t[2] for t in triplets]
    assert texts["d5"] in negatives and weights[negatives.index(texts["d5"])] == 3.0
