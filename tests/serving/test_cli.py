from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_index_build_search_and_eval_end_to_end(tiny: Path, tmp_path: Path, cli) -> None:
    code, out, err = cli("index", "build", "--corpus", tiny, "--out", tmp_path / "idx", "--kind", "hnsw")
    assert code == 0, err
    assert "12 passages, hnsw" in out
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["kind"] == "index" and manifest["encoder"]["dim"] == 384

    code, out, err = cli("search", "why do volcanoes erupt", "--index", tmp_path / "idx", "-k", "2", "--json")
    assert code == 0, err
    hits = [json.loads(line) for line in out.splitlines()]
    assert [h["rank"] for h in hits] == [1, 2] and hits[0]["id"] in {"d3", "d4"} and hits[0]["text"]

    code, out, err = cli("eval", "--dataset", tiny, "--out", tmp_path / "ev")
    assert code == 0, err
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert set(metrics["stages"]["dense"]) == {"nDCG@10", "RR(rel=2)@10", "R(rel=2)@100", "R(rel=2)@1000", "AP(rel=2)"}
    assert metrics["stages"]["dense"]["RR(rel=2)@10"] > 0.5
    assert {"setup_seconds", "pipeline_seconds", "ms_per_query"} <= set(metrics["timings"])
    run_lines = (tmp_path / "ev" / "run.dense.trec").read_text().splitlines()
    assert len(run_lines) == 3 * 12 and run_lines[0].split()[3] == "1"


def test_index_build_from_a_table_with_metadata_and_filtered_search(tmp_path: Path, cli) -> None:
    import polars as pl

    from tests.conftest import DOCS, TOPICS

    table = pl.DataFrame({"key": list(DOCS), "heading": [t for t, _ in DOCS.values()], "abstract": [x for _, x in DOCS.values()],
                          "topic": [TOPICS.get(d, "other") for d in DOCS], "year": [2000 + n for n in range(len(DOCS))]})
    table.write_parquet(tmp_path / "docs.parquet")
    args = ["--corpus", tmp_path / "docs.parquet", "--id-field", "key", "--text-field", "abstract", "--title-field", "heading"]
    code, out, err = cli("index", "build", *args, "--out", tmp_path / "idx")
    assert code == 0, err
    code, out, err = cli("search", "why do volcanoes erupt", "--index", tmp_path / "idx", "-k", "5", "--json",
                         "--filter", '{"topic": {"in": ["food", "bio"]}, "year": {"gte": 2001}}')
    assert code == 0, err
    hits = [json.loads(line) for line in out.splitlines()]
    assert {h["id"] for h in hits} == {"d2", "d5", "d6"} and all(h["metadata"]["topic"] in ("food", "bio") for h in hits)
    table.with_columns(pl.when(pl.col("key") == "d3").then(None).otherwise(pl.col("abstract")).alias("abstract")) \
        .write_csv(tmp_path / "gap.csv")
    code, out, err = cli("index", "build", "--corpus", tmp_path / "gap.csv", "--id-field", "key", "--text-field", "abstract",
                         "--on-error", "skip", "--out", tmp_path / "idx2")
    assert code == 0 and "11 passages" in out and "gap.csv:4: no text ('abstract') for document 'd3'" in err


def test_eval_with_first_stage_run_and_score_run(tiny: Path, tmp_path: Path, cli) -> None:
    run = tmp_path / "given.trec"
    run.write_text("q1 Q0 d1 1 9.0 x\nq1 Q0 d5 2 8.0 x\nq2 Q0 d3 1 5.0 x\n")
    code, out, err = cli("eval", "--dataset", tiny, "--first-stage-run", run, "--out", tmp_path / "rr")
    assert code == 0, err
    metrics = json.loads((tmp_path / "rr" / "metrics.json").read_text())
    assert list(metrics["stages"]) == ["run"]
    assert metrics["stages"]["run"]["RR(rel=2)@10"] == pytest.approx(2 / 3)  # q1, q2 at rank 1; q3 missing
    code, out, err = cli("eval", "--dataset", tiny, "--score-run", run, "--out", tmp_path / "sr")
    assert code == 0, err
    assert json.loads((tmp_path / "sr" / "metrics.json").read_text())["runs"]["given.trec"]["RR(rel=2)@10"] == pytest.approx(2 / 3)
    assert "given.trec" in out


