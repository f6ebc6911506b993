from __future__ import annotations

import json
import random
import tomllib
from pathlib import Path

import pytest

from eval.clickmodel import ClickModel
from retrieval.data import Dataset
from retrieval.errors import SiftrankError
from serving.eventlog import EventLog
from training.clicks import POSTERIOR_FLOOR, ClickLabels, estimate_eta, log_query_id, relevance_posterior

CORPUS = {f"d{i}" for i in range(20)}


def write_log(path: Path, searches: list[dict]) -> Path:
    """An event log as the service writes it: each search's query row, shown list and clicks."""
    log = EventLog(path)
    for n, s in enumerate(searches):
        qid = s.get("id", f"s{n}")
        log.write_now("queries", [(qid, 0.0, "exp", "u", None, s["query"], s.get("mode", "primary"), "v", 10, 1.0,
                                   json.dumps(s.get("flags", [])), None)])
        log.write_now("results", [(qid, "v", "shown", r, d, 0.0, 0.0, None, s.get("teams", [None] * 99)[r - 1])
                                  for r, d in enumerate(s["shown"], 1)])
        log.write_now("feedback", [(0.0, s.get("click_id", qid), "u", d, s["shown"].index(d) + 1 if d in s["shown"] else 1,
                                    "click") for d in s.get("clicks", [])])
    log.close()
    return path


def test_clicks_become_weighted_positives_and_skips_above_them_negatives(tmp_path: Path) -> None:
    shown = ["d1", "d2", "d3", "d4"]
    log = write_log(tmp_path / "events.db", [
        {"query": "Heart  disease", "shown": shown, "clicks": ["d3"]},
        {"query": "heart disease", "shown": shown, "clicks": []},  # the same query, no click: it only counts
        {"query": "unseen", "shown": shown},
    ])
    labels = ClickLabels.from_log(log, CORPUS, eta=1.0, clip=10.0)
    q = log_query_id("heart disease")
    assert list(labels.queries) == [q]
    # one click at rank 3 over two searches of the query: (1 / theta(3)) / 2 = 3 / 2
    assert labels.positives[q] == {"d3": pytest.approx(1.5)}
    assert labels.negatives[q] == {"d1", "d2"}  # d4 was below the click: not a negative
    assert labels.counts["searches"] == 3 and labels.counts["clicks"] == 1

    folder = labels.write(tmp_path / "labels", write_corpus(tmp_path))
    data = Dataset.load(folder, split="train")
    assert data.qrels == {q: {"d3": 1, "d1": 0, "d2": 0}}
    assert data.weights == {q: {"d3": pytest.approx(1.5)}}


def write_corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"_id": d, "title": "", "text": f"text {d}"}) + "\n" for d in sorted(CORPUS)))
    return path


def test_interleaved_lists_use_the_rank_they_were_shown_at_and_propensity_is_clipped(tmp_path: Path) -> None:
    log = write_log(tmp_path / "events.db", [
        {"query": "q", "shown": ["d5", "d6", "d7"], "mode": "interleave", "teams": ["a", "b", "a"], "clicks": ["d7"]}])
    labels = ClickLabels.from_log(log, CORPUS, eta=2.0, clip=5.0)
    assert labels.positives[log_query_id("q")] == {"d7": pytest.approx(5.0)}  # 3^2 = 9, clipped at 5


def test_eta_is_estimated_from_swaps_close_to_the_simulators() -> None:
    rng = random.Random(0)
    for true_eta in (1.0, 2.0):
        model = ClickModel(eta=true_eta, eps_plus=1.0, eps_minus=0.1)
        searches = {}
        for n in range(30_000):
            docs = [f"d{i}" for i in range(10)]
            relevant = {d: 1 for d in docs if rng.random() < 0.3} | ({"d0": 1} if rng.random() < 0.6 else {})
            flags = []
            if n % 5 == 0:  # a fifth of the searches explore: top hit swapped with rank k
                k = rng.randint(2, 10)
                docs[0], docs[k - 1] = docs[k - 1], docs[0]
                flags = [f"swap:{k}"]
            clicked = {docs[r - 1] for r in model.clicks(docs, relevant, 1, rng)}
            searches[str(n)] = {"query": "x", "flags": flags, "mode": "primary", "shown": docs, "clicked": clicked}
        estimate = estimate_eta(searches)
        assert estimate["swapped_searches"] == 6000
        assert estimate["eta"] == pytest.approx(true_eta, abs=0.2)
        low, high = estimate["eta_ci"]
        assert low <= true_eta <= high and low <= estimate["eta"] <= high and high - low < 0.6


