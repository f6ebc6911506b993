from __future__ import annotations

import math

from retrieval.measures import MetricSuite, per_query


def test_graded_qrels_use_rel_2_and_hand_computed_values() -> None:
    qrels = {"q1": {"a": 3, "b": 1, "c": 2}, "q2": {"x": 2}}
    suite = MetricSuite(qrels)
    assert suite.names == ["nDCG@10", "RR(rel=2)@10", "R(rel=2)@100", "R(rel=2)@1000", "AP(rel=2)"]
    run = {"q1": {"b": 3.0, "a": 2.0, "z": 1.0}, "q2": {"y": 1.0}}
    got = suite.evaluate(run)
    # q1: b (grade 1, not relevant at rel=2) then a (grade 3): RR = 1/2; q2 finds nothing.
    assert math.isclose(got["RR(rel=2)@10"], (0.5 + 0.0) / 2)
    # q1 retrieves a but not c: recall 1/2; q2: 0.
    assert math.isclose(got["R(rel=2)@100"], 0.25)
    # nDCG@10 with trec_eval's linear gains: DCG = 1/log2(2) + 3/log2(3); ideal = 3 + 2/log2(3) + 1/2.
    ndcg_q1 = (1 + 3 / math.log2(3)) / (3 + 2 / math.log2(3) + 1 / 2)
    assert math.isclose(got["nDCG@10"], ndcg_q1 / 2, rel_tol=1e-6)


def test_binary_qrels_use_rel_1_and_missing_queries_score_zero() -> None:
    suite = MetricSuite({"q1": {"a": 1}, "q2": {"b": 1}})
    assert suite.names == ["nDCG@10", "RR@10", "R@100", "R@1000", "AP"]
    got = suite.evaluate({"q1": {"a": 1.0}})  # q2 absent from the run: it counts as 0, not skipped
    assert math.isclose(got["RR@10"], 0.5) and math.isclose(got["nDCG@10"], 0.5)
    per_query = suite.per_query({"q1": {"a": 1.0}})
    assert per_query["RR@10"] == {"q1": 1.0, "q2": 0.0}


def test_one_standard_error_prefers_the_simplest_system_within_one_se_of_the_best() -> None:
    from retrieval.measures import one_standard_error

    simple = {f"q{i}": 0.50 + 0.1 * (i % 2) for i in range(20)}
    close = {q: v + (0.05 if i % 2 else -0.04) for i, (q, v) in enumerate(simple.items())}  # noisy, barely better
    far = {q: v + 0.2 for q, v in simple.items()}  # clearly better on every query
    assert one_standard_error({"simple": simple, "close": close}, ["simple", "close"]) == "simple"
    assert one_standard_error({"simple": simple, "close": close, "far": far}, ["simple", "close", "far"]) == "far"


def test_the_default_stays_unless_another_system_beats_it_by_a_paired_test() -> None:
    from retrieval.measures import default_unless_beaten

    default = {f"q{i}": 0.50 + 0.1 * (i % 2) for i in range(20)}
    noisy = {q: v + (0.12 if i % 2 else -0.08) for i, (q, v) in enumerate(default.items())}  # +0.02 mean, p ~ 0.4
    clear = {q: v + 0.05 + 0.01 * (i % 3) for i, (q, v) in enumerate(default.items())}  # better on every query
    clearer = {q: v + 0.06 for q, v in clear.items()}
    assert default_unless_beaten({"default": default, "noisy": noisy}, ["default", "noisy"]) == "default"
    # beaten: among the systems that beat the default, the earliest within one standard error of the best
    assert default_unless_beaten({"default": default, "noisy": noisy, "clear": clear, "clearer": clearer},
                                 ["default", "noisy", "clear", "clearer"]) == "clearer"
    assert default_unless_beaten({"default": default, "clear": clear}, ["default", "clear"]) == "clear"


def test_condensed_lists_score_only_judged_documents() -> None:
    """Labels from clicks judge only what the logging system showed: scored in full, a system that ranks an
    unseen document first loses to the logger; condensed, only the order of the judged documents counts."""
    qrels = {"q": {"clicked": 1, "skipped": 0}}
    logger = {"q": {"skipped": 3.0, "clicked": 2.0, "other": 1.0}}  # the user skipped its first hit
    new = {"q": {"unseen": 3.0, "clicked": 2.0, "skipped": 1.0}}  # a document no user was shown, then the right order
    full = per_query(new, qrels)["q"], per_query(logger, qrels)["q"]
    condensed = per_query(new, qrels, judged_only=True)["q"], per_query(logger, qrels, judged_only=True)["q"]
    assert math.isclose(condensed[0], 1.0) and condensed[0] > condensed[1]
    assert math.isclose(full[0], full[1])  # in full both put the clicked document second: the unseen one counts as not relevant
    assert per_query({"q": {"unseen": 1.0}}, qrels, judged_only=True)["q"] == 0.0