BAD_INPUTS = [
    (["eval", "--dataset", "{tmp}/nope", "--out", "{tmp}/o"], "dataset directory not found"),
    (["eval", "--dataset", "{tiny}", "--qrels", "nope.tsv", "--out", "{tmp}/o"], "qrels file 'nope.tsv' not found"),
    (["eval", "--dataset", "{tiny}", "--model", "{tmp}/no-model", "--out", "{tmp}/o"], "is not a local folder"),
    (["eval", "--dataset", "{tiny}", "--kind", "annoy", "--out", "{tmp}/o"], "invalid option"),
    (["eval", "--dataset", "{tiny}"], "--out is required"),
    (["index", "build", "--corpus", "{tmp}/empty.jsonl", "--out", "{tmp}/idx"], "the corpus is empty"),
    (["index", "build", "--corpus", "{tmp}/bad.jsonl", "--out", "{tmp}/idx"], "bad.jsonl:2: malformed JSON"),
    (["index", "build", "--corpus", "{tmp}/dup.jsonl", "--out", "{tmp}/idx"], "duplicate document id 'a'"),
    (["index", "build", "--corpus", "{tmp}/latin.csv", "--out", "{tmp}/idx"], "latin.csv:2: not UTF-8"),
    (["index", "build", "--corpus", "{tmp}/notext.parquet", "--out", "{tmp}/idx"], "notext.parquet: no text field"),
    (["index", "build", "--corpus", "{tiny}", "--out", "{tmp}/idx", "--on-error", "ignore"], "--on-error must be"),
    (["search", "volcano", "--dataset", "{tiny}", "--filter", "{{oops"], "--filter is not JSON"),
    (["search", "volcano", "--dataset", "{tiny}", "--model", "org/some-model"], "hf download org/some-model --local-dir"),
    (["search", "volcano", "--dataset", "{tiny}", "--filter", '{{"lang": "en"}}'], "unknown field 'lang'"),
    (["search", "x", "--index", "{tmp}/no-index"], "index directory not found"),
    # calibrate: the artifact would go to {tmp}/idx
    (["calibrate", "--dataset", "{tiny}", "--k", "5", "--out", "{tmp}/idx", "--features", "magic"], "--features must be one of"),
    (["calibrate", "--dataset", "{tiny}", "--k", "5", "--out", "{tmp}/idx", "--family", "cubic"], "--family must be one of"),
    (["calibrate", "--dataset", "{tiny}", "--k", "5", "--out", "{tmp}/idx", "--target-recall", "1.5"],
     "target recall must be within (0, 1]"),
    (["calibrate", "--dataset", "{tiny}", "--k", "5", "--out", "{tmp}/idx", "--target-recall", "0.9", "--target-precision", "0.5"],
     "not both"),
    (["calibrate", "--dataset", "{tiny}", "--k", "5", "--out", "{tmp}/idx", "--qrels", "{tmp}/unjudged.tsv"], "no relevant pairs"),
    (["calibrate", "--dataset", "{tiny}", "--k", "5", "--out", "{tmp}/idx", "--qrels", "{tmp}/one.tsv"],
     "calibration needs at least 2 training queries, got 1"),
    # prune: the folder would go to {tmp}/idx
    (["prune", "--dataset", "{tiny}", "--split", "test", "--out", "{tmp}/idx", "--sparsity", "1.0"], "sparsity must be within (0, 1)"),
    (["prune", "--dataset", "{tiny}", "--split", "test", "--out", "{tmp}/idx", "--sparsity", "0"], "sparsity must be within (0, 1)"),
    (["prune", "--dataset", "{tiny}", "--split", "test", "--out", "{tmp}/idx", "--method", "lottery"], "--method must be one of"),
    (["prune", "--dataset", "{tiny}", "--split", "test", "--out", "{tmp}/idx", "--target", r"no\.such\.module"],
     "match no weight matrix"),
    (["prune", "--dataset", "{tiny}", "--split", "test", "--out", "{tmp}/idx", "--general", "{tmp}/empty"],
     "no general calibration triplets"),
    # finetune: the output would go to {tmp}/idx
    (["finetune", "--dataset", "{tiny}", "--split", "test", "--out", "{tmp}/idx", "--method", "prompt"], "method must be one of"),
    (["finetune", "--dataset", "{tiny}", "--split", "test", "--out", "{tmp}/idx", "--max-fraction", "0.01"], "over the budget"),
    (["finetune", "--dataset", "{tmp}/empty", "--out", "{tmp}/idx"], "no corpus"),
    # serving
    (["calibrate", "--dataset", "{tiny}", "--k", "5", "--out", "{tmp}/idx", "--pipeline", "{tmp}/rerank.toml"],
     "calibrate uses only the config's [encoder], [index] and first stage (dense or bm25 or hybrid); it does not run [rerank]"),
    (["index", "build", "--corpus", "{tiny}", "--out", "{tmp}/idx", "--pipeline", "{tmp}/rerank.toml"], "it does not run [rerank]"),
    (["serve", "--experiment", "{tmp}/nope.toml"], "experiment config not found"),
    (["ab-report", "--event-log", "{tmp}/nope.db"], "event log not found"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS)
def test_bad_input_gives_one_clear_error(args: list[str], message: str, tiny: Path, tmp_path: Path, cli) -> None:
    import polars as pl

    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "bad.jsonl").write_text('{"_id": "a", "text": "ok"}\n{"_id": "b", "text": oops}\n')
    (tmp_path / "dup.jsonl").write_text('{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n')
    (tmp_path / "latin.csv").write_bytes("id,text\n1,caf\xe9\n".encode("latin-1"))
    pl.DataFrame({"id": ["a"], "abstract": ["x"]}).write_parquet(tmp_path / "notext.parquet")
    (tmp_path / "unjudged.tsv").write_text("q1\td1\t0\nq2\td3\t0\n")
    (tmp_path / "one.tsv").write_text("q1\td1\t1\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "bm25.toml").write_text('[first_stage]\nkind = "bm25"\n')
    (tmp_path / "rerank.toml").write_text('[rerank]\ndepth = 5\n')
    code, out, err = cli(*[a.format(tmp=tmp_path, tiny=tiny) for a in args])
    assert code == 2
    assert message in err and err.startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "idx").exists() and not (tmp_path / "o" / "metrics.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_index_from_another_model_is_refused(tiny: Path, tmp_path: Path, cli) -> None:
    import shutil

    from retrieval.encoder import resolve_model_path

    other = tmp_path / "other-model"
    shutil.copytree(resolve_model_path("bundled:all-MiniLM-L6-v2"), other)
    (other / "config.json").write_text((other / "config.json").read_text().replace("}", ', "variant": "b"}', 1))
    assert cli("index", "build", "--corpus", tiny, "--out", tmp_path / "idx")[0] == 0
    code, _, err = cli("search", "volcano", "--index", tmp_path / "idx", "--model", other)
    assert code == 2 and "was built with encoder 'bundled:all-MiniLM-L6-v2'" in err and "rebuild the index" in err
    config = tmp_path / "pipe.toml"
    config.write_text(f'[encoder]\nmodel = "{other}"\n[index]\npath = "{tmp_path / "idx"}"\n')
    code, _, err = cli("eval", "--dataset", tiny, "--pipeline", config, "--out", tmp_path / "o")
    assert code == 2 and "rebuild the index" in err and not (tmp_path / "o" / "metrics.json").exists()


def test_installed_console_script_prints_no_traceback(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "siftrank"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "serving.cli"]
    result = subprocess.run([*command, "eval", "--dataset", str(tmp_path / "missing"), "--out", str(tmp_path / "o")],
                            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error:") and "Traceback" not in result.stderr


def test_calibrate_then_evaluate_with_the_filter_stage(tiny: Path, tmp_path: Path, cli) -> None:
    code, out, err = cli("calibrate", "--dataset", tiny, "--split", "test", "--k", "12", "--out", tmp_path / "cal")
    assert code == 0, err
    manifest = json.loads((tmp_path / "cal" / "manifest.json").read_text())
    assert manifest["kind"] == "calibrator" and manifest["parameters"]["k"] == 12
    assert 0.0 <= manifest["parameters"]["threshold"] <= 1.0
    config = tmp_path / "pipe.toml"
    config.write_text('[filter]\ncalibrator = "cal"\n')  # relative to the config file
    code, out, err = cli("eval", "--dataset", tiny, "--pipeline", config, "--out", tmp_path / "ev")
    assert code == 0, err
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert list(metrics["stages"]) == ["dense", "filter"]
    filt = metrics["stages"]["filter"]
    assert {"PR-AUC", "P@R95", "filter_rate", "ECE", "kept_per_query", "nDCG@10"} <= set(filt)
    assert set(filt["baselines"]) == {"raw_cosine", "platt", "minmax", "zscore", "top_k"}
    assert filt["baselines"]["raw_cosine"]["ECE"] is None and filt["baselines"]["platt"]["ECE"] is not None
    kept = (tmp_path / "ev" / "run.filter.trec").read_text().splitlines()
    assert len(kept) == round(filt["kept_per_query"] * 3)
    assert "relevance filter" in err and "\nfilter\t" in out  # not a terminal: the title on stderr, TSV rows


def test_calibrate_on_a_bm25_first_stage_then_filter_it(tiny: Path, tmp_path: Path, cli) -> None:
    """The filter is calibrated on the candidates of the config's own first stage, whatever its kind."""
    (tmp_path / "bm25.toml").write_text('[first_stage]\nkind = "bm25"\n')
    code, _, err = cli("calibrate", "--dataset", tiny, "--split", "test", "--k", "6", "--features", "global",
                       "--pipeline", tmp_path / "bm25.toml", "--out", tmp_path / "cal")
    assert code == 0, err
    config = tmp_path / "pipe.toml"
    config.write_text('[first_stage]\nkind = "bm25"\n\n[filter]\ncalibrator = "cal"\n')
    code, _, err = cli("eval", "--dataset", tiny, "--pipeline", config, "--out", tmp_path / "ev")
    assert code == 0, err
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert list(metrics["stages"]) == ["bm25", "filter"] and 0 < metrics["stages"]["filter"]["kept_per_query"] <= 6


def test_filter_config_errors(tiny: Path, tmp_path: Path, cli) -> None:
    config = tmp_path / "pipe.toml"
    config.write_text('[filter]\ncalibrator = "cal"\nthreshold = 1.5\n')
    code, _, err = cli("eval", "--dataset", tiny, "--pipeline", config, "--out", tmp_path / "ev")
    assert code == 2 and "filter: threshold: Input should be less than or equal to 1" in err
    config.write_text('[filter]\ncalibrator = "missing"\n')
    code, _, err = cli("eval", "--dataset", tiny, "--pipeline", config, "--out", tmp_path / "ev")
    assert code == 2 and "calibrator directory not found" in err
    assert cli("calibrate", "--dataset", tiny, "--split", "test", "--k", "12", "--out", tmp_path / "cal")[0] == 0
    config.write_text('[first_stage]\ndepth = 50\n[filter]\ncalibrator = "cal"\n')
    code, _, err = cli("eval", "--dataset", tiny, "--pipeline", config, "--out", tmp_path / "ev")
    assert code == 2 and "trained on top-12 candidates" in err


def test_prune_writes_a_loadable_sentence_transformers_folder(tiny: Path, tmp_path: Path, cli) -> None:
    general = tmp_path / "general"
    general.mkdir()
    (general / "splade_toy_triples_100.tsv").write_text(
        "how long is a football match\tA football match lasts ninety minutes.\tLava flows are hazards.\n"
        "what is python\tPython is a programming language.\tSourdough uses a starter.\n")
    code, out, err = cli("prune", "--dataset", tiny, "--split", "test", "--general", general, "--sparsity", "0.3",
                         "--retrain-steps", "1", "--out", tmp_path / "pruned")
    assert code == 0, err
    manifest = json.loads((tmp_path / "pruned" / "manifest.json").read_text())
    assert manifest["kind"] == "pruned-encoder" and manifest["parameters"]["method"] == "gaprune"
    assert manifest["data"] == {"domain_triplets": 3, "general_triplets": 2}
    assert -1.0 <= manifest["metrics"]["spearman_dai_vs_magnitude"] < 1.0
    config = tmp_path / "pipe.toml"
    config.write_text(f'[encoder]\nmodel = "{tmp_path / "pruned"}"\n')
    code, _, err = cli("eval", "--dataset", tiny, "--pipeline", config, "--out", tmp_path / "ev")
    assert code == 0, err  # the pruned folder plugs into the pipeline like any encoder


def test_distil_writes_a_smaller_encoder_that_plugs_into_the_pipeline(tiny: Path, tmp_path: Path, cli) -> None:
    code, out, err = cli("distil", "--corpus", tiny, "--sparsity", "0.5", "--batch-size", "4", "--epochs", "0.5",
                         "--out", tmp_path / "small")
    assert code == 0, err
    manifest = json.loads((tmp_path / "small" / "manifest.json").read_text())
    assert manifest["metrics"]["intermediate_size"] == 768 and manifest["parameters"]["loss"].endswith("token states")
    config = tmp_path / "pipe.toml"
    config.write_text(f'[encoder]\nmodel = "{tmp_path / "small"}"\n')
    code, _, err = cli("eval", "--dataset", tiny, "--pipeline", config, "--out", tmp_path / "ev")
    assert code == 0, err
    code, _, err = cli("distil", "--corpus", tiny, "--loss", "kl", "--out", tmp_path / "other")
    assert code == 2 and "unknown distillation loss" in err and not (tmp_path / "other").exists()


def test_train_ranker_then_rerank_a_given_run(tiny: Path, tiny_llm: Path, tmp_path: Path, cli) -> None:
    """train-ranker writes an adapter; eval re-ranks a first-stage run with it and reports the cost."""
    flags = ["--dataset", tiny, "--split", "test", "--model", tiny_llm, "--out", tmp_path / "ranker", "--depth", "4", "--pool", "6",
             "--samples", "2", "--steps", "2", "--accumulation", "1", "--folds", "3", "--fold", "1"]
    code, out, err = cli("train-ranker", *flags)  # 2 training queries: too few for the default validation split
    assert code == 2 and "validation split needs at least 4" in err and not (tmp_path / "ranker").exists()
    code, out, err = cli("train-ranker", *flags, "--validation", "0")
    assert code == 0, err
    manifest = json.loads((tmp_path / "ranker" / "manifest.json").read_text())
    assert manifest["data"]["held_out"] and manifest["data"]["train_queries"] == 2
    assert "fusion" not in manifest["parameters"]  # no validation queries, no weight: the LLM's own order
    config = tmp_path / "rerank.toml"
    config.write_text(f'[rerank]\nmodel = "{tiny_llm}"\nadapter = "ranker"\ndepth = 3\nmode = "first-token"\n')
    run = tmp_path / "given.trec"
    run.write_text("q1 Q0 d5 1 9.0 x\nq1 Q0 d2 2 8.0 x\nq1 Q0 d1 3 7.0 x\nq1 Q0 d9 4 6.0 x\nq2 Q0 d3 1 5.0 x\n")
    code, out, err = cli("eval", "--dataset", tiny, "--first-stage-run", run, "--pipeline", config, "--out", tmp_path / "ev")
    assert code == 0, err
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert list(metrics["stages"]) == ["run", "rerank"]
    cost = metrics["stages"]["rerank"]
    assert cost["input_tokens_per_query"] > 0 and cost["output_tokens_per_query"] == 0 and cost["parse_failures"] == 0
    assert {"seconds_per_query", "nDCG@10"} <= set(cost) and metrics["pipeline"]["rerank"]["mode"] == "first-token"
    reranked = (tmp_path / "ev" / "run.rerank.trec").read_text().splitlines()
    q1 = [line.split() for line in reranked if line.startswith("q1 ")]
    assert {r[2] for r in q1[:3]} == {"d5", "d2", "d1"} and q1[3][2] == "d9"  # only the top 3 are re-ordered
    assert "ranker:" in out

    config.write_text(f'[rerank]\nmodel = "{tiny_llm}"\nadapter = "ranker"\ndepth = 3\nmode = "first-token"\n'
                      'fusion = "interpolate"\nfusion_weight = 0.5\n')
    code, out, err = cli("eval", "--dataset", tiny, "--first-stage-run", run, "--pipeline", config, "--out", tmp_path / "fused")
    assert code == 0, err
    metrics = json.loads((tmp_path / "fused" / "metrics.json").read_text())
    assert list(metrics["stages"]) == ["run", "rerank", "fused"] and metrics["final_stage"] == "fused"
    assert metrics["stages"]["rerank"]["input_tokens_per_query"] > 0  # the cost goes with the LLM's own order
    assert metrics["pipeline"]["rerank"]["fusion"] == {"method": "interpolate", "weight": 0.5, "k": 60}
    assert (tmp_path / "fused" / "run.fused.trec").is_file()

    config.write_text(f'[rerank]\nmodel = "{tiny_llm}"\nadapter = "nowhere"\n')
    code, out, err = cli("eval", "--dataset", tiny, "--first-stage-run", run, "--pipeline", config, "--out", tmp_path / "ev2")
    assert code == 2 and "not a siftrank artifact" in err


def test_every_command_runs_every_stage_of_its_config(tiny: Path, tiny_llm: Path, tmp_path: Path, cli) -> None:
    """search --pipeline and eval --first-stage-run run the filter and the ranker the config names."""
    assert cli("calibrate", "--dataset", tiny, "--split", "test", "--k", "12", "--out", tmp_path / "cal")[0] == 0
    assert cli("index", "build", "--corpus", tiny, "--out", tmp_path / "idx")[0] == 0
    config = tmp_path / "full.toml"
    config.write_text(f'[filter]\ncalibrator = "cal"\nthreshold = 0.0\n[rerank]\nmodel = "{tiny_llm}"\ndepth = 3\n'
                      'mode = "first-token"\n')
    code, out, err = cli("search", "why do volcanoes erupt", "--index", tmp_path / "idx", "--pipeline", config, "-k", "4", "--json")
    assert code == 0, err
    hits = [json.loads(line) for line in out.splitlines()]
    assert len(hits) == 4 and all(h["relevance"] is not None for h in hits)  # the filter ran
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True) and all(s <= 0 for s in scores[:3])  # log-probabilities of the top 3
    assert scores[3] < scores[2]  # the tail stays below the ranked block
    run = tmp_path / "given.trec"
    run.write_text("".join(f"q{q} Q0 d{d} {d} {20 - d}.0 x\n" for q in (1, 2, 3) for d in range(1, 13)))
    code, out, err = cli("eval", "--dataset", tiny, "--first-stage-run", run, "--pipeline", config, "--out", tmp_path / "ev")
    assert code == 0, err
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert list(metrics["stages"]) == ["run", "filter", "rerank"] and metrics["final_stage"] == "rerank"
    assert "PR-AUC" in metrics["stages"]["filter"]  # the filter scored the run's candidates (cosines computed)
    code, _, err = cli("eval", "--dataset", tiny, "--first-stage", "splade", "--out", tmp_path / "ev2")
    assert code == 2 and "kind must be one of dense, bm25, run, hybrid" in err


def test_batch_search_writes_a_run_that_scores_like_eval(tiny: Path, tmp_path: Path, cli) -> None:
    from tests.conftest import QUERIES

    topics = tmp_path / "topics.tsv"
    topics.write_text("".join(f"{q}\t{text}\n" for q, text in QUERIES.items()))
    code, out, err = cli("search", "--topics", topics, "--dataset", tiny, "--out", tmp_path / "run.trec", "-k", "5")
    assert code == 0, err
    lines = (tmp_path / "run.trec").read_text().splitlines()
    assert len(lines) == 5 * len(QUERIES) and {line.split()[0] for line in lines} == set(QUERIES)
    code, _, err = cli("eval", "--run", tmp_path / "run.trec", "--qrels", tiny / "qrels" / "test.tsv", "--out", tmp_path / "s")
    assert code == 0, err
    code, _, err = cli("eval", "--dataset", tiny, "--out", tmp_path / "e")
    assert code == 0, err
    scored = json.loads((tmp_path / "s" / "metrics.json").read_text())["runs"]["run.trec"]["nDCG@10"]
    assert scored == pytest.approx(json.loads((tmp_path / "e" / "metrics.json").read_text())["stages"]["dense"]["nDCG@10"])
    for args, message in [(["why", "--topics", topics, "--out", tmp_path / "r"], "give a query, or --topics"),
                          (["--topics", topics], "--topics and --out go together")]:
        code, _, err = cli("search", *args, "--dataset", tiny)
        assert code == 2 and message in err, err


def test_index_update_adds_replaces_and_deletes_without_a_rebuild(tiny: Path, tmp_path: Path, cli) -> None:
    assert cli("index", "build", "--corpus", tiny, "--out", tmp_path / "idx", "--kind", "hnsw")[0] == 0
    (tmp_path / "new.jsonl").write_text(json.dumps({"_id": "n1", "text": "Penguins live in Antarctica.", "year": 2020}) + "\n"
                                        + json.dumps({"_id": "d1", "text": "Glaciers carve valleys into mountains."}) + "\n")
    (tmp_path / "gone.txt").write_text("d3\n")
    code, out, err = cli("index", "update", "--index", tmp_path / "idx", "--corpus", tmp_path / "new.jsonl",
                         "--delete", tmp_path / "gone.txt")
    assert code == 0, err
    assert "1 added, 1 replaced, 1 deleted; 12 passages" in out
    code, out, _ = cli("search", "penguins antarctica", "--index", tmp_path / "idx", "-k", "12", "--json")
    hits = [json.loads(line) for line in out.splitlines()]
    assert hits[0]["id"] == "n1" and hits[0]["metadata"] == {"year": 2020} and "d3" not in {h["id"] for h in hits}
    code, out, _ = cli("search", "glaciers valleys", "--index", tmp_path / "idx", "-k", "1", "--json")
    assert json.loads(out)["id"] == "d1" and "Glaciers" in json.loads(out)["text"]
    assert json.loads((tmp_path / "idx" / "manifest.json").read_text())["parameters"]["index_kind"] == "hnsw"
    (tmp_path / "bad.txt").write_text("nope\n")
    code, _, err = cli("index", "update", "--index", tmp_path / "idx", "--delete", tmp_path / "bad.txt")
    assert code == 2 and "1 ids are not in the index (first: nope)" in err


def test_version(cli) -> None:
    code, out, _ = cli("--version")
    assert code == 0 and out.startswith("siftrank ")


def test_flags_follow_one_convention() -> None:
    """The same flag for the same thing in every command (docs/cli.md)."""
    from serving.cli.reference import flags

    expected = {"--out": "-o", "--dataset": "-d", "--pipeline": "-p", "--k": "-k", "--index": "-i", "--verbose": "-v"}
    seen = set()
    for command, options in flags().items():
        for option in options:
            names = option.split()
            for long, short in expected.items():
                if long in names:
                    seen.add(long)
                    assert short in names, f"{command}: {long} without {short}"
            assert not {"--output", "--hits", "--domain", "--log"} & set(names), f"{command}: old spelling {option}"
    assert seen == set(expected)


def test_cli_reference_in_the_docs_is_current() -> None:
    from serving.cli.reference import markdown

    docs = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    assert markdown() in docs, "docs/cli.md is stale: regenerate its last table with `python -m serving.cli.reference`"


def test_help_is_plain_and_names_no_checkout_path(cli) -> None:
    checkout = str(Path(__file__).resolve().parents[2].parent)
    for command in (["eval"], ["search"], ["serve"], ["build"], ["index", "build"], ["prune"], ["replay"]):
        code, out, _ = cli(*command, "--help")
        assert code == 0 and checkout not in out, command
    _, out, _ = cli("eval", "--help")
    assert "[first_stage]" in out and "$SIFTRANK_DATA/msmarco-dl19" in out
    _, out, _ = cli("index", "build", "--help")
    assert "timed on this machine" in " ".join(out.split())


def test_data_folder_comes_from_the_environment(tiny: Path, tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """$SIFTRANK_DATA is the one default: for --dataset, data:NAME in experiment and pipeline configs, and build."""
    from serving.experiment import ExperimentConfig

    monkeypatch.setenv("SIFTRANK_DATA", str(tmp_path / "nowhere"))
    code, _, err = cli("replay", "--url", "http://127.0.0.1:9")
    assert code == 2 and str(tmp_path / "nowhere" / "msmarco-dl19") in err
    monkeypatch.setenv("SIFTRANK_DATA", str(tiny.parent))
    experiment = tmp_path / "exp.toml"
    experiment.write_text(f'[service]\ndata = "data:{tiny.name}"\n[variants.a]\n[experiment]\nprimary = "a"\n')
    assert ExperimentConfig.load(experiment).service.data == tiny
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(f'[first_stage]\nkind = "run"\npath = "data:{tiny.name}/given.trec"\n')
    from retrieval.config import PipelineConfig

    assert PipelineConfig.load(pipeline).first_stage.params.path == tiny / "given.trec"  # type: ignore[attr-defined]
    code, _, err = cli("calibrate", "--out", tmp_path / "cal")
    assert code == 2 and "--dataset" in err  # the training commands take no default collection