def test_the_posterior_rule_drops_noisy_clicks_and_recovers_the_click_rates() -> None:
    """Five simulated users per query (default click model: eps+ 1.0, eps- 0.1): every clicked hit as a positive
    is mostly noise; the EM-fitted click model finds the simulator's click rates and keeps mostly relevant hits."""
    rng = random.Random(1)
    model = ClickModel(eta=1.0, eps_plus=1.0, eps_minus=0.1)
    by_query, relevant = {}, {}
    for q in range(300):
        docs = [f"q{q}-d{i}" for i in range(10)]
        relevant[q] = {d: 1 for i, d in enumerate(docs) if rng.random() < 0.5 / (i + 1)}
        by_query[str(q)] = [{"shown": docs, "clicked": {docs[r - 1] for r in model.clicks(docs, relevant[q], 1, rng)}}
                            for _ in range(5)]
    posterior, fit = relevance_posterior(by_query, eta=1.0)
    assert fit["eps_plus"] == pytest.approx(1.0, abs=0.1) and fit["eps_minus"] == pytest.approx(0.1, abs=0.05)
    clicked = [(q, d) for q, group in by_query.items() for d in set().union(*(s["clicked"] for s in group))]
    kept = [(q, d) for q, d in clicked if posterior[q][d] >= 0.5]
    precision = {name: sum(d in relevant[int(q)] for q, d in pairs) / len(pairs) for name, pairs in (("all", clicked), ("kept", kept))}
    assert precision["kept"] > precision["all"] + 0.2 and precision["kept"] > 0.8
    # most relevant hits that were clicked at all stay positives (a single click deep down stays ambiguous)
    assert sum(1 for q, d in kept if d in relevant[int(q)]) > 2 / 3 * sum(1 for q, d in clicked if d in relevant[int(q)])
    # the soft rule keeps more of the relevant clicked hits, the noise among them at low weight
    soft = [(q, d) for q, d in clicked if posterior[q][d] >= POSTERIOR_FLOOR["soft"]]
    assert sum(d in relevant[int(q)] for q, d in soft) > sum(d in relevant[int(q)] for q, d in kept)
    assert sum(posterior[q][d] for q, d in soft if d in relevant[int(q)]) / sum(posterior[q][d] for q, d in soft) > precision["all"] + 0.2


def test_the_posterior_rule_in_labels_from_a_log(tmp_path: Path) -> None:
    shown = ["d1", "d2", "d3"]
    # d1 at rank 1 clicked once in eight searches: noise; d2 clicked in every search: relevant
    searches = [{"query": "q", "shown": shown, "clicks": ["d2"] + (["d1"] if n == 0 else [])} for n in range(8)]
    log = write_log(tmp_path / "events.db", searches)
    labels = ClickLabels.from_log(log, CORPUS, eta=1.0, rule="posterior")
    q = log_query_id("q")
    assert set(labels.positives[q]) == {"d2"} and 0.5 <= labels.positives[q]["d2"] <= 1.0
    assert labels.propensity["rule"] == "posterior" and "eps_plus" in labels.propensity
    assert set(ClickLabels.from_log(log, CORPUS, eta=1.0).positives[q]) == {"d1", "d2"}  # ipw: every click
    assert ClickLabels.from_log(log, CORPUS, eta=1.0, rule="soft").positives[q] == labels.positives[q]  # d1: near-certain noise


def test_test_queries_never_enter_the_labels(tmp_path: Path) -> None:
    log = write_log(tmp_path / "events.db", [{"query": "train me", "shown": ["d1"], "clicks": ["d1"]},
                                             {"query": "Held Out", "shown": ["d2"], "clicks": ["d2"]}])
    labels = ClickLabels.from_log(log, CORPUS, eta=1.0, exclude={"held out"})
    assert set(labels.queries.values()) == {"train me"} and labels.counts["excluded_searches"] == 1


@pytest.mark.parametrize(("searches", "message"), [
    ([], "holds no searches"),
    ([{"query": "q", "shown": ["d1", "d2"]}], "no clicks"),
    ([{"query": "q", "shown": ["d1"], "clicks": ["d1"], "click_id": "nobody"}], "clicks on unknown query ids"),
    ([{"query": "q", "shown": ["x1", "x2"], "clicks": ["x1"]}], "log of another corpus"),
    ([{"query": "q", "shown": ["d1", "d2"], "clicks": ["d1"]}], "position bias cannot be estimated"),
])
def test_bad_logs_fail_with_one_clear_error(tmp_path: Path, searches: list[dict], message: str) -> None:
    log = write_log(tmp_path / "events.db", searches)
    with pytest.raises(SiftrankError, match=message):
        ClickLabels.from_log(log, CORPUS)


def test_a_file_that_is_not_an_event_log_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.db").write_text("hello")
    with pytest.raises(SiftrankError, match="not a readable event log"):
        ClickLabels.from_log(tmp_path / "notes.db", CORPUS)
    with pytest.raises(SiftrankError, match="event log not found"):
        ClickLabels.from_log(tmp_path / "missing.db", CORPUS)


