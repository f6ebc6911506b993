"""Scoring runs without a dataset folder, extra measures, and run comparison with Holm-corrected tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.compare import RunComparison
from retrieval.measures import MetricSuite

QRELS = {f"q{i}": {"good": 2, "ok": 1} for i in range(12)}


def write_run(path: Path, top: str) -> Path:
    """Every query ranks ``top`` first, then the other two passages."""
    others = [d for d in ("good", "ok", "bad") if d != top]
    path.write_text("".join(f"q{i} Q0 {d} {r} {10 - r} t\n" for i in range(12) for r, d in enumerate([top, *others], 1)))
    return path


def test_holm_corrects_each_measure_and_a_better_run_is_significant() -> None:
    runs = {"base": {q: {"bad": 3.0, "ok": 2.0, "good": 1.0} for q in QRELS},
            "better": {q: {"good": 3.0, "ok": 2.0, "bad": 1.0} for q in QRELS},
            "same": {q: {"bad": 3.0, "ok": 2.0, "good": 1.0} for q in QRELS}}
    table = RunComparison(MetricSuite(QRELS, ["P@1"]), runs, permutations=2000).table()
    assert table["baseline"] == "base" and "P@1" in table["tests"]
    better, same = table["tests"]["nDCG@10"]["better"], table["tests"]["nDCG@10"]["same"]
    assert better["delta"] > 0 and better["randomisation_p_holm"] < 0.01
    assert same["delta"] == 0 and same["t_test_p_holm"] == 1.0
    assert better["t_test_p_holm"] >= better["t_test_p"]  # Holm never lowers a p-value
    with pytest.raises(ValueError):
        RunComparison(MetricSuite(QRELS), {"base": runs["base"]})


def test_cli_scores_and_compares_runs_with_only_a_qrels_file(tmp_path: Path, cli) -> None:
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{g}\n" for q, j in QRELS.items() for d, g in j.items()))
    base, better = write_run(tmp_path / "base.trec", "bad"), write_run(tmp_path / "better.trec", "good")
    code, out, err = cli("eval", "--run", base, "--qrels", qrels, "-m", "P@1", "--out", tmp_path / "s")
    assert code == 0, err
    scored = json.loads((tmp_path / "s" / "metrics.json").read_text())["runs"]["base.trec"]
    assert scored == {"P@1": 0.0}  # -m chooses the measures
    code, out, err = cli("eval", "--compare", base, better, "--qrels", qrels, "--out", tmp_path / "c")
    assert code == 0, err
    comparison = json.loads((tmp_path / "c" / "metrics.json").read_text())["comparison"]
    assert comparison["tests"]["nDCG@10"]["better.trec"]["delta"] > 0 and "yes" in out
    for args, message in [(["--compare", base], "two or more runs"), (["--run", base, "-m", "Bogus@3"], "neither an ir_measures measure"),
                          ([base], "add --compare"), (["--run", tmp_path / "nope.trec"], "run file not found")]:
        code, _, err = cli("eval", *args, "--qrels", qrels)
        assert code == 2 and message in err and err.count("\n") == 1, err


def test_eval_has_trec_eval_habits(tmp_path: Path, cli) -> None:
    """trec_eval names, -q per-query lines, TSV on a pipe, the qrels named, and no silent zeros."""
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{g}\n" for q, j in QRELS.items() for d, g in j.items()))
    run = write_run(tmp_path / "good.trec", "good")
    code, out, err = cli("eval", "--run", run, "--qrels", qrels, "-m", "ndcg_cut_10", "-m", "map", "-q")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "\tnDCG@10\tAP" and lines[1].startswith("good.trec\t")  # TSV: stdout is not a terminal
    per_query = [line.split("\t") for line in lines[2:]]
    assert {(r[0], r[1]) for r in per_query} == {("good.trec", "nDCG@10"), ("good.trec", "AP")}
    assert {r[2] for r in per_query} == set(QRELS) and f"qrels: {qrels}" in err
    foreign = tmp_path / "foreign.trec"
    foreign.write_text("x1 Q0 d1 1 1.0 t\nx2 Q0 d2 1 1.0 t\n")
    code, out, err = cli("eval", "--run", foreign, "--qrels", qrels)
    assert code == 2 and "none of its 2 query ids is judged" in err and err.startswith("error: ") and not out
    some = tmp_path / "some.trec"
    some.write_text(f"{next(iter(QRELS))} Q0 d1 1 1.0 t\nx9 Q0 d2 1 1.0 t\n")
    code, out, err = cli("eval", "--run", some, "--qrels", qrels)
    assert code == 0 and f"ranks 1 of the {len(QRELS)} judged queries" in err and "1 of its queries are not judged" in err