def test_a_recipe_with_only_a_corpus_and_the_services_log_builds_from_simulated_clicks(tmp_path: Path, cli) -> None:
    """The loop in miniature: serve zero-shot with swaps, simulated users click through real requests, build."""
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.experiment import ExperimentConfig
    from serving.replay import Replayer
    from serving.variants import VariantPool
    from tests.conftest import write_dataset
    from tests.training.test_build import write_recipe

    data = Dataset.load(write_dataset(tmp_path / "judged"), split="test")  # its qrels drive the simulated users only
    recipe = write_recipe(tmp_path, prune={"enabled": False}, calibrate={"enabled": False})
    (tmp_path / "tiny" / "qrels" / "train.tsv").unlink()  # the domain has a corpus, no judgments
    config = ExperimentConfig.single(tmp_path / "tiny", event_log=tmp_path / "events.db")
    config.experiment.explore_swaps = 0.3
    with TestClient(create_app(config, pool=VariantPool.build(config))) as client:
        counts = Replayer(client, data.queries, data.qrels, k=5, click_model=ClickModel(), seed=0).run(users=5, progress=False)
    assert counts["searches"] == 5 * len(data.queries) and counts["clicks"] > 0
    text = recipe.read_text().replace('[data]\n', f'[data]\nevents = "{tmp_path / "events.db"}"\neta = 1.0\n')
    recipe.write_text(text)
    code, stdout, err = cli("build", recipe, "--out", tmp_path / "out")
    assert code == 0, err
    assert "click labels: " in stdout and "position bias eta 1.00" in stdout
    labels = Dataset.load(tmp_path / "out" / "clicks", split="train")
    assert set(labels.queries.values()) <= set(data.queries.values()) and labels.weights and labels.condensed
    report = json.loads((tmp_path / "out" / "finetune" / "manifest.json").read_text())
    assert report["data"]["training"]["train_queries"] >= 1
    # auto trains a filter on the clicks but does not serve it: clicks cannot measure recall below what users saw
    code, _, err = cli("build", recipe, "--out", tmp_path / "out", "--set", 'calibrate.enabled="auto"',
                       "--set", "calibrate.min_relevant=1")
    assert code == 0, err
    stages = {s["name"]: s for s in json.loads((tmp_path / "out" / "build.json").read_text())["stages"]}
    assert stages["calibrate"]["decision"].startswith("filter: off (trained, not served), the labels come from clicks")
    assert json.loads((tmp_path / "out" / "calibrate" / "calibrator" / "manifest.json").read_text())["kind"] == "calibrator"
    assert "filter" not in tomllib.loads((tmp_path / "out" / "pipeline.toml").read_text())
    code, _, err = cli("build", recipe, "--out", tmp_path / "out", "--set", "calibrate.enabled=true", "--set", "calibrate.min_relevant=1")
    assert code == 0, err
    assert "filter" in tomllib.loads((tmp_path / "out" / "pipeline.toml").read_text())  # asked for: served
    # a held-out query (its qrels named in the recipe) is dropped from the log: never trained on
    (tmp_path / "held.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    code, stdout, err = cli("build", recipe, "--out", tmp_path / "held", "--set", f'data.held_out="{tmp_path / "held.tsv"}"')
    assert code == 0, err
    assert "5 searches of held-out queries dropped" in stdout
    assert data.queries["q1"] not in Dataset.load(tmp_path / "held" / "clicks", split="train").queries.values()
    # without eta and with too few swaps for an estimate, or with no log at all: one error line, nothing built
    recipe.write_text(text.replace("eta = 1.0\n", "").replace(str(tmp_path / "events.db"), str(tmp_path / "none.db")))
    code, _, err = cli("build", recipe, "--out", tmp_path / "other")
    assert code == 2 and err.startswith("error: ") and "event log not found" in err and err.count("\n") == 1, err


def test_checking_a_click_recipe_writes_nothing_and_malformed_qrels_are_an_error(tmp_path: Path) -> None:
    """``check`` reads and validates the log in memory (the labels folder is written under the build's lock);
    with ``judgments = true`` a qrels file that exists but is malformed fails instead of being skipped."""
    from tests.conftest import write_dataset
    from tests.training.test_build import write_recipe
    from training.build import PipelineBuilder
    from training.recipe import Recipe

    data = Dataset.load(write_dataset(tmp_path / "judged"), split="test")
    log = write_log(tmp_path / "events.db", [{"query": data.queries[q], "shown": sorted(data.qrels[q])[:1] + ["d12"],
                                              "clicks": sorted(data.qrels[q])[:1]} for q in data.queries])
    path = write_recipe(tmp_path, prune={"enabled": False}, calibrate={"enabled": False})
    path.write_text(path.read_text().replace("[data]\n", f'[data]\nevents = "{log}"\neta = 1.0\n'))
    builder = PipelineBuilder(Recipe.load(path, tmp_path), tmp_path / "out", echo=lambda _: None, progress=False)
    ctx = builder.check()
    assert not (tmp_path / "out").exists()
    assert set(ctx.judgments.queries.values()) >= set(data.queries.values())  # the clicked texts (and the judged ones)
    assert ctx.judgments.condensed and not data.condensed  # choices on click labels score condensed rankings
    assert ctx.judgments.weights and all(w > 0 for d in ctx.judgments.weights.values() for w in d.values())
    (tmp_path / "tiny" / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1 d1\n")
    with pytest.raises(SiftrankError, match="train.tsv:2"):
        PipelineBuilder(Recipe.load(path, tmp_path), tmp_path / "out", echo=lambda _: None, progress=False).check()
